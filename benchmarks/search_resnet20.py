"""Search ResNet-20's prune-channels → fold → W8A8 space: a front of deployed latency vs accuracy.

Issue 17's second target: the measured front's best point within 0.5 accuracy points at least as
fast as the hand-written ``recipes/prune-channels-resnet.yaml``, both as deployed. Two phases, so
the long search can run while the machine is busy and the verdict is timed on a quiet one:

- ``--phase search``: the cached ResNet-20 (runs/cache) searched with
  ``recipes/search-resnet20.yaml``; objectives accuracy (max), p50 latency at batch 1 and at
  batch 64 (min), each on the runtime ``nnzip.runtime.deploy`` would choose for the trial's model
  (``EvalConfig.deployed_timing="always"``: ONNX Runtime, OpenVINO fp32/bf16/int8 or PyTorch);
  constraint accuracy drop ≤ 0.5 points; NSGA-II, seed 0; trials chosen on the 500 validation
  images. Why two latencies: which trial is fastest depends on the batch size (int8 and the
  widths pruning leaves per stage pay differently at each), so the front keeps the best at
  either; and deployed on OpenVINO bf16 (AMX) pruning buys less than in PyTorch (README,
  "Latency fronts on the deployed runtime"), so one batch size alone ranks trials on thin
  margins. Resumable:
  a rerun with the same ``--out`` resumes the study, a larger ``--trials`` extends it; each
  run's trials and wall-clock are recorded in ``OUT/benchmark_runs.json`` (the stated budget).
- ``--phase verify``: loads ``OUT/front.json`` and the saved model of every feasible trial (the
  search's timings were taken on a busy machine, so all of them are re-timed, see ``_front``);
  compresses ResNet-20 with the hand-written recipe (cached in ``OUT/reference``, reused by a
  rerun); deploys the dense baseline, the reference and every candidate (``nnzip.runtime.deploy``,
  each its fastest correct runtime per batch size); then times all of them **interleaved in one
  ``compare_latency`` run per batch size** (1 thread, medians; PyTorch eager of the dense model
  beside them as the common baseline) and measures each deployed model's accuracy on the 10 000
  test images. Verdict: at batch 1 and at batch 64, the search's choice (the fastest feasible
  trial, chosen without the test split) against the reference; met when it is within 0.5 test
  points of the dense model and at least as fast, at both.

A front point quantized by nnzip is saved by its trial as a QDQ ``.onnx`` (``nnzip compress``'s
format), so it is deployed from that file, as ``nnzip deploy`` would deploy it; the search timed
its PyTorch model's runtimes, which also include OpenVINO bf16 on its dequantized float weights.

Run: nice .venv/bin/python benchmarks/search_resnet20.py [--phase both|search|verify]
[--trials 16] [--workers 1] [--out runs/search-resnet20] (``--render-only`` rewrites the .md
from the committed .json; ``--smoke`` checks the script end to end on ResNet-8 with 1-epoch
fine-tunes and a loose constraint, and prints, writing nothing to benchmarks/results). Set
``PYTHONPATH`` to the checkout when nnzip is installed from another one. Writes
benchmarks/results/search_resnet20.{json,md}.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console

from common import (
    benchmark_parser,
    machine_line,
    markdown_table,
    quiet_single_thread,
    rewrite_markdown,
    write_results,
)
from nnzip.atomic import write_text
from nnzip.data import load_mnist
from nnzip.errors import NnzipError
from nnzip.evaluate import machine_info
from nnzip.train import train_zoo_model

ROOT = Path(__file__).resolve().parent.parent
NAME = "search_resnet20"
SPACE = ROOT / "recipes" / "search-resnet20.yaml"
REFERENCE_RECIPE = ROOT / "recipes" / "prune-channels-resnet.yaml"
OBJECTIVES = ("accuracy", "latency", "latency@64")
CONSTRAINTS = ("accuracy_drop<=0.5",)
#: ``--smoke``: 1-epoch fine-tunes drop ResNet-8 by ~13 points; a loose constraint lets its
#: trials reach the front, so the verify phase is exercised too.
SMOKE_CONSTRAINTS = ("accuracy_drop<=50",)
#: Issue 17's done-when: the best front point within this drop (points, test split).
MAX_DROP_POINTS = 0.5
#: "At least as fast" within deploy's own tie rule (``nnzip deploy --size-tolerance``, 3 %): two
#: identical models timed interleaved still differ by up to ~1 % here (deploy_peers), so a
#: strict comparison would call the reference's own configuration slower than itself.
TIE_TOLERANCE = 0.03
BATCH_SIZES = (1, 64)
#: Timed calls per model in the verify run (as deploy_peers: 200 at batch 1, 30 at batch 64).
REPEATS = {1: 200, 64: 30}
RUNS_FILE = "benchmark_runs.json"
SMOKE_EPOCHS = 1


def _space_text(smoke: bool) -> str:
    """The space as searched: the committed one, or (``--smoke``) with 1-epoch fine-tunes."""
    text = SPACE.read_text()
    return text.replace("finetune_epochs: 8", f"finetune_epochs: {SMOKE_EPOCHS}") if smoke \
        else text


def _reference_recipe(smoke: bool) -> dict:
    recipe = yaml.safe_load(REFERENCE_RECIPE.read_text())
    if smoke:
        for stage in recipe["stages"]:
            for options in stage.values():
                if "finetune_epochs" in options:
                    options["finetune_epochs"] = SMOKE_EPOCHS
    return recipe


# --- phase 1: the search -----------------------------------------------------------------------

def run_search(args, model, data, console: Console) -> dict:
    """Search (or resume / extend) in ``args.out``; record this run's budget beside the study."""
    from nnzip.search import search

    space = SPACE
    if args.smoke:  # beside the search folder, which must hold only the search
        space = args.out.parent / f"{args.out.name}-space.yaml"
        write_text(space, _space_text(smoke=True))
    started = time.perf_counter()
    result = search(model, data, space, out=args.out, objectives=list(OBJECTIVES),
                    constraints=list(SMOKE_CONSTRAINTS if args.smoke else CONSTRAINTS),
                    trials=args.trials, workers=args.workers,
                    seed=0, name=args.arch)
    seconds = time.perf_counter() - started
    runs_path = args.out / RUNS_FILE
    runs = json.loads(runs_path.read_text()) if runs_path.is_file() else []
    runs.append({"trials": args.trials, "workers": args.workers, "seconds": round(seconds, 1),
                 "finished": result.finished, "load_average": _load_average()})
    write_text(runs_path, json.dumps(runs, indent=2) + "\n")
    console.print(f"search: {result.finished} finished trials, front {len(result.front)} "
                  f"point(s), {seconds / 60:.1f} min in this run; {result.paths['json']}")
    return {"runs": runs}


