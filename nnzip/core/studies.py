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

Who queues the budget: every process that joins the study (every worker machine runs the same
command) calls :func:`enqueue_budget`, which counts and queues under a lock held in the database
itself (:func:`budget_lock`: a PostgreSQL advisory lock, MySQL's ``GET_LOCK``, a file lock beside
a SQLite file), so concurrent callers queue the budget once between them and a late or resumed
caller adds only what is missing. No process is special: no coordinator to start first or lose.

SQLite: Python's driver runs a ``SELECT`` outside the transaction and ``BEGIN``s only before the
``UPDATE``, and SQLite ignores ``FOR UPDATE``, so two processes can both read a trial as WAITING
and both claim it (measured: 2 processes on one file, 150 queued trials, a trial claimed twice in
2 runs of 2). :func:`open_storage` therefore begins every SQLite transaction with ``BEGIN
IMMEDIATE`` (SQLAlchemy's documented recipe for pysqlite), which takes the file's write lock
before the read: 150 of 150 claimed once, in 2 runs of 2. Optuna's JournalStorage claims
correctly too, but has no heartbeat, so a killed worker's trial would stay RUNNING for ever.

A worker that dies mid-trial (a killed process, a lost machine) would leave its trial RUNNING
for ever. With ``open_storage(url, heartbeat_seconds=…)`` every worker records a heartbeat while
its trial runs (Optuna's heartbeat); a trial whose heartbeat stops is failed by the next worker
that looks (``optuna.storages.fail_stale_trials``: exactly one worker wins that change) and
queued again with the same parameters (``RetryHeartbeatStaleTrialCallback``), and workers wait
for the others' running trials before they exit, so the study still ends with its whole budget.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Wait for another process's write lock (2 min) rather than fail at once; the driver
        # leaves transactions to us (isolation_level None) so that they can begin IMMEDIATE.
        engine_kwargs["connect_args"] = {"timeout": 120, "isolation_level": None}
    try:
        with _quiet_experimental():
            heartbeat = {} if heartbeat_seconds is None else {
                "heartbeat_interval": heartbeat_seconds, "grace_period": 2 * heartbeat_seconds,
                "heartbeat_stale_trial_callback":
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)}
            # Optuna creates its tables on first use; workers starting together on a new
            # database would race (PostgreSQL: "duplicate key … pg_type_typname_nsp_index").
            with _schema_lock(url):
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                     **heartbeat)
    except Exception as exc:  # sqlalchemy's OperationalError names the server and the cause
        cause = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise NnzipError(f"cannot open the search storage {url!r} ({cause}): check that the "
                         "database server runs, the database exists and the user may use "
                         "it") from None
    if url.startswith("sqlite"):
        import sqlalchemy

        # Every transaction takes the write lock before it reads: see the module docstring.
        sqlalchemy.event.listen(storage.engine, "begin",
                                lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
        storage.engine.dispose()  # no pooled connection opened before the listener is kept
    return storage


@contextlib.contextmanager
def _schema_lock(url: str):
    """:func:`database_lock` for creating Optuna's tables, on a connection of its own."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with database_lock(engine, "nnzip-optuna-schema"):
            yield
    finally:
        engine.dispose()


def _rdb_backend(study: optuna.Study):
    """The RDB storage under ``study`` (Optuna wraps it in a private cache), or None."""
    optuna = _optuna()
    storage = study._storage  # no public accessor: the study is all callers hold
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


@contextlib.contextmanager
def database_lock(engine, name: str):
    """Hold the lock ``name`` in the database behind ``engine`` (a SQLAlchemy engine) for the
    block, so one process at a time, on any machine, runs it: an advisory lock in PostgreSQL,
    ``GET_LOCK`` in MySQL (both on a connection of their own, released when it closes, so a
    killed process never keeps one), ``flock`` on ``FILE.lock`` beside a SQLite file (one
    machine by nature). An in-memory database lives in one process and needs none."""
    import sqlalchemy

    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    dialect = engine.dialect.name
    if dialect in ("postgresql", "mysql"):
        take, free = (("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
                      if dialect == "postgresql" else
                      ("SELECT GET_LOCK(CAST(:key AS CHAR), -1)",
                       "SELECT RELEASE_LOCK(CAST(:key AS CHAR))"))
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(take), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(free), {"key": key})
                connection.commit()
    elif dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        import fcntl

        with open(f"{engine.url.database}.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    else:
        yield


def budget_lock(study: optuna.Study):
    """:func:`database_lock` named after ``study``, in the database that holds it."""
    backend = _rdb_backend(study)
    if backend is None:
        return contextlib.nullcontext()
    return database_lock(backend.engine, f"nnzip-budget:{study.study_name}")


def enqueue_budget(study: optuna.Study, n_trials: int) -> int:
    """Queue waiting trials until ``study`` holds ``n_trials`` that are finished (complete or
    pruned), running or waiting; failed trials are not counted, so each is replaced. Returns
    how many were queued (0 when the budget is already planned: calling it again, from a
    resumed search or a second machine, adds nothing). Every process may call it, at the same
    time too: it counts and queues under :func:`budget_lock`.
    """
    optuna = _optuna()
    if n_trials < 0:
        raise NnzipError(f"the trial budget is {n_trials}: pass a number of trials >= 0")
    states = tuple(optuna.trial.TrialState[name] for name in _SPENT_OR_PLANNED)
    with budget_lock(study):
        planned = len(study.get_trials(deepcopy=False, states=states))
        missing = max(0, n_trials - planned)
        for _ in range(missing):
            # {} fixes no parameter: the sampler still chooses every one when the trial is
            # claimed (Trial._suggest samples whatever the trial's "fixed_params" lacks).
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
         catch: tuple[type[Exception], ...] = (),
         on_trial: Callable[[int], None] | None = None) -> list[int]:
    """Claim and run waiting trials of ``study`` until none is left; return their numbers.

    A trial whose objective raises ``optuna.TrialPruned`` is told PRUNED; one that raises an
    exception in ``catch`` is told FAIL and the worker goes on; any other exception (and
    Ctrl-C) marks the trial FAIL and is raised, so a finished trial is never lost and a broken
    one is never left RUNNING. Every worker of a study calls this with the same ``objective``.
    ``on_trial(number)`` is called after each trial is told (e.g. to show progress).
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
            _tell_unless_failed_as_stale(study, trial, values)
        finally:
            stop_heartbeat()
        done.append(trial.number)
        if on_trial is not None:
            on_trial(trial.number)
    return done


def _tell_unless_failed_as_stale(study: optuna.Study, trial: optuna.Trial, values) -> None:
    """Tell ``values``, unless another worker already failed the trial because its heartbeat
    stalled past the grace period (and queued its retry, which runs it: the budget stays
    exact). Optuna says so by an error or by skipping, depending on its cache."""
    optuna = _optuna()
    try:
        told = study.tell(trial, values, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        told = None
    if told is None or told.state != optuna.trial.TrialState.COMPLETE:
        log.warning("trial %d ended FAIL: another worker failed it as stale while it ran "
                    "(its retry runs it again), or its values were not numbers", trial.number)


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
