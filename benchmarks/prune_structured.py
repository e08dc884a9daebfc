"""Structured pruning on the zoo: is the pruned model really smaller and faster, and still accurate?

For each zoo model (trained on MNIST, cached in runs/cache) this applies nnzip's built-in recipe
(``recipes/prune-channels-*.yaml``: the ``prune_channels`` stage, i.e. channel removal and a
fine-tune) and measures, against the dense model: parameters, saved bytes, MFLOPs, p50 latency at
batch 1 and 64 (dense and pruned timed interleaved in one run, 1 thread) and accuracy on the
10 000 MNIST test images. nnzip does its surgery with Torch-Pruning, so the same run also prunes
with Torch-Pruning used directly in its documented way (MetaPruner + MagnitudeImportance, same
ratio, classifier ignored), without and with the same fine-tune: the difference is what nnzip's
importance and recipe add, at the same pruning ratio. Run: make bench, or
``python benchmarks/prune_structured.py``. Writes benchmarks/results/prune_structured.{md,json}.
"""

from __future__ import annotations

import copy
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch_pruning as tp
from rich.console import Console
from torch import nn

from common import (
    RESULTS,
    benchmark_parser,
    machine_line,
    markdown_table,
    print_table,
    run_each,
)
from nnzip.data import DataSplits, load_mnist
from nnzip.evaluate import artifact_bytes, compare_latency, count_flops, count_params, machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.models.fold import FoldBatchNorm, fold_batchnorm
from nnzip.prune.structured import PruneChannels, prune_channels
from nnzip.recipe import load_recipe
from nnzip.stage import Context
from nnzip.train import fit, train_zoo_model

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"resnet20": ROOT / "recipes" / "prune-channels-resnet.yaml",
           "resnet8": ROOT / "recipes" / "prune-channels-resnet.yaml",
           "mobilenetv2": ROOT / "recipes" / "prune-channels-mobilenet.yaml"}
CLASSIFIER = {"resnet20": "fc", "resnet8": "fc", "mobilenetv2": "classifier"}
#: Done-when targets of issue 3.
MAX_ACCURACY_DROP_POINTS = 1.0
MIN_SIZE_RATIO = 2.0
MIN_SPEEDUP = 1.6
THREADS, WARMUP = 1, 20


def accuracy_on_test(model: nn.Module, data: DataSplits) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=500)),
                    data.test.tensors[1])


def _stage(arch: str) -> PruneChannels:
    recipe = load_recipe(RECIPES[arch])
    stages = [step.stage for step in recipe.steps if isinstance(step.stage, PruneChannels)]
    if len(stages) != 1:
        raise SystemExit(f"{RECIPES[arch]} must hold exactly one prune_channels stage")
    return stages[0]


def _folds(arch: str) -> bool:
    return any(isinstance(step.stage, FoldBatchNorm) for step in load_recipe(RECIPES[arch]).steps)


def _sizes(model: nn.Module, data: DataSplits) -> dict:
    flops, _ = count_flops(model, data.input_shape)
    return {"params": count_params(model), "artifact_bytes": artifact_bytes(model),
            "mflops": flops / 1e6 if flops is not None else None}


def _torch_pruning_directly(dense: nn.Module, arch: str, stage: PruneChannels,
                            data: DataSplits, context: Context, epochs: int) -> dict:
    """Torch-Pruning's README recipe: MetaPruner + MagnitudeImportance, classifier ignored."""
    model = copy.deepcopy(dense)
    example = data.train.tensors[0][:2]
    started = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(),
                                  pruning_ratio=stage.sparsity,
                                  ignored_layers=[getattr(model, CLASSIFIER[arch])])
    pruner.step()
    prune_seconds = time.perf_counter() - started
    accuracy_pruned = accuracy_on_test(model, data)
    started = time.perf_counter()
    if epochs > 0:
        fit(model, data, stage.finetune_config(context, epochs), progress=False,
            description="finetune torch-pruning")
    return {"method": "Torch-Pruning directly (MagnitudeImportance p=2)",
            "prune_seconds": prune_seconds, "finetune_seconds": time.perf_counter() - started,
            "accuracy_pruned": accuracy_pruned, "accuracy_finetuned": accuracy_on_test(model, data),
            "params": count_params(model)}