def _load_average() -> list[float]:
    import os

    return [round(value, 2) for value in os.getloadavg()]


# --- phase 2: verify on a quiet machine ---------------------------------------------------------

def reference_model(args, model, data):
    """ResNet-20 compressed by the hand-written recipe, cached in ``OUT/reference``."""
    from nnzip.models import load_model
    from nnzip.pipeline import compress
    from nnzip.recipe import parse_recipe

    folder = args.out / "reference"
    saved = next(iter(sorted(folder.glob("model*"))), None) if folder.is_dir() else None
    if saved is not None:
        return load_model(saved), {"cached": str(saved)}
    from nnzip.evaluate import EvalConfig

    recipe = parse_recipe(_reference_recipe(args.smoke), source=str(REFERENCE_RECIPE))
    started = time.perf_counter()
    result = compress(model, recipe, data, name=f"{args.arch}-reference", out_dir=folder,
                      eval_config=EvalConfig(measure_latency=False, noise_sigmas=(),
                                             fgsm_epsilons=(), robustness_samples=1),
                      seed=0, progress=False)
    return result.model, {"compressed_seconds": round(time.perf_counter() - started, 1),
                          "saved": str(result.paths.get("model"))}


def _front(out: Path) -> tuple[dict, list[dict]]:
    """The search's summary and its candidates: every *feasible* trial (validation accuracy
    within the constraint), not only the front. The search timed each trial while the machine
    was busy (a second worker training beside it): the same model read 3.4 and 6.5 ms at batch
    64 in two trials of the first run, so its latency front is noise-picked; verify re-times
    every feasible trial on a quiet machine, and the front is that of the quiet numbers."""
    path = out / "front.json"
    if not path.is_file():
        raise NnzipError(f"{path} is missing: run --phase search first (same --out)")
    summary = json.loads(path.read_text())
    trials = summary.get("trials") or summary["points"]
    return summary, sorted((p for p in trials if p["feasible"]), key=lambda p: p["number"])


