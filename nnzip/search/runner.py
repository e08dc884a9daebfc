"""Run a search: Optuna samples recipes from a space, ``compress`` runs and measures each.

Choices made here, and why:

- **Validation, then test.** A trial is compressed and measured on the data with its test split
  replaced by the validation split (fine-tuning sees only the training split and uses
  validation for early stopping, as always), so the search never looks at the test split. The
  front's points are then re-measured once on the test split, from the artifact each trial
  saved (cached in ``trials/<n>/test.json``).
- **Samplers.** NSGA-II for several objectives, TPE for one, both seeded (worker ``k`` of a
  parallel search uses seed ``seed + k``, so workers do not propose the same recipes) and both
  given the constraints (``Trial.set_constraint``: a trial is feasible when every value is
  <= 0).
- **Multi-fidelity: two rungs, by hand.** Optuna's pruners (``trial.report`` /
  ``should_prune``) refuse multi-objective studies, so with a ``fidelity`` section in the space a
  trial first runs with every fine-tune budget cut to ``short_fraction``; when it then misses an
  accuracy constraint by more than ``slack_points`` (or any other constraint at all, those do not
  depend on fine-tuning) it is stopped as PRUNED, else it runs again with the full budget.
- **Storage and workers: one mechanism** (:mod:`nnzip.core.studies`). Any Optuna RDB URL; by
  default ``sqlite:///OUT/search.db``. The study is created or joined by name
  (``load_if_exists``), so the same command resumes an interrupted search and processes (or
  machines) given one URL cooperate on one study. ``trials`` is the study's budget:
  ``enqueue_budget`` queues, under a lock in the database, the trials that are not yet finished,
  running or queued (a failed one is replaced), and every worker (the ``--workers`` processes
  here, the same command on other machines) claims queued trials until none is left. So a budget
  of N runs N trials once each, however many processes share it; a rerun runs only what is
  missing and a larger number extends a finished search. Workers record heartbeats
  (``HEARTBEAT_SECONDS``): a killed worker's trial is failed after twice that and run again
  with its parameters.
- **The output folder is resumed, not replaced.** Other commands write into a staged folder that
  replaces ``--out`` whole; a search folder holds the study (which a resumed or remote search
  keeps adding to) and one sub-folder per trial, so replacing it would lose finished trials.
  Instead every file is written atomically: a trial's run goes through ``compress``'s staged
  folder (``trials/<n>/run``), recipes and the front's files are replaced in one rename, and the
  ``front/`` recipes as one folder.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from nnzip.atomic import atomic_dir, write_text
from nnzip.core.interrupt import check_interrupt
from nnzip.core.studies import enqueue_budget, open_storage, work
from nnzip.data.splits import DataSplits
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig
from nnzip.search.front import pareto_indices, write_front
from nnzip.search.objectives import (
    ROW_KEYS,
    Constraint,
    Metric,
    latency_batches,
    parse_constraint,
    parse_objectives,
)
from nnzip.search.space import (
    SearchSpace,
    load_space,
    recipe_yaml,
    short_budget,
    short_epochs,
)

log = logging.getLogger(__name__)

#: The file that marks a folder as a search's output (a rerun resumes it).
SEARCH_MARKER = "search.json"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: A worker's heartbeat period: a trial silent for twice this long (a killed worker's) is failed
#: and run again, so a resumed search may wait that long for the trials a kill left RUNNING.
HEARTBEAT_SECONDS = 15
#: Constraints whose value depends on the fine-tune budget (the short rung gets a slack).
_ACCURACY_METRICS = frozenset({"accuracy", "accuracy_drop"})


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; ``message`` says what was kept and how to resume."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class SearchResult:
    study_name: str
    storage: str
    out: Path
    finished: int
    front: list[dict]
    paths: dict[str, Path] = field(default_factory=dict)


def default_storage(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'search.db'}"


def make_sampler(objectives: list[Metric], seed: int):
    """TPE for one objective, NSGA-II for several; both read the constraints each trial sets
    (``Trial.set_constraint``, Optuna 5)."""
    if len(objectives) == 1:
        return optuna.samplers.TPESampler(seed=seed)
    # A small population: a search of tens of trials would otherwise stay in the random first
    # generation (Optuna's default is 50).
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)


def _compact(row: dict) -> dict:
    """The numbers of a report row a search keeps (the full row is in the trial's report)."""
    kept = {key: row.get(key) for key in ROW_KEYS}
    kept["latency_ms"] = row.get("latency_ms")
    kept["runtime"] = row.get("runtime")
    return kept


def validation_view(data: DataSplits) -> DataSplits:
    """``data`` with its test split replaced by the validation split: what trials are measured
    on, so the search never chooses on the test split."""
    return dataclasses.replace(data, name=f"{data.name} (validation)", test=data.val)


def search_eval_config(objectives: list[Metric], constraints: list[Constraint],
                       threads: int = 1, repeats: int = 20) -> EvalConfig:
    """Measurements a trial needs: latency only at the batch sizes an objective or constraint
    names (none: not timed), no robustness probes and no shift suite.

    Latency is that of the runtime ``deploy`` would choose for the trial's model, float or
    quantized (``deployed_timing="always"``): a channel-pruned float model deploys on ONNX
    Runtime or OpenVINO too, so comparing its PyTorch eager time with a quantized trial's
    runtime time would compare unlike things, and the choice of runtime is part of every trial
    (its row's ``runtime`` names the winner)."""
    batches = latency_batches([*objectives, *(c.metric for c in constraints)])
    return EvalConfig(threads=threads, repeats=repeats, batch_sizes=batches or (1,),
                      measure_latency=bool(batches), noise_sigmas=(), fgsm_epsilons=(),
                      robustness_samples=1, deployed_timing="always",
                      shift_severities=())


class TrialRunner:
    """Optuna's objective: sample a recipe, compress on the validation view, return the
    objective values (and keep the trial's recipe, row and artifact in its user attrs)."""

    def __init__(self, model: nn.Module, data: DataSplits, space: SearchSpace,
                 objectives: list[Metric], constraints: list[Constraint], out: Path, *,
                 eval_config: EvalConfig, seed: int, name: str):
        self.model, self.view, self.space = model, validation_view(data), space
        self.objectives, self.constraints, self.out = objectives, constraints, out
        self.eval_config, self.seed, self.name = eval_config, seed, name

    def _compress(self, recipe, epochs: int, out_dir: Path | None) -> tuple[dict, dict, dict]:
        """Run ``recipe``; with ``out_dir``, keep its report (JSON and Markdown) and the model
        as ``compress`` saves it, written as one folder. The HTML report is not rendered per
        trial: its figures took 80 % of a trial's time (profiled on the digits MLP); ``nnzip
        report trials/N/run/report.json`` renders it."""
        from nnzip.evaluate.report import render_markdown
        from nnzip.pipeline import compress, save_final_model

        result = compress(self.model, recipe, self.view, name=self.name,
                          eval_config=self.eval_config, finetune_epochs=epochs, seed=self.seed,
                          progress=False)
        rows = result.report["models"]
        paths: dict[str, str] = {}
        if out_dir is not None:
            with atomic_dir(out_dir) as folder:
                write_text(folder / "report.md", render_markdown(result.report))
                write_text(folder / "report.json",
                           json.dumps(result.report, indent=2, default=str) + "\n")
                saved = save_final_model(result.model, folder, self.view)
            paths = {"json": str(out_dir / "report.json"),
                     "model": str(out_dir / saved.relative_to(folder))}
        return rows[0], rows[-1], paths

    def _violations(self, baseline: dict, row: dict) -> list[float]:
        return [c.violation(row, baseline) for c in self.constraints]

    def _set_constraints(self, trial: optuna.Trial, violations: list[float]) -> None:
        """Keep the violations (<= 0: met) for the samplers and for the front."""
        trial.set_user_attr("constraints", violations)
        for constraint, violation in zip(self.constraints, violations, strict=True):
            trial.set_constraint(constraint.text, violation)

    def _short_rung(self, trial: optuna.Trial, recipe) -> None:
        """The first rung: stop the trial (PRUNED) when its short fine-tune misses a
        constraint by more than the slack."""
        fidelity = self.space.fidelity
        if fidelity is None or fidelity.short_fraction >= 1 or not self.constraints:
            return
        baseline, row, _ = self._compress(short_budget(recipe, fidelity.short_fraction),
                                          short_epochs(self.space.finetune_epochs,
                                                       fidelity.short_fraction), None)
        violations = self._violations(baseline, row)
        trial.set_user_attr("short_rung", {"row": _compact(row), "violations": violations})
        for constraint, violation in zip(self.constraints, violations, strict=True):
            scale = 100.0 if constraint.metric.name == "accuracy" else 1.0
            slack = fidelity.slack_points if constraint.metric.name in _ACCURACY_METRICS else 0
            if violation * scale > slack:
                self._set_constraints(trial, violations)
                trial.set_user_attr("pruned", f"short rung: {constraint.text} missed by "
                                              f"{violation:.4g}")
                raise optuna.TrialPruned(f"short rung misses {constraint.text}")

    def __call__(self, trial: optuna.Trial) -> list[float]:
        check_interrupt()
        folder = self.out / "trials" / str(trial.number)
        try:
            recipe = self.space.sample(trial)
            from nnzip.tasks import task_of

            recipe.check_task(task_of(self.view)).check_model(self.model)
        except NnzipError as error:  # e.g. a sampled combination of options a stage refuses
            trial.set_user_attr("refused", str(error))
            self._set_constraints(trial, [1.0] * len(self.constraints))
            raise optuna.TrialPruned(str(error)) from None
        recipe = dataclasses.replace(recipe, name=f"{self.space.name}-trial-{trial.number}",
                                     source=str(folder / "recipe.yaml"))
        text = recipe_yaml(recipe, header=f"trial {trial.number} of search {self.space.name}; "
                           f"run with --finetune-epochs {self.space.finetune_epochs} "
                           f"--seed {self.seed}")
        write_text(folder / "recipe.yaml", text)
        trial.set_user_attr("recipe_yaml", text)
        trial.set_user_attr("recipe_path", str(folder / "recipe.yaml"))
        trial.set_user_attr("stages", [step.stage.kind for step in recipe.steps])
        # Float sums differ with the thread count, so training does: a front recipe reproduces
        # its trial bit for bit on the same number of threads (LeNet-5: identical .nnz on 1
        # thread, 4 bytes and one test image apart on 2).
        trial.set_user_attr("torch_threads", torch.get_num_threads())
        try:
            self._short_rung(trial, recipe)
            baseline, row, paths = self._compress(recipe, self.space.finetune_epochs,
                                                  folder / "run")
        except NnzipError as error:  # a stage refused these options while running
            trial.set_user_attr("refused", str(error))
            self._set_constraints(trial, [1.0] * len(self.constraints))
            raise optuna.TrialPruned(str(error)) from None
        trial.set_user_attr("row", _compact(row))
        trial.set_user_attr("baseline", _compact(baseline))
        trial.set_user_attr("artifact", paths.get("model"))
        trial.set_user_attr("report", paths.get("json"))
        self._set_constraints(trial, self._violations(baseline, row))
        return [metric.value(row, baseline) for metric in self.objectives]


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def worker_seed(seed: int, worker: int, storage: str) -> int:
    """The sampler seed of worker ``worker`` (0, 1, …) of this process's ``--workers``: ``seed +
    worker`` on a local SQLite file (worker 0 alone reproduces the search), and mixed with the
    host and process id on a server, where every machine's worker 0 would otherwise propose the
    same random first recipes."""
    if storage.startswith("sqlite"):
        return seed + worker
    origin = f"{socket.gethostname()}-{os.getpid()}".encode()
    return (seed + worker + int.from_bytes(origin, "big")) % 2**31


def _study_worker(runner: TrialRunner, study_name: str, storage: str, sampler_seed: int,
                  heartbeat_seconds: int, on_trial=None) -> None:
    """One worker: join the study by name with its own storage connection and sampler, and
    claim queued trials until none is left (``nnzip.core.studies.work``)."""
    backend = open_storage(storage, heartbeat_seconds=heartbeat_seconds)
    study = optuna.load_study(study_name=study_name, storage=backend,
                              sampler=make_sampler(runner.objectives, sampler_seed))
    work(study, backend, runner, on_trial=on_trial)


def _end_with_parent(parent_pid: int) -> None:
    """Have Linux send this worker SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``):
    a killed ``nnzip search`` must not leave workers running on without it. SIGTERM takes the
    Ctrl-C path (the trial is marked FAIL) where the CLI's handler is installed; elsewhere it
    ends the worker and the trial's heartbeat stops. Nothing to do off Linux."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _forked_worker(runner: TrialRunner, study_name: str, storage: str, sampler_seed: int,
                   heartbeat_seconds: int, threads: int, parent_pid: int) -> None:
    """A worker process on ``threads`` torch threads (the parent's share: N workers each on
    all cores would oversubscribe)."""
    _end_with_parent(parent_pid)
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        _study_worker(runner, study_name, storage, sampler_seed, heartbeat_seconds)
    except KeyboardInterrupt:  # work() marked the running trial FAIL; the parent reports it
        sys.exit(130)


def _run_workers(runner: TrialRunner, study_name: str, storage: str, seeds: list[int],
                 heartbeat_seconds: int, progress) -> None:
    """Worker processes (forked: the model and data are shared, not pickled), each joining the
    study by name; the parent shows the study's progress and stops them on Ctrl-C."""
    context = multiprocessing.get_context("fork")
    threads = max(1, torch.get_num_threads() // len(seeds))
    processes = [context.Process(target=_forked_worker, name=f"nnzip-search-worker-{k}",
                                 args=(runner, study_name, storage, seed, heartbeat_seconds,
                                       threads, os.getpid()))
                 for k, seed in enumerate(seeds)]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            progress()
            time.sleep(0.5)
    except KeyboardInterrupt:  # the workers got the same SIGINT; wait for them to mark trials
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise NnzipError(f"search worker(s) {', '.join(failed)} stopped with an error (its "
                         "traceback is printed above); the finished trials are kept: run the "
                         "same command to go on")


def _settings(space: SearchSpace, objectives: list[Metric], constraints: list[Constraint],
              seed: int) -> dict:
    return {"space": space.model_dump(mode="json", exclude={"source"}),
            "objectives": [m.name for m in objectives],
            "constraints": [c.text for c in constraints], "seed": seed}


def check_search_folder(out: Path) -> None:
    """``out`` may be absent, empty or a search folder (holding search.json): it is resumed."""
    if out.exists() and not out.is_dir():
        raise NnzipError(f"--out {out} is a file, not a folder: choose a new folder name")
    if out.is_dir() and any(out.iterdir()) and not (out / SEARCH_MARKER).is_file():
        raise NnzipError(f"--out {out} is a folder that is not a search (no {SEARCH_MARKER}) "
                         "and is not empty: choose a new or empty folder")


def open_study(name: str, storage: str, objectives: list[Metric], constraints: list[Constraint],
               settings: dict, seed: int) -> optuna.Study:
    """Create the study, or join the one of that name, refusing one with other settings."""
    study = optuna.create_study(study_name=name, storage=open_storage(storage),
                                directions=[m.direction for m in objectives],
                                sampler=make_sampler(objectives, seed),
                                load_if_exists=True)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif json.dumps(stored, sort_keys=True) != json.dumps(settings, sort_keys=True):
        changed = [key for key in settings if stored.get(key) != settings[key]]
        raise NnzipError(f"study {name!r} in {storage} was started with other settings (its "
                         f"{', '.join(changed)} differ): rerun with the same space, objectives, "
                         "constraints and seed to resume it, or choose a new --out / study name")
    return study


def _points(study: optuna.Study, objectives: list[Metric]) -> list[dict]:
    """Every complete trial as a front point (feasible or not), with its place on the front."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = []
    for trial in trials:
        violations = trial.user_attrs.get("constraints") or []
        points.append({
            "number": trial.number, "params": dict(trial.params),
            "values": dict(zip([m.name for m in objectives], trial.values, strict=True)),
            "feasible": all(v <= 0 for v in violations), "constraint_violations": violations,
            "stages": trial.user_attrs.get("stages", []),
            "recipe": trial.user_attrs.get("recipe_path"),
            "artifact": trial.user_attrs.get("artifact"),
            "torch_threads": trial.user_attrs.get("torch_threads"),
            "seconds": trial.duration.total_seconds() if trial.duration else None,
            "on_front": False})
    feasible = [p for p in points if p["feasible"]]
    directions = [m.direction for m in objectives]
    for index in pareto_indices([[p["values"][m.name] for m in objectives] for p in feasible],
                                directions):
        feasible[index]["on_front"] = True
    return points


def measure_on_test(point: dict, model: nn.Module, data: DataSplits,
                    eval_config: EvalConfig, out: Path, baseline: dict,
                    name: str = "model") -> dict | None:
    """The test-split report row of a front point (stage 'trial N'), measured once from its
    saved artifact (kept in ``trials/<n>/test.json``); None when the trial saved none (e.g. it
    ran on another machine of a shared study). ``baseline`` is the uncompressed model's test
    row."""
    from nnzip.evaluate import evaluate
    from nnzip.evaluate.metrics import REPORT_MODEL_KEYS
    from nnzip.models import load_model

    cache = out / "trials" / str(point["number"]) / "test.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if all(key in cached for key in REPORT_MODEL_KEYS):  # else an older, partial cache
            return cached
    if not point.get("artifact") or not Path(point["artifact"]).exists():
        return None
    artifact = Path(point["artifact"])
    compressed = load_model(artifact)
    row = evaluate(compressed, data, name=name, stage=f"trial {point['number']}",
                   reference=model, reference_size_bytes=baseline["size_bytes"],
                   config=eval_config, artifact_path=artifact if artifact.is_file() else None)
    baseline_accuracy = baseline.get("accuracy")
    measured = {**row, "baseline_accuracy": baseline_accuracy}
    if row.get("accuracy") is not None and baseline_accuracy is not None:
        measured["accuracy_drop"] = 100.0 * (baseline_accuracy - row["accuracy"])
    write_text(cache, json.dumps(measured, indent=2, default=str) + "\n")
    return measured


def _front_recipes(out: Path, front: list[dict], settings: dict, model_name: str) -> Path:
    """One recipe per front point in ``front/``, replaced as one folder."""
    with atomic_dir(out / "front") as folder:
        for point in front:
            source = Path(point["recipe"]) if point.get("recipe") else None
            if source is None or not source.is_file():
                continue
            values = ", ".join(f"{k} {v:.6g}" for k, v in point["values"].items())
            test = point.get("test") or {}
            tested = "" if not test else (
                f"; test: accuracy {test.get('accuracy')}, bytes {test.get('size_bytes')}")
            header = (f"# Pareto point of search {settings['space']['name']}, trial "
                      f"{point['number']}: validation {values}{tested}\n"
                      f"# Reproduce: nnzip compress --model {model_name} --recipe THIS_FILE "
                      f"--finetune-epochs {settings['space']['finetune_epochs']} "
                      f"--seed {settings['seed']}"
                      + (f" --work-threads {point['torch_threads']}"
                         if point.get("torch_threads") else "") + "\n")
            (folder / f"trial-{point['number']}.yaml").write_text(header + source.read_text())
            point["front_recipe"] = str(out / "front" / f"trial-{point['number']}.yaml")
    return out / "front"


def summarize(study: optuna.Study, out: Path, objectives: list[Metric],
              constraints: list[Constraint], settings: dict, storage: str, *,
              model: nn.Module | None = None, data: DataSplits | None = None,
              eval_config: EvalConfig | None = None, model_name: str = "MODEL",
              model_source: str | None = None,
              interrupted: bool = False) -> tuple[list[dict], dict[str, Path]]:
    """Write the front's files from the study as it is now (a running search too)."""
    from nnzip.evaluate import machine_info

    points = _points(study, objectives)
    front = [p for p in points if p["on_front"]]
    eval_config = eval_config or EvalConfig()
    baseline = None
    if model is not None and data is not None and not interrupted and front:
        from nnzip.evaluate import evaluate

        # Timed too where an objective is (the report's speed-ups are against it).
        baseline = evaluate(model, data, name=model_name, stage="baseline", config=eval_config)
        for point in front:
            point["test"] = measure_on_test(point, model, data, eval_config, out, baseline,
                                            name=model_name)
    by_state = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
                for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                              TrialState.RUNNING)}
    paths = {"front": _front_recipes(out, front, settings, model_source or model_name)}
    summary = {"study": study.study_name, "storage": storage, "interrupted": interrupted,
               "objectives": [{"name": m.name, "direction": m.direction} for m in objectives],
               "constraints": [c.text for c in constraints], "trials_by_state": by_state,
               "front": [p["number"] for p in front], "points": front, "trials": points,
               "split": "objective values on the validation split; 'test' re-measured once on "
                        "the test split", "baseline": baseline,
               "machine": machine_info(eval_config.threads),
               **({"data": data.summary()} if data is not None else {})}
    paths.update(write_front(out, summary))
    return front, paths