def run_model(arch: str, data: DataSplits, cache_dir: Path, repeats_b1: int,
              repeats_b64: int, console: Console) -> dict:
    dense = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    stage = _stage(arch)
    context = Context(data=data, reference=copy.deepcopy(dense), progress=False, seed=0)
    epochs = context.finetune_epochs if stage.finetune_epochs is None else stage.finetune_epochs
    accuracy_dense = accuracy_on_test(dense, data)
    console.print(f"[bold]{arch}[/]: dense accuracy {100 * accuracy_dense:.2f}%, pruning with "
                  f"{RECIPES[arch].name} ({stage.criterion}, sparsity {stage.sparsity}, "
                  f"{epochs} fine-tune epochs)")

    # nnzip's importance alone (no fine-tune), for the like-for-like row against Torch-Pruning.
    started = time.perf_counter()
    calibration = None
    if stage.criterion == "taylor":
        from nnzip.data import calibration_batches
        calibration = calibration_batches(data, stage.calibration_batches, seed=context.seed)
    only_pruned = prune_channels(dense, stage.sparsity, data.train.tensors[0][:2], stage.criterion,
                                 global_pruning=stage.global_pruning, round_to=stage.round_to,
                                 iterative_steps=stage.iterative_steps, calibration=calibration,
                                 exclude=stage.exclude, seed=context.seed)
    nnzip_prune_seconds = time.perf_counter() - started
    accuracy_only_pruned = accuracy_on_test(only_pruned, data)

    started = time.perf_counter()
    pruned = stage.apply(copy.deepcopy(dense), context).eval()
    nnzip_seconds = time.perf_counter() - started
    accuracy_pruned = accuracy_on_test(pruned, data)
    console.print(f"  nnzip: {100 * accuracy_only_pruned:.2f}% right after pruning, "
                  f"{100 * accuracy_pruned:.2f}% after fine-tuning ({nnzip_seconds:.0f} s)")

    # The deployment step the recipe ends with: BatchNorm folded into the convolutions. Timed
    # beside the dense model as trained *and* folded the same way, so that what folding gives and
    # what pruning gives are told apart.
    deployed = fold_batchnorm(pruned) if _folds(arch) else pruned
    dense_folded = fold_batchnorm(dense)
    accuracy_deployed = accuracy_on_test(deployed, data)
    latency = {}
    for batch, repeats in ((1, repeats_b1), (64, repeats_b64)):
        timed = compare_latency([dense, dense_folded, pruned, deployed], data.input_shape, batch,
                                threads=THREADS, warmup=WARMUP, repeats=repeats)
        p50 = dict(zip(("dense", "dense_folded", "pruned", "deployed"),
                       (row["p50"] for row in timed), strict=True))
        latency[f"batch{batch}"] = {
            **{f"{key}_p50_ms": value for key, value in p50.items()},
            "deployed_p95_ms": timed[3]["p95"], "dense_p95_ms": timed[0]["p95"],
            "speedup_p50": p50["dense"] / p50["deployed"],
            "pruning_only_speedup_p50": p50["dense"] / p50["pruned"],
            "speedup_both_folded_p50": p50["dense_folded"] / p50["deployed"],
            "repeats": repeats}
        console.print(f"  batch {batch}: dense {p50['dense']:.2f} ms, pruned "
                      f"{p50['pruned']:.2f} ms, pruned+folded {p50['deployed']:.2f} ms "
                      f"({p50['dense'] / p50['deployed']:.2f}×; "
                      f"{p50['dense_folded'] / p50['deployed']:.2f}× against dense folded)")

    direct = _torch_pruning_directly(dense, arch, stage, data, context, epochs)
    console.print(f"  Torch-Pruning directly: {100 * direct['accuracy_pruned']:.2f}% → "
                  f"{100 * direct['accuracy_finetuned']:.2f}% after the same fine-tune")
    dense_sizes, pruned_sizes = _sizes(dense, data), _sizes(deployed, data)
    drop_points = 100 * (accuracy_dense - accuracy_deployed)
    size_ratio = dense_sizes["artifact_bytes"] / pruned_sizes["artifact_bytes"]
    return {
        "arch": arch, "recipe": str(RECIPES[arch].relative_to(ROOT)),
        "options": stage.model_dump(), "finetune_epochs": epochs,
        "removed_fraction": context.details.get("removed_fraction"),
        "dense": {**dense_sizes, "accuracy": accuracy_dense},
        "pruned": {**pruned_sizes, "accuracy": accuracy_deployed,
                   "accuracy_before_folding": accuracy_pruned, "bn_folded": _folds(arch)},
        "latency": latency,
        "size_ratio": size_ratio,
        "flops_ratio": (dense_sizes["mflops"] / pruned_sizes["mflops"]
                        if pruned_sizes["mflops"] else None),
        "accuracy_drop_points": drop_points,
        "targets_met": {
            "accuracy_drop_le_1_point": drop_points <= MAX_ACCURACY_DROP_POINTS,
            "artifact_2x_smaller": size_ratio >= MIN_SIZE_RATIO,
            "speedup_1.6x_batch1": latency["batch1"]["speedup_p50"] >= MIN_SPEEDUP,
            "speedup_1.6x_batch64": latency["batch64"]["speedup_p50"] >= MIN_SPEEDUP},
        "comparison": [
            {"method": f"nnzip ({stage.criterion}"
                       f"{', round_to ' + str(stage.round_to) if stage.round_to else ''})",
             "prune_seconds": nnzip_prune_seconds,
             "finetune_seconds": nnzip_seconds - nnzip_prune_seconds,
             "accuracy_pruned": accuracy_only_pruned, "accuracy_finetuned": accuracy_pruned,
             "params": count_params(pruned)},  # before folding, like the Torch-Pruning row
            direct],
    }


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def model_rows(result: dict) -> list[list[str]]:
    dense, pruned, latency = result["dense"], result["pruned"], result["latency"]
    rows = [["params", f"{dense['params']:,}", f"{pruned['params']:,}",
             f"{dense['params'] / pruned['params']:.2f}×"],
            ["artifact bytes", f"{dense['artifact_bytes']:,}", f"{pruned['artifact_bytes']:,}",
             f"{result['size_ratio']:.2f}×"],
            ["MFLOPs", f"{dense['mflops']:.2f}", f"{pruned['mflops']:.2f}",
             f"{result['flops_ratio']:.2f}×"]]
    for key, label in (("batch1", "p50 batch 1 (ms)"), ("batch64", "p50 batch 64 (ms)")):
        row = latency[key]
        rows.append([label, f"{row['dense_p50_ms']:.3f}", f"{row['deployed_p50_ms']:.3f}",
                     f"{row['speedup_p50']:.2f}× faster"])
        rows.append(["  pruned, BN not folded", "", f"{row['pruned_p50_ms']:.3f}",
                     f"{row['pruning_only_speedup_p50']:.2f}×"])
        rows.append(["  dense with BN folded too", f"{row['dense_folded_p50_ms']:.3f}", "",
                     f"{row['speedup_both_folded_p50']:.2f}× (pruning alone)"])
    rows.append(["accuracy", _pct(dense["accuracy"]), _pct(pruned["accuracy"]),
                 f"{-result['accuracy_drop_points']:+.2f} points"])
    return rows


