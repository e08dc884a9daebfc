"""Two worker processes share one Optuna study, in a real PostgreSQL and in a SQLite file
(nnzip.core.studies)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from nnzip.core.studies import claim_trial, enqueue_budget, open_storage, storage_url, work
from nnzip.errors import NnzipError

optuna = pytest.importorskip("optuna", reason="the search tests need optuna: pip install "
                                              "-e '.[dev]'")

REPO = Path(__file__).resolve().parents[2]

# A worker as a user's machine would run it: its own process, its own connection. It waits for
# the other worker to be ready (so neither finishes the study alone before the other started
# Python), then works through the queue; the objective logs which worker ran which trial.
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import optuna
    from nnzip.core.studies import open_storage, work

    url, study_name, log_file, worker, ready, pause = sys.argv[1:7]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    Path(ready, worker).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(ready).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        trial.set_user_attr("worker", worker)
        with open(log_file, "a") as log:
            log.write(f"{trial.number} {worker}\\n")
        time.sleep(float(pause))
        return (x - 2) ** 2

    work(study, storage, objective)
""")


def _start_worker(script: Path, url: str, study: str, log: Path, worker: str,
                  ready: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), url, study, str(log), worker,
                             str(ready), str(pause)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_worker_processes_finish_one_study_with_no_trial_lost_or_run_twice(
        backend, request, tmp_path):
    # SQLite: 120 instant trials, so the two workers race for every claim (without BEGIN
    # IMMEDIATE both claimed one trial in 2 runs of 2; see nnzip.core.studies).
    if backend == "postgresql":
        url, n_trials, pause = request.getfixturevalue("postgres_url"), 24, 0.03
    else:
        url, n_trials, pause = f"sqlite:///{tmp_path / 'study.db'}", 120, 0.0
    storage = open_storage(url)
    study = optuna.create_study(study_name="two-workers", storage=storage,
                                sampler=optuna.samplers.TPESampler(seed=0))
    assert enqueue_budget(study, n_trials) == n_trials
    assert enqueue_budget(study, n_trials) == 0, "planning the same budget again adds nothing"

    script, log, ready = tmp_path / "worker.py", tmp_path / "trials.log", tmp_path / "ready"
    script.write_text(WORKER)
    ready.mkdir()
    workers = [_start_worker(script, url, study.study_name, log, name, ready, pause)
               for name in ("a", "b")]
    outputs = [worker.communicate(timeout=180)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    trials = optuna.load_study(study_name="two-workers", storage=storage).get_trials()
    assert len(trials) == n_trials
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = [line.split() for line in log.read_text().splitlines()]
    assert Counter(int(number) for number, _ in runs) == Counter(range(n_trials)), \
        "every trial ran exactly once"
    by_worker = Counter(worker for _, worker in runs)
    assert set(by_worker) == {"a", "b"} and min(by_worker.values()) >= 1, by_worker
    ran_by = {int(number): worker for number, worker in runs}
    assert all(t.user_attrs["worker"] == ran_by[t.number] for t in trials)
    assert min(t.value for t in trials) < 1.0, "the sampler's trials are told their values"


def test_a_failed_trial_is_replaced_and_a_finished_budget_runs_nothing(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="resume", storage=storage)
    enqueue_budget(study, 3)
    calls = []

    def objective(trial):
        calls.append(trial.number)
        if trial.number == 1:
            raise ValueError("a broken recipe")
        return float(trial.number)

    assert work(study, storage, objective, catch=(ValueError,)) == [0, 1, 2]
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert enqueue_budget(study, 3) == 1, "the failed trial is replaced"
    assert work(study, storage, objective) == [3]
    assert enqueue_budget(study, 3) == 0
    assert work(study, storage, objective) == [] and calls == [0, 1, 2, 3]


def test_an_unexpected_error_fails_its_trial_and_stops_the_worker(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="crash", storage=storage)
    enqueue_budget(study, 2)

    def objective(trial):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        work(study, storage, objective)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"]


def test_storage_urls_are_normalised_and_bad_ones_say_what_to_pass():
    assert storage_url("postgresql://me@db.lan/search") == "postgresql+psycopg2://me@db.lan/search"
    assert storage_url("postgres://me@db.lan/s") == "postgresql+psycopg2://me@db.lan/s"
    assert storage_url("sqlite:///a.db") == "sqlite:///a.db"
    with pytest.raises(NnzipError, match="not a database URL.*postgresql://"):
        storage_url("search.db")
    with pytest.raises(NnzipError, match="'redis'.*postgresql://"):
        storage_url("redis://host/0")


def test_an_unreachable_postgres_server_is_a_clear_error(tmp_path):
    pytest.importorskip("psycopg2")
    with pytest.raises(NnzipError, match="cannot open the search storage.*server runs"):
        open_storage(f"postgresql://nobody@/nodb?host={tmp_path}&port=1")


def test_a_dead_workers_trial_is_failed_by_its_heartbeat_and_run_again(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_seconds=1)
    study = optuna.create_study(study_name="dead-worker", storage=storage)
    enqueue_budget(study, 3)
    orphan = claim_trial(study, storage)  # a worker claims trial 0, then is killed: no tell
    orphan.suggest_float("x", 0, 1)
    storage.record_heartbeat(orphan._trial_id)

    def objective(trial):
        return trial.suggest_float("x", 0, 1)

    # Runs 1 and 2, waits for trial 0's heartbeat to go stale (2 s), runs its retry: trial 3.
    assert work(study, storage, objective) == [1, 2, 3]
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[3].system_attrs["failed_trial"] == 0
    assert trials[3].params == trials[0].params, "the retry runs the dead trial's parameters"
    assert enqueue_budget(study, 3) == 0, "the retry kept the budget whole"