def _deployed(name: str, model, data, folder: Path) -> dict:
    """Deploy ``model``: its fastest correct runtime per batch size (modules kept for timing)."""
    from nnzip.runtime import deploy

    deployment = deploy(model, data, folder / name, batch_sizes=BATCH_SIZES, threads=1,
                        repeats=50)
    return {"name": name, "by_batch": {b: deployment.chosen_by_batch[b] for b in BATCH_SIZES}}


def _test_accuracy(module, data) -> float:
    from nnzip.evaluate.accuracy import accuracy, predict_logits

    loader = data.loader("test", batch_size=256)
    return accuracy(predict_logits(module, loader), data.test.tensors[1])


def verify(args, model, data, console: Console, budget: dict) -> dict:
    """Deploy baseline, reference and front; time them interleaved; the verdict."""
    from nnzip.core.modes import set_eval
    from nnzip.data.splits import probe_batch
    from nnzip.evaluate.latency import compare_latency
    from nnzip.evaluate.size import artifact_bytes
    from nnzip.models import load_model

    summary, front = _front(args.out)
    reference, reference_info = reference_model(args, model, data)
    entries = [("baseline", "dense ResNet as trained", set_eval(model)),
               ("reference", "recipes/prune-channels-resnet.yaml", reference)]
    for point in front:
        if not point.get("artifact") or not Path(point["artifact"]).exists():
            console.print(f"trial {point['number']}: no saved model here, left out")
            continue
        entries.append((f"trial-{point['number']}", " → ".join(point["stages"]),
                        load_model(point["artifact"])))
    rows = []
    with tempfile.TemporaryDirectory(prefix="nnzip-verify-") as tmp:
        for name, what, entry_model in entries:
            console.print(f"deploying {name} …")
            deployed = _deployed(name, entry_model, data, Path(tmp))
            accuracy_by_runtime: dict[str, float] = {}
            for runtime in deployed["by_batch"].values():
                if runtime.name not in accuracy_by_runtime:
                    accuracy_by_runtime[runtime.name] = _test_accuracy(runtime.module, data)
            rows.append({"name": name, "what": what, "deployed": deployed,
                         "test_accuracy": accuracy_by_runtime})
        # One interleaved run per batch size: every model's deployed runtime, and the dense
        # model in PyTorch eager as the baseline of the speed-ups.
        latency: dict[int, list[dict]] = {}
        for batch_size in BATCH_SIZES:
            modules = [row["deployed"]["by_batch"][batch_size].module for row in rows]
            console.print(f"timing {len(modules) + 1} models interleaved at batch {batch_size} …")
            latency[batch_size] = compare_latency([*modules, set_eval(model)], threads=1,
                                                  repeats=REPEATS[batch_size],
                                                  batch=probe_batch(data, batch_size))
    baseline_accuracy = _test_accuracy(set_eval(model), data)
    points = {p["number"]: p for p in front}
    measured = []
    for index, row in enumerate(rows):
        by_batch = row["deployed"]["by_batch"]
        b1 = by_batch[1]
        item = {"name": row["name"], "what": row["what"],
                "runtime": {str(b): by_batch[b].name for b in BATCH_SIZES},
                "file_bytes": {str(b): by_batch[b].file_bytes for b in BATCH_SIZES},
                "p50_ms": {str(b): round(latency[b][index]["p50"], 4) for b in BATCH_SIZES},
                "p95_ms": {str(b): round(latency[b][index]["p95"], 4) for b in BATCH_SIZES},
                "speedup_vs_eager": {str(b): round(latency[b][-1]["p50"] / latency[b][index]["p50"],
                                                   3) for b in BATCH_SIZES},
                "test_accuracy": row["test_accuracy"][b1.name],
                "test_accuracy_by_runtime": row["test_accuracy"]}
        item["accuracy_drop"] = round(100 * (baseline_accuracy - item["test_accuracy"]), 2)
        if row["name"].startswith("trial-"):
            point = points[int(row["name"].split("-", 1)[1])]
            item |= {"trial": point["number"], "params": point["params"],
                     "validation": point["values"], "pytorch_test": point.get("test")}
        measured.append(item)
    eager = {str(b): round(latency[b][-1]["p50"], 4) for b in BATCH_SIZES}
    report = {"benchmark": NAME, "model": args.arch, "seed": 0, "smoke": args.smoke,
              "objectives": list(OBJECTIVES), "constraints": summary["constraints"],
              "budget": budget, "trials_by_state": summary["trials_by_state"],
              "front_trials": summary["front"], "baseline_test_accuracy": baseline_accuracy,
              "baseline_eager_p50_ms": eager, "fp32_bytes": artifact_bytes(model),
              "reference": reference_info, "repeats": {str(b): REPEATS[b] for b in BATCH_SIZES},
              "models": measured, "machine": machine_info(1),
              "load_average_after_timing": _load_average()}
    report["verdict"] = verdict(measured)
    return report