def comparison_rows(result: dict) -> list[list[str]]:
    return [[result["arch"], row["method"], _pct(row["accuracy_pruned"]),
             _pct(row["accuracy_finetuned"]), f"{row['prune_seconds']:.2f}",
             f"{row['finetune_seconds']:.0f}", f"{row['params']:,}"]
            for row in result["comparison"]]


MODEL_COLUMNS = ["metric", "dense", "pruned + BN folded", "change"]
COMPARISON_COLUMNS = ["model", "method", "acc. pruned", "acc. fine-tuned", "prune s",
                      "fine-tune s", "params"]
TEXT_COLUMNS = ["metric", "method"]  # left-aligned in the console; numbers go right


_LATENCY_SPANS = {"speedup64": ("batch64", "speedup_p50"), "speedup1": ("batch1", "speedup_p50"),
                  "pruning_only1": ("batch1", "pruning_only_speedup_p50"),
                  "both_folded1": ("batch1", "speedup_both_folded_p50")}


def _span(report: dict, key: str) -> str:
    values = [result["latency"][_LATENCY_SPANS[key][0]][_LATENCY_SPANS[key][1]]
              if key in _LATENCY_SPANS else result[key] for result in report["models"]]
    return f"{min(values):.1f}–{max(values):.1f}" if values else "?"


def _wins(report: dict) -> int:
    return sum(result["comparison"][0]["accuracy_finetuned"]
               > result["comparison"][1]["accuracy_finetuned"] for result in report["models"])


def _largest_gap(report: dict) -> float:
    gaps = [abs(result["comparison"][0]["accuracy_finetuned"]
                - result["comparison"][1]["accuracy_finetuned"]) for result in report["models"]]
    return 100 * max(gaps, default=0.0)


