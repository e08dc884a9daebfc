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
"""

from __future__ import annotations

import logging
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


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url`` (see :func:`storage_url`), its tables created if new.

    Connections are checked before use (``pool_pre_ping``): a worker that waited on a long trial
    finds the server's idle connection closed otherwise.
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
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
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
    while (trial := claim_trial(study, storage)) is not None:
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
        done.append(trial.number)
    return done