def verdict(models: list[dict]) -> dict:
    """Per batch size, the search's choice (the fastest feasible trial, timed quietly: chosen
    without the test split) against the reference; the target is met when its test drop is
    within :data:`MAX_DROP_POINTS` and it is at least as fast, at every batch size (a point
    fastest at batch 1 may be another than the one fastest at batch 64)."""
    reference = next(m for m in models if m["name"] == "reference")
    trials = [m for m in models if m["name"].startswith("trial-")]
    within = [m for m in trials if m["accuracy_drop"] <= MAX_DROP_POINTS]
    result: dict = {"reference_accuracy_drop": reference["accuracy_drop"],
                    "within_drop": [m["name"] for m in within]}
    for batch in (str(b) for b in BATCH_SIZES):
        best = min(trials, key=lambda m: m["p50_ms"][batch]) if trials else None
        result[batch] = {"reference_p50_ms": reference["p50_ms"][batch]} | ({} if best is None
            else {"best": best["name"], "best_p50_ms": best["p50_ms"][batch],
                  "best_accuracy_drop": best["accuracy_drop"],
                  "speed_vs_reference": round(reference["p50_ms"][batch] / best["p50_ms"][batch],
                                              3),
                  "tie": best["p50_ms"][batch] > reference["p50_ms"][batch],
                  "meets": best["p50_ms"][batch] <= (1 + TIE_TOLERANCE)
                  * reference["p50_ms"][batch] and best["accuracy_drop"] <= MAX_DROP_POINTS})
    result["meets"] = bool(trials) and all(result[str(b)].get("meets") for b in BATCH_SIZES)
    return result


# --- the report ---------------------------------------------------------------------------------

