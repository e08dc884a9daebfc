"""One Optuna study worked through by many processes, on one machine or many.

Every worker opens the same storage (a SQLite file on one machine, a PostgreSQL database when the
workers run on several machines: Optuna's RDB storage), claims a trial, runs it and reports it,
until the study's budget is spent. The budget is *exact*: :func:`enqueue_budget` puts the study's
remaining trials in Optuna's queue as waiting trials, and :func:`work` only ever claims a waiting
trial, through the storage's atomic WAITING → RUNNING transition (a row lock in PostgreSQL). So
N trials are run once each, however many workers share them and however they are timed.

Why not ``Study.optimize(n_trials=...)``: its ``n_trials`` counts per process (two workers run
2N), and ``MaxTrialsCallback`` stops a worker only *after* a trial, so workers that start together
overshoot by up to one trial each; ``Study.ask`` creates a fresh trial whenever the queue is
empty. The claim below is the one ``Study.ask`` makes first (``Study._pop_waiting_trial_id``),
written with the storage's public API and without the fall-back of creating a trial.

A worker that dies mid-trial (a killed process, a lost machine) would leave its trial RUNNING
for ever. With ``open_storage(url, heartbeat_seconds=…)`` every worker records a heartbeat while
its trial runs (Optuna's heartbeat); a trial whose heartbeat stops is failed by the next worker
that looks (``optuna.storages.fail_stale_trials``: exactly one worker wins that change) and
queued again with the same parameters (``RetryHeartbeatStaleTrialCallback``), and workers wait
for the others' running trials before they exit, so the study still ends with its whole budget.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from nnzip.core.interrupt import check_interrupt
from nnzip.errors import NnzipError

if TYPE_CHECKING:  # optuna is an optional dependency: imported where it is used
    import optuna

log = logging.getLogger(__name__)

#: The trial states that use up the budget; a FAIL is replaced by a new waiting trial.
_SPENT_OR_PLANNED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise NnzipError("searching needs Optuna: pip install 'optuna>=4' (or nnzip's dev "
                         "extra)") from None
    return optuna


@contextlib.contextmanager
def _quiet_experimental():
    """Optuna marks its heartbeat API experimental (since 2.8) and warns on every use; we pin
    ``optuna>=4.9`` for its current names and test the behaviour we rely on here."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_url(url: str) -> str:
    """``url`` as SQLAlchemy wants it: ``postgresql://`` (and ``postgres://``, as Heroku-style
    tools write it) become ``postgresql+psycopg2://``; ``sqlite:///…`` and URLs naming their
    driver are kept."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise NnzipError(f"storage {url!r} is not a database URL: pass e.g. "
                         "postgresql://user@host/db or sqlite:///search.db")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg2://{rest}"
    if scheme.split("+")[0] not in ("postgresql", "sqlite", "mysql"):
        raise NnzipError(f"storage {url!r} uses {scheme!r}: pass a postgresql://, mysql:// or "
                         "sqlite:/// URL")
    return url


def open_storage(url: str, heartbeat_seconds: int | None = None,
                 max_retry: int = 2) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url`` (see :func:`storage_url`), its tables created if new.

    Connections are checked before use (``pool_pre_ping``): a worker that waited on a long trial
    finds the server's idle connection closed otherwise. With ``heartbeat_seconds``, a trial
    whose worker fell silent for twice that long is failed and retried (at most ``max_retry``
    times: a trial that kills every worker that runs it is not retried for ever).
    """
    optuna = _optuna()
    url = storage_url(url)
    if url.startswith("postgresql+psycopg2"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise NnzipError("a postgresql:// storage needs the psycopg2 driver: pip install "
                             "psycopg2-binary (or nnzip's dev extra)") from None
    try:
        with _quiet_experimental():
            heartbeat = {} if heartbeat_seconds is None else {
                "heartbeat_interval": heartbeat_seconds, "grace_period": 2 * heartbeat_seconds,
                "heartbeat_stale_trial_callback":
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)}
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                              **heartbeat)
    except Exception as exc:  # sqlalchemy's OperationalError names the server and the cause
        cause = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise NnzipError(f"cannot open the search storage {url!r} ({cause}): check that the "
                         "database server runs, the database exists and the user may use "
                         "it") from None