def render_markdown(report: dict) -> str:
    lines = ["# Structured pruning (prune_channels) on the zoo", "",
             "Channels are physically removed (Torch-Pruning's dependency graph does the "
             "surgery), then the model is fine-tuned with nnzip's loop, as the built-in recipes "
             "say. Accuracy on the 10 000 MNIST test images; latency p50 with dense and pruned "
             f"timed interleaved in one run ({THREADS} torch thread, {WARMUP} warm-up calls). "
             "Targets: accuracy drop ≤ 1 point, artifact ≥ 2× smaller, p50 ≥ 1.6× faster at "
             "batch 1 and 64, for the deployed model (pruned, fine-tuned, BatchNorm folded) "
             "against the dense model as trained. Pruning and fine-tuning also ran on 1 torch "
             "thread.", ""]
    for result in report["models"]:
        options = result["options"]
        met = ", ".join(f"{key}: {'yes' if value else 'NO'}"
                        for key, value in result["targets_met"].items())
        lines += [f"## {result['arch']}", "",
                  # 'ratio' is the name results written before issue 13 used.
                  f"Recipe `{result['recipe']}`: sparsity "
                  f"{options.get('sparsity', options.get('ratio'))}, criterion "
                  f"{options['criterion']}, round_to {options['round_to']}, global "
                  f"{options['global_pruning']}, {result['finetune_epochs']} fine-tune epochs "
                  f"at lr {options['lr']}; {100 * (result['removed_fraction'] or 0):.1f} % of the "
                  "prunable channels removed.", "",
                  *markdown_table(MODEL_COLUMNS, model_rows(result)), "",
                  f"Targets met: {met}.", ""]
    lines += ["## nnzip vs Torch-Pruning used directly (same ratio, same fine-tune)", "",
              "nnzip uses Torch-Pruning underneath, so the surgery is the same; the rows differ "
              "in importance (nnzip scores a channel by the filters that produce it; "
              "Torch-Pruning's MagnitudeImportance averages the normalised L2 of every coupled "
              "weight, consumers included) and nnzip adds the recipe (fine-tune, report). "
              "Torch-Pruning is used as its README shows: `MetaPruner(model, example, "
              "importance=MagnitudeImportance(), pruning_ratio=r, ignored_layers=[classifier])`, "
              "then `step()`. Seconds are wall-clock on this shared machine; a different "
              "`round_to` gives slightly different widths (params column).", "",
              *markdown_table(COMPARISON_COLUMNS, [row for result in report["models"]
                                                   for row in comparison_rows(result)]),
              "", "## Reading the numbers", "",
              "- Right after removing half of every layer's channels in one shot, both "
              "importances leave the model near chance (~10 %): the fine-tune does the recovery. "
              f"After the same fine-tune the two end at most {_largest_gap(report):.2f} points "
              f"apart; nnzip's importance ended ahead on {_wins(report)} of "
              f"{len(report['models'])} models. With this budget the fine-tune, more than the "
              "criterion, decides; with a short one the criterion mattered in the tuning "
              "runs for these recipes (6 epochs, lr 1e-3, same code): Taylor reached 98.36 % "
              "(resnet20) and 98.03 % (mobilenetv2), L1 97.80 % and 97.60 %.",
              f"- Batch 64 is compute-bound: {_span(report, 'flops_ratio')}× fewer FLOPs give "
              f"{_span(report, 'speedup64')}× lower latency. "
              "Batch 1 on 28×28 inputs is dominated by per-operator costs that do not shrink "
              "with width: every BatchNorm, ReLU and residual add costs ~15–40 µs per call "
              "whatever its channel count, and a depthwise conv (oneDNN) ~100–200 µs. Removing "
              "channels alone gave "
              f"{_span(report, 'pruning_only1')}× at batch 1. The recipes therefore end with the "
              "`fold_batchnorm` stage (a deployment step: BatchNorm merged into the conv before "
              "it, same function up to float rounding), which removes one operator per conv: "
              f"pruned + folded vs the dense model as trained, {_span(report, 'speedup1')}×. "
              "Folding helps the dense model too; with the dense model folded the same way, "
              f"pruning alone accounts for {_span(report, 'both_folded1')}× at batch 1 (rows "
              "'dense with BN folded too'). Both are measured in the same interleaved run.",
              "", machine_line(report["machine"],
                               f", torch-pruning {report['torch_pruning_version']}")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__, ["resnet20", "resnet8", "mobilenetv2"])
    parser.add_argument("--repeats-b1", type=int, default=300)
    parser.add_argument("--repeats-b64", type=int, default=100)
    args = parser.parse_args()
    console = Console(width=140)
    data = load_mnist()
    report = {"benchmark": "prune_structured", "machine": machine_info(THREADS),
              "torch_pruning_version": version("torch-pruning"), "threads": THREADS,
              "warmup": WARMUP, "models": []}
    run_each("prune_structured", report, args.archs,
             lambda arch: run_model(arch, data, args.cache_dir, args.repeats_b1,
                                    args.repeats_b64, console), render_markdown)
    for result in report["models"]:
        print_table(console, f"{result['arch']}: dense vs pruned", MODEL_COLUMNS,
                    model_rows(result), left=TEXT_COLUMNS)
    print_table(console, "nnzip vs Torch-Pruning directly (same ratio)", COMPARISON_COLUMNS,
                [row for result in report["models"] for row in comparison_rows(result)],
                left=TEXT_COLUMNS)
    console.print(f"-> {RESULTS / 'prune_structured.md'}")


if __name__ == "__main__":
    # Training too runs on one thread: on a shared 2-core machine, two OpenMP threads fighting
    # other tenants made an epoch ~10x slower (measured: 67 s vs 5 s for pruned resnet8).
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    main()