def search(model: nn.Module, data: DataSplits, space: SearchSpace | str | Path, *,
           out: str | Path, objectives: Sequence[str] = ("accuracy", "bytes"),
           constraints: Sequence[str] = (), trials: int = 20, workers: int = 1,
           storage: str | None = None, study_name: str | None = None, seed: int = 0,
           name: str = "model", model_source: str | None = None,
           eval_config: EvalConfig | None = None, heldout: bool = True,
           progress: bool = True, heartbeat_seconds: int = HEARTBEAT_SECONDS) -> SearchResult:
    """Search ``space`` for the recipes on the Pareto front of ``objectives`` under
    ``constraints``, until the study holds ``trials`` finished trials, and write the front.

    ``storage`` is an Optuna RDB URL (default ``sqlite:///OUT/search.db``); the study is created
    or joined by ``study_name`` (default: the space's name), so rerunning the same call resumes
    it and several processes (``workers``) or machines (one server URL) share it; a trial whose
    worker fell silent for ``2 * heartbeat_seconds`` (killed) is run again. The caller's
    model is never changed. ``name`` names the model's rows in the reports; ``model_source``
    (default ``name``) is what the front recipes' "Reproduce" line passes to ``--model``. See
    the module docstring for the choices made.
    """
    if isinstance(space, str | Path):
        space = load_space(space)
    if not isinstance(trials, int) or trials < 1 or not isinstance(workers, int) or workers < 1:
        raise NnzipError(f"trials and workers must be whole numbers of at least 1, got "
                         f"trials={trials!r}, workers={workers!r}")
    metrics = parse_objectives(list(objectives))
    limits = [parse_constraint(text) for text in constraints]
    from nnzip.tasks import task_of

    for combo in space.combinations()[:256]:  # every stage fits the task and the model
        if combo:
            from nnzip.recipe import parse_recipe

            parse_recipe({"stages": [{s.kind: s.first_options()} for s in combo]},
                         source=f"search space {space.source}").check_task(task_of(data)) \
                .check_model(model)
    out = Path(out)
    check_search_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out)
    study_name = study_name or space.name
    settings = _settings(space, metrics, limits, seed)
    model = copy.deepcopy(model)  # the caller's model is never changed (compress copies again)
    study = open_study(study_name, storage, metrics, limits, settings, seed)
    write_text(out / SEARCH_MARKER, json.dumps({"study": study_name, "storage": storage,
                                                **settings}, indent=2) + "\n")
    eval_config = eval_config or search_eval_config(metrics, limits)
    runner = TrialRunner(model, data, space, metrics, limits, out, eval_config=eval_config,
                         seed=seed, name=name)
    try:
        _optimize(study, runner, storage, seed, trials, workers, heartbeat_seconds, progress)
    except KeyboardInterrupt:
        summarize(study, out, metrics, limits, settings, storage, interrupted=True)
        raise SearchInterrupted(
            f"interrupted: {_finished(study)} finished trial(s) are kept in {storage} and "
            f"{out / 'front.json'}; run the same command to resume") from None
    front, paths = summarize(study, out, metrics, limits, settings, storage,
                             model=model if heldout else None, data=data,
                             eval_config=eval_config, model_name=name,
                             model_source=model_source)
    return SearchResult(study_name=study_name, storage=storage, out=out,
                        finished=_finished(study), front=front, paths=paths)


def _optimize(study: optuna.Study, runner: TrialRunner, storage: str, seed: int, trials: int,
              workers: int, heartbeat_seconds: int, progress: bool) -> None:
    """Queue the budget's missing trials (once, however many processes and machines call this
    at the same time) and work the queue with ``workers`` processes of this machine."""
    from rich.progress import Progress

    enqueue_budget(study, trials)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"search {study.study_name}", total=trials,
                            completed=_finished(study))

        def show(*_args) -> None:
            bar.update(task, completed=_finished(study))

        seeds = [worker_seed(seed, k, storage) for k in range(min(workers, trials))]
        if len(seeds) == 1:
            _study_worker(runner, study.study_name, storage, seeds[0], heartbeat_seconds,
                          on_trial=show)
        else:
            _run_workers(runner, study.study_name, storage, seeds, heartbeat_seconds, show)
            show()