def render(report: dict) -> str:
    budget = report["budget"]
    runs = budget.get("runs", [])
    seconds = sum(run["seconds"] for run in runs)
    states = report["trials_by_state"]
    rows = []
    for m in report["models"]:
        params = ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float)
                           else f"{k.split('.', 1)[-1]}={v}" for k, v in
                           (m.get("params") or {}).items())
        runtimes = m["runtime"]["1"] if m["runtime"]["1"] == m["runtime"]["64"] else \
            f"b1 {m['runtime']['1']}, b64 {m['runtime']['64']}"
        rows.append([m["name"], m["what"] + (f" ({params})" if params else ""), runtimes,
                     f"{100 * m['test_accuracy']:.2f}%", f"{m['accuracy_drop']:+.2f}",
                     f"{m['p50_ms']['1']:.3f}", f"{m['speedup_vs_eager']['1']:.2f}×",
                     f"{m['p50_ms']['64']:.2f}", f"{m['speedup_vs_eager']['64']:.2f}×",
                     f"{m['file_bytes']['1']:,}" if m["file_bytes"]["1"] else "–"])
    v = report["verdict"] = verdict(report["models"])  # the current rule, on a re-render too
    if not any("best" in v[b] for b in ("1", "64")):
        line = "**MISSES**: no feasible trial to deploy"
    else:
        ties = any(v[b].get("tie") for b in ("1", "64"))
        word = ("**MISSES**" if not v["meets"] else "**MEETS, as a tie within "
                f"{100 * TIE_TOLERANCE:.0f} %** (not beaten)" if ties else "**MEETS**")
        line = word + ": " + "; ".join(
            f"batch {b}: {v[b]['best']} ({v[b]['best_accuracy_drop']:+.2f} points) "
            f"{v[b]['best_p50_ms']:.3f} ms vs the reference's {v[b]['reference_p50_ms']:.3f} ms, "
            f"{v[b]['speed_vs_reference']:.2f}× its speed" for b in ("1", "64"))
    eager = report["baseline_eager_p50_ms"]
    workers = ", ".join(f"{run['workers']} worker(s)" for run in runs)
    return "\n".join([
        f"# Search: {report['model']} on MNIST, a front of deployed latency vs accuracy", "",
        "Space `recipes/search-resnet20.yaml` (prune_channels taylor, sparsity 0.45–0.85, round_to "
        "8, 16 fine-tune epochs → fold_batchnorm → optional W8A8 static); objectives "
        f"{', '.join(report['objectives'])} (latency: p50 on the runtime `deploy` chooses for the "
        f"trial's model); constraint {', '.join(report['constraints'])}; NSGA-II, seed "
        f"{report['seed']}. Budget: {sum(states.values()) - states.get('running', 0)} trials "
        f"({states.get('complete', 0)} complete, {states.get('pruned', 0)} stopped, "
        f"{states.get('fail', 0)} failed), {seconds / 60:.1f} min of search wall-clock in "
        f"{len(runs)} run(s) ({workers}). Trials "
        "chosen on the 500 validation images; front trials "
        f"{', '.join(map(str, report['front_trials']))} (timed while the machine was busy). "
        "Verify re-times every feasible trial (validation drop within the constraint) quietly; "
        "the search's choice at each batch size is the fastest of them, its test accuracy "
        "only reported, never used to choose.", "",
        "Verify run: each model deployed by `nnzip.runtime.deploy` (its fastest correct runtime "
        "per batch size), all timed interleaved in one `compare_latency` run per batch size "
        f"(1 thread, p50 of {report['repeats']['1']} calls at batch 1, "
        f"{report['repeats']['64']} at batch 64), beside the dense model in PyTorch eager "
        f"({eager['1']:.3f} ms / {eager['64']:.2f} ms: the speed-ups' baseline). Accuracy: the "
        "deployed runtime (batch-1 choice) on the 10 000 test images; drop against the dense "
        f"model in PyTorch ({100 * report['baseline_test_accuracy']:.2f}%).", "",
        *markdown_table(["model", "recipe", "runtime", "test acc", "drop (points)",
                         "b1 p50 (ms)", "b1 speed-up", "b64 p50 (ms)", "b64 speed-up",
                         "bytes (b1 file)"], rows), "",
        f"Target: at each batch size, the search's choice within {MAX_DROP_POINTS} points "
        f"(test split) and at least as fast as the hand-written recipe (itself "
        f"{v['reference_accuracy_drop']:+.2f} points): {line}.", "",
        f"Load average after timing: {', '.join(map(str, report['load_average_after_timing']))}"
        " (1, 5, 15 min).", "",
        machine_line(report["machine"], ", 1 thread"), ""])


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--phase", choices=("both", "search", "verify"), default="both")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None,
                        help="the search folder (default runs/search-resnet20; --smoke: a "
                             "temporary folder)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="ResNet-8, 1-epoch fine-tunes; printed, not written to results")
    args = parser.parse_args()
    console = Console()
    if args.render_only:
        console.print(rewrite_markdown(NAME, render))
        return
    args.arch = "resnet8" if args.smoke else "resnet20"
    with tempfile.TemporaryDirectory(prefix="nnzip-search-resnet-smoke-") as tmp:
        if args.out is None:
            args.out = Path(tmp) / "search" if args.smoke else ROOT / "runs" / "search-resnet20"
        quiet_single_thread()
        data = load_mnist(seed=0)
        model = train_zoo_model(args.arch, data, cache_dir=args.cache_dir, progress=False)
        if args.phase in ("both", "search"):
            run_search(args, model, data, console)
        if args.phase == "search":
            return
        runs_path = args.out / RUNS_FILE
        budget = {"runs": json.loads(runs_path.read_text()) if runs_path.is_file() else []}
        report = verify(args, model, data, console, budget)
        if args.smoke:
            console.print(render(report), markup=False)
            return
        console.print(write_results(NAME, report, render))


if __name__ == "__main__":
    main()