def enqueue_budget(study: optuna.Study, n_trials: int) -> int:
    """Queue waiting trials until ``study`` holds ``n_trials`` that are finished (complete or
    pruned), running or waiting; failed trials are not counted, so each is replaced. Returns
    how many were queued (0 when the budget is already planned: calling it again, from a
    resumed search or a second machine, adds nothing). Run it once, before the workers start.
    """
    optuna = _optuna()
    if n_trials < 0:
        raise NnzipError(f"the trial budget is {n_trials}: pass a number of trials >= 0")
    states = tuple(optuna.trial.TrialState[name] for name in _SPENT_OR_PLANNED)
    planned = len(study.get_trials(deepcopy=False, states=states))
    missing = max(0, n_trials - planned)
    for _ in range(missing):
        # {} fixes no parameter: the sampler still chooses every one when the trial is claimed.
        study.enqueue_trial({}, skip_if_exists=False)
    return missing


def claim_trial(study: optuna.Study, storage: optuna.storages.BaseStorage) -> optuna.Trial | None:
    """A waiting trial of ``study`` now RUNNING for this process, or None when none is left.

    ``set_trial_state_values`` changes WAITING to RUNNING under a row lock and says False (or
    raises ``UpdateFinishedTrialError``) when another worker claimed the trial first.
    """
    optuna = _optuna()
    waiting = optuna.trial.TrialState.WAITING
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(waiting,)):
        try:
            if not storage.set_trial_state_values(trial._trial_id,
                                                  state=optuna.trial.TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        return optuna.Trial(study, trial._trial_id)
    return None


def work(study: optuna.Study, storage: optuna.storages.BaseStorage,
         objective: Callable[[optuna.Trial], float | list[float]], *,
         catch: tuple[type[Exception], ...] = ()) -> list[int]:
    """Claim and run waiting trials of ``study`` until none is left; return their numbers.

    A trial whose objective raises ``optuna.TrialPruned`` is told PRUNED; one that raises an
    exception in ``catch`` is told FAIL and the worker goes on; any other exception (and
    Ctrl-C) marks the trial FAIL and is raised, so a finished trial is never lost and a broken
    one is never left RUNNING. Every worker of a study calls this with the same ``objective``.
    """
    optuna = _optuna()
    done = []
    while (trial := _next_trial(study, storage)) is not None:
        stop_heartbeat = _start_heartbeat(storage, trial._trial_id)
        try:
            check_interrupt()
            values = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except catch as exc:
            log.warning("trial %d failed: %s", trial.number, exc)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            study.tell(trial, values)
        finally:
            stop_heartbeat()
        done.append(trial.number)
    return done


def _heartbeat_seconds(storage: optuna.storages.BaseStorage) -> int | None:
    # Optuna's storages with heartbeats (RDB, gRPC proxy) say so by this method.
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    return get_interval() if get_interval is not None else None


def _next_trial(study: optuna.Study, storage: optuna.storages.BaseStorage) -> optuna.Trial | None:
    """The next waiting trial; with heartbeats, also wait while other workers' trials run (one
    of them may go stale and come back as a waiting retry). Without heartbeats a RUNNING trial
    may belong to a dead worker, so the worker stops as soon as nothing is waiting."""
    optuna = _optuna()
    interval = _heartbeat_seconds(storage)
    while True:
        if interval is not None:
            with _quiet_experimental():
                optuna.storages.fail_stale_trials(study)
        trial = claim_trial(study, storage)
        if trial is not None or interval is None:
            return trial
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return None
        check_interrupt()
        threading.Event().wait(min(interval, 1.0))


def _start_heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> Callable[[], None]:
    """Record ``trial_id``'s heartbeat now and then every interval until the returned function
    is called (a daemon thread: a dying worker's heartbeat dies with it)."""
    interval = _heartbeat_seconds(storage)
    if interval is None:
        return lambda: None
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()

    def stop_beating() -> None:
        stop.set()
        thread.join()

    return stop_beating
