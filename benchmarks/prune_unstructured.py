"""Unstructured pruning on real MNIST: recipes, torch.nn.utils.prune, criteria, N:M, sensitivity.

For LeNet-300-100 and LeNet-5, each starting from the cached baseline (runs/cache), in one run:
(a) the built-in recipe recipes/prune-<model>.yaml (pruned + fine-tuned), beside a dense model
fine-tuned for the same epochs (does pruning cost accuracy, or does extra training explain it?);
(b) nnzip's global magnitude one-shot against torch.nn.utils.prune.global_unstructured (L1) at
equal sparsity, no fine-tuning; (c) criteria compared one-shot at one sparsity, and 2:4 N:M
one-shot + a short fine-tune; (d) per-layer sensitivity on the validation split. Accuracy is on the
10 000 MNIST test images. Run: .venv/bin/python benchmarks/prune_unstructured.py. Writes
benchmarks/results/prune_unstructured.{json,md}.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.nn.utils import prune as torch_prune

from common import benchmark_parser, markdown_table, print_table, write_results
from nnzip.data import load_mnist
from nnzip.data.splits import DataSplits
from nnzip.evaluate import machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.prune import (
    finetune_masked,
    fold_masks,
    layer_sensitivity,
    layer_sparsity,
    magnitude_prune,
    nm_prune,
    prunable_names,
    prune_unstructured,
    sparsity_summary,
)
from nnzip.recipe import load_recipe
from nnzip.stage import Context
from nnzip.train import TrainConfig, fit, train_zoo_model

ROOT = Path(__file__).resolve().parent.parent
#: Issue 3's done-when: at least this fraction of weights removed, at most this accuracy drop.
TARGETS = {"lenet300": {"sparsity": 0.92, "max_drop": 0.002},
           "lenet5": {"sparsity": 0.90, "max_drop": 0.002}}
CRITERIA = [("magnitude", "fisher"), ("random", "fisher"), ("taylor", "fisher"),
            ("hessian", "fisher"), ("hessian", "hutchinson")]


def test_set_accuracy(model: nn.Module, data: DataSplits) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=1000)),
                    data.test.tensors[1])


def timed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def run_recipe(arch: str, base: nn.Module, data: DataSplits, seeds: list[int]) -> dict:
    """(a) The built-in recipe (once per seed), and a dense fine-tune of equal length as control."""
    recipe = load_recipe(ROOT / "recipes" / f"prune-{arch}.yaml")
    stage = recipe.steps[0].stage
    runs = []
    for seed in seeds:
        model = copy.deepcopy(base)
        context = Context(data=data, progress=False, seed=seed)
        _, seconds = timed(lambda m=model, c=context: stage.apply(m, c))
        summary = sparsity_summary(model)
        runs.append({"seed": seed, "seconds": seconds, "accuracy": test_set_accuracy(model, data),
                     "weight_sparsity": summary["weight_sparsity"],
                     "param_sparsity": summary["param_sparsity"],
                     "layer_sparsity": layer_sparsity(model),
                     "state_dict_keys": sorted(model.state_dict())})
    dense = copy.deepcopy(base)
    config = stage.train_config(Context(data=data, progress=False, seed=seeds[0]))
    _, dense_seconds = timed(lambda: fit(dense, data, config, progress=False))
    return {"recipe": recipe.to_dict(), "runs": runs,
            "dense_finetune": {"seed": seeds[0], "epochs": config.epochs,
                               "seconds": dense_seconds,
                               "accuracy": test_set_accuracy(dense, data)}}


def nnzip_vs_torch(base: nn.Module, data: DataSplits, sparsity: float, repeats: int) -> dict:
    """(b) Global magnitude one-shot: nnzip against torch.nn.utils.prune, same sparsity."""
    def nnzip_once() -> tuple[nn.Module, float, dict]:
        model = copy.deepcopy(base)
        masks, seconds = timed(lambda: magnitude_prune(model, sparsity))
        return model, seconds, masks

    def torch_once() -> tuple[nn.Module, float]:
        model = copy.deepcopy(base)
        pairs = [(module, "weight") for module in model.modules()
                 if isinstance(module, nn.Linear | nn.Conv2d)]

        def prune_and_remove() -> None:
            torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured,
                                            amount=sparsity)
            for module, name in pairs:
                torch_prune.remove(module, name)  # a plain model, as nnzip leaves it

        _, seconds = timed(prune_and_remove)
        return model, seconds

    nnzip_runs = [nnzip_once() for _ in range(repeats)]
    torch_runs = [torch_once() for _ in range(repeats)]
    ours, theirs = nnzip_runs[0][0], torch_runs[0][0]
    names = prunable_names(ours)
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    same = sum(int(((ours_params[n] != 0) == (theirs_params[n] != 0)).sum()) for n in names)
    total = sum(ours_params[n].numel() for n in names)
    return {"sparsity": sparsity,
            "nnzip": {"accuracy": test_set_accuracy(ours, data),
                      "weight_sparsity": sparsity_summary(ours)["weight_sparsity"],
                      "seconds_median": statistics.median(run[1] for run in nnzip_runs)},
            "torch": {"accuracy": test_set_accuracy(theirs, data),
                      "weight_sparsity": sparsity_summary(theirs)["weight_sparsity"],
                      "seconds_median": statistics.median(run[1] for run in torch_runs)},
            "mask_agreement": same / total}


def compare_criteria(base: nn.Module, data: DataSplits, sparsity: float, seed: int) -> list[dict]:
    """(c) One-shot at one sparsity, no fine-tune, for every criterion."""
    rows = []
    for criterion, hessian in CRITERIA:
        model = copy.deepcopy(base)
        _, seconds = timed(lambda m=model, c=criterion, h=hessian: prune_unstructured(
            m, sparsity, criterion=c, hessian=h, data=data, seed=seed))
        label = f"{criterion} ({hessian})" if criterion == "hessian" else criterion
        rows.append({"criterion": label, "sparsity": sparsity_summary(model)["weight_sparsity"],
                     "accuracy": test_set_accuracy(model, data), "seconds": seconds,
                     "layer_sparsity": layer_sparsity(model)})
    return rows


def two_four(base: nn.Module, data: DataSplits, epochs: int, seed: int) -> dict:
    """(c) 2:4 one-shot, then a short masked fine-tune."""
    model = copy.deepcopy(base)
    names = prunable_names(model)
    masks, seconds = timed(lambda: nm_prune(model, 2, 4))
    oneshot = test_set_accuracy(model, data)
    config = TrainConfig(epochs=epochs, lr=1e-3, patience=None, seed=seed)
    _, finetune_seconds = timed(lambda: finetune_masked(model, data, masks, config))
    fold_masks(model, masks)
    return {"skipped_layers": [n for n in names if n not in masks],
            "weight_sparsity": sparsity_summary(model)["weight_sparsity"],
            "oneshot_accuracy": oneshot, "finetune_epochs": epochs,
            "finetuned_accuracy": test_set_accuracy(model, data), "prune_seconds": seconds,
            "finetune_seconds": finetune_seconds}


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


class Report:
    """Every table goes to the markdown lines and, given a console, to the console (rich), from
    the same cells."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console
        self.lines: list[str] = []

    def text(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        if self.console is not None:
            print_table(self.console, title, columns, rows)
        self.lines += [f"**{title}**", "", *markdown_table(columns, rows), ""]


def report_model(report: Report, arch: str, result: dict) -> None:
    base, target = result["baseline_accuracy"], TARGETS[arch]
    recipe = result["recipe"]
    dense = recipe["dense_finetune"]
    report.text(f"## {arch}", f"Baseline (cached, {result['baseline_source']}): test accuracy "
                f"{percent(base)}.")
    rows = [["baseline", "0.00%", "0.00%", percent(base), "-", "-"]]
    verdicts = []
    for run in recipe["runs"]:
        drop = base - run["accuracy"]
        verdicts.append(run["weight_sparsity"] >= target["sparsity"]
                        and drop <= target["max_drop"])
        rows.append([f"recipe, seed {run['seed']} (pruned + fine-tuned)",
                     percent(run["weight_sparsity"]), percent(run["param_sparsity"]),
                     percent(run["accuracy"]), f"{100 * drop:+.2f}", f"{run['seconds']:.1f}"])
    rows.append([f"dense fine-tune, seed {dense['seed']}, same {dense['epochs']} epochs",
                 "0.00%", "0.00%", percent(dense["accuracy"]),
                 f"{100 * (base - dense['accuracy']):+.2f}", f"{dense['seconds']:.1f}"])
    report.table(f"{arch} (a): recipe recipes/prune-{arch}.yaml vs a dense fine-tune", [
        "model", "weights removed", "params removed", "test acc", "drop (points)", "time (s)"],
        rows)
    first = recipe["runs"][0]
    report.text(f"Target: ≥ {percent(target['sparsity'])} of weights removed with a drop ≤ "
                f"{100 * target['max_drop']:.1f} points: **"
                f"{'MEETS' if all(verdicts) else 'MISSES'}** ({sum(verdicts)} of "
                f"{len(verdicts)} seeds). Per-layer sparsity (seed {first['seed']}): "
                + ", ".join(f"{n} {percent(s)}" for n, s in first["layer_sparsity"].items())
                + ". The saved model holds plain tensors: "
                + ", ".join(first["state_dict_keys"]) + ".")
    gap = first["accuracy"] - dense["accuracy"]
    report.text("Honest comparison: the same fine-tuning budget spent on the dense model gives "
                f"{percent(dense['accuracy'])}; the pruned model (seed {first['seed']}) is "
                f"{abs(100 * gap):.2f} points {'above' if gap >= 0 else 'below'} that control. "
                "Part of the gain over the baseline is extra training: the baseline saw only "
                "4 500 images and still improves with more epochs.")
    for comparison in result["vs_torch"]:
        ours, theirs = comparison["nnzip"], comparison["torch"]
        report.table(f"{arch} (b): global magnitude one-shot at {percent(comparison['sparsity'])}"
                     ", no fine-tune", ["method", "weights removed", "test acc", "time (ms)"], [
            ["nnzip magnitude_prune", percent(ours["weight_sparsity"]), percent(ours["accuracy"]),
             f"{1000 * ours['seconds_median']:.1f}"],
            ["torch global_unstructured (L1) + remove", percent(theirs["weight_sparsity"]),
             percent(theirs["accuracy"]), f"{1000 * theirs['seconds_median']:.1f}"]])
        report.text(f"Masks agree on {percent(comparison['mask_agreement'])} of the weights.")
    report.table(f"{arch} (c): criteria, one-shot at {percent(result['criteria_sparsity'])}, "
                 "no fine-tune", ["criterion", "weights removed", "test acc", "time (s)"],
                 [[row["criterion"], percent(row["sparsity"]), percent(row["accuracy"]),
                   f"{row['seconds']:.2f}"] for row in result["criteria"]])
    nm = result["two_four"]
    report.table(f"{arch} (c): 2:4 N:M one-shot + {nm['finetune_epochs']} fine-tune epochs", [
        "weights removed", "skipped layers", "acc one-shot", "acc fine-tuned", "time (s)"], [[
            percent(nm["weight_sparsity"]), ", ".join(nm["skipped_layers"]) or "none",
            percent(nm["oneshot_accuracy"]), percent(nm["finetuned_accuracy"]),
            f"{nm['prune_seconds'] + nm['finetune_seconds']:.1f}"]])
    curves = result["sensitivity"]
    grid = list(next(iter(curves.values())))  # sparsities: floats, or their text in the JSON
    report.table(f"{arch} (d): validation accuracy with one layer pruned alone (magnitude)",
                 ["layer", *[percent(float(s)) for s in grid]],
                 [[name, *[percent(curve[s]) for s in grid]] for name, curve in curves.items()])


def render_markdown(results: dict) -> str:
    machine = results["machine"]
    header = ["# Unstructured pruning on MNIST", "",
              f"Models start from the cached baselines; accuracy on the 10 000 MNIST test images; "
              f"sensitivity on the 500-image validation split. {results['threads']} torch "
              f"thread(s) on {machine['cpu_model']} ({machine['cores']} cores, shared), torch "
              f"{machine['torch_version']}; the whole run took {results['seconds']:.0f} s. "
              "Weights = every Linear/Conv weight; params also count the (dense) biases.", ""]
    report = Report()
    for arch, result in results["models"].items():
        report_model(report, arch, result)
    return "\n".join(header + report.lines)


def as_json(results: dict) -> dict:
    """The results as JSON holds them: plain types, sensitivities keyed by their text."""
    results_json = json.loads(json.dumps(results, default=str))
    for result in results_json["models"].values():
        result["sensitivity"] = {name: {f"{float(s):g}": acc for s, acc in curve.items()}
                                 for name, curve in result["sensitivity"].items()}
    return results_json


def main() -> None:
    parser = benchmark_parser(__doc__, ["lenet300", "lenet5"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the 2 cores are shared with other work)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="fine-tune seeds of the recipe runs (the first one for the rest)")
    parser.add_argument("--criteria-sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs for (b)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_mnist()
    console = Console()
    results: dict = {"benchmark": "prune_unstructured", "threads": args.threads,
                     "machine": machine_info(args.threads), "targets": TARGETS, "models": {}}
    started = time.perf_counter()
    for arch in args.archs:
        base = train_zoo_model(arch, data, cache_dir=args.cache_dir, progress=False).eval()
        result = {"baseline_accuracy": test_set_accuracy(base, data),
                  "baseline_source": str(args.cache_dir)}
        result["recipe"] = run_recipe(arch, base, data, args.seeds)
        recipe_sparsity = result["recipe"]["recipe"]["stages"][0]["options"]["sparsity"]
        result["vs_torch"] = [nnzip_vs_torch(base, data, s, args.repeats)
                              for s in sorted({args.criteria_sparsity, recipe_sparsity})]
        result["criteria_sparsity"] = args.criteria_sparsity
        result["criteria"] = compare_criteria(base, data, args.criteria_sparsity, args.seeds[0])
        result["two_four"] = two_four(base, data, epochs=2, seed=args.seeds[0])
        result["sensitivity"] = layer_sensitivity(base, data)
        results["models"][arch] = result
        report_model(Report(console), arch, result)  # the tables, as each model finishes
    results["seconds"] = time.perf_counter() - started
    # The markdown is rendered from the JSON, so the committed .md can be rebuilt from the .json.
    path = write_results("prune_unstructured", as_json(results), render_markdown)
    console.print(f"results: {path}")


if __name__ == "__main__":
    main()
