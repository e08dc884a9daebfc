"""`nnzip search` workers: the same command on two "machines" (processes) against one real
PostgreSQL study, and the budget queued once however many processes queue it at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from nnzip import save
from nnzip.core.studies import enqueue_budget, open_storage

optuna = pytest.importorskip("optuna", reason="the search tests need optuna: pip install "
                                              "-e '.[dev]'")

REPO = Path(__file__).resolve().parents[2]

def _search_command(model_dir: Path, space: Path, out: Path, url: str,
                    trials: int) -> list[str]:
    return [sys.executable, "-m", "nnzip.cli", "search", "--model", str(model_dir), "--data",
            "digits", "--space", str(space), "--out", str(out), "--storage", url, "--trials",
            str(trials), "--objectives", "accuracy", "bytes", "--work-threads", "1",
            "--no-progress"]


def test_two_search_commands_on_one_postgres_study_run_every_trial_once(
        postgres_url, trained_mlp, tmp_path, tiny_space_text):
    """Two `nnzip search` processes, each as on its own machine (its own --out), the same
    --storage and --trials: together they finish the budget, each trial run by one of them."""
    n_trials = 6
    model_dir = save(trained_mlp, tmp_path / "mlp")
    space = tmp_path / "space.yaml"
    space.write_text(tiny_space_text("tiny-shared"))
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    workers = [subprocess.Popen(_search_command(model_dir, space, out, postgres_url, n_trials),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for out in outs]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    trials = optuna.load_study(study_name="tiny-shared",
                               storage=open_storage(postgres_url)).get_trials()
    assert sorted(t.number for t in trials) == list(range(n_trials)), "none lost, none added"
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               for t in trials), [t.state for t in trials]
    # A trial writes its recipe when it starts (a front point's test.json may be written by
    # either machine: here both see every artifact, as on a shared file system).
    ran = Counter(int(p.parent.name) for out in outs for p in out.glob("trials/*/recipe.yaml"))
    assert ran == Counter(range(n_trials)), "each trial ran on one machine, once"
    by_machine = [len(list(out.glob("trials/*/recipe.yaml"))) for out in outs]
    assert min(by_machine) >= 1, by_machine
    for trial in trials:  # a trial's artifact is in the folder of the machine that ran it
        if trial.state == optuna.trial.TrialState.COMPLETE:
            artifact = Path(trial.user_attrs["artifact"])
            assert artifact.exists() and artifact.parts[-3] == str(trial.number)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials, \
        "the samplers chose the recipes: no two trials alike"
    for output in outputs:
        assert f"{n_trials} finished trials" in output


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_processes_queueing_one_budget_at_once_queue_it_once(backend, postgres_url, tmp_path,
                                                             request):
    """Every worker machine queues the budget when it starts: a lock in the database makes the
    count-then-queue of each one whole (without it, four callers queue up to four budgets)."""
    url = postgres_url if backend == "postgresql" else f"sqlite:///{tmp_path / 's.db'}"
    name = f"budget-{request.node.callspec.id}"
    optuna.create_study(study_name=name, storage=open_storage(url))
    start, queued, errors = threading.Barrier(4), [], []

    def join_and_queue() -> None:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url))
            start.wait(timeout=30)
            queued.append(enqueue_budget(study, 10))
        except Exception as error:  # reported below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=join_and_queue) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(queued) == [0, 0, 0, 10]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    assert [t.state.name for t in study.get_trials()] == ["WAITING"] * 10


# The search as a user's process runs it, on 1-second heartbeats so that the test waits 2 s
# (not the default 30 s) for a killed trial to be declared dead.
SEARCH_SCRIPT = """
import sys
import torch
import nnzip
from nnzip.data import load_digits

torch.set_num_threads(1)
model_dir, space, out, trials = sys.argv[1:5]
nnzip.search(nnzip.load(model_dir), load_digits(seed=0), space, out=out, trials=int(trials),
             objectives=["bytes"], progress=False, heldout=False, heartbeat_seconds=1)
"""


def test_a_killed_search_resumes_keeping_its_finished_trials_and_reruns_the_killed_one(
        trained_mlp, tmp_path, tiny_space_text):
    """SIGKILL (no handler runs) in the middle of trial 1: the rerun keeps trial 0 as it was,
    fails the orphaned trial 1 once its heartbeat is stale, runs its parameters again as a new
    trial and finishes the budget of 3 finished trials."""
    import signal
    import time

    model_dir = save(trained_mlp, tmp_path / "mlp")
    space, out, script = tmp_path / "space.yaml", tmp_path / "out", tmp_path / "search.py"
    space.write_text(tiny_space_text("tiny-shared"))
    script.write_text(SEARCH_SCRIPT)
    argv = [sys.executable, str(script), str(model_dir), str(space), str(out), "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (out / "trials" / "1" / "recipe.yaml").exists():  # trial 0 told, 1 running
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    storage = open_storage(f"sqlite:///{out / 'search.db'}")
    before = optuna.load_study(study_name="tiny-shared", storage=storage).get_trials()
    assert [t.state.name for t in before[:2]] == ["COMPLETE", "RUNNING"]

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    trials = optuna.load_study(study_name="tiny-shared", storage=storage).get_trials()
    assert trials[0].values == before[0].values and trials[0].params == before[0].params
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    retry = trials[3]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == trials[1].params
