"""Generalization under shift on MNIST: which compression methods keep it, with intervals.

The cached LeNet-5 (runs/cache) compressed by six of nnzip's committed methods, each as a recipe:
pruned 93 % (recipes/prune-lenet5.yaml), W8A8 static PTQ, W4 weight-only GPTQ, binary weights (QAT,
straight-through estimator), Deep Compression (recipes/deep-compression.yaml, .nnz) and a distilled
student (lenet5_small, Hinton KD), beside a control: the same LeNet-5 fine-tuned as long as the
pruning recipe fine-tunes, nothing removed. Each is measured on the clean test split (10 000
images), on every image corruption of :mod:`nnzip.evaluate.shift` at severities 1-3 (on the first
``--samples`` test images; the same images for every model) and on scikit-learn's 8x8 digits laid
out as MNIST's (1 797 images, other writers and scanner).

Every difference against the uncompressed LeNet-5 is paired (the same images) with a 95 %
bootstrap interval and McNemar's exact p-value (:mod:`nnzip.evaluate.confidence`); a method with
training in it runs with ``--seeds`` seeds, reported as mean ± std (post-training quantization
too: its calibration batches are drawn per seed). "Corrupted" pools every corruption at every
severity (18 sets).

Run: .venv/bin/python benchmarks/shift_mnist.py [--seeds 0 1 2] [--samples 5000] [--only NAME]
(``--render-only`` rewrites the .md from the committed .json). Results are rewritten after every
method and seed, so an interrupted run keeps what it finished; a rerun skips what the .json has.
Writes benchmarks/results/shift_mnist.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

from common import (
    RESULTS,
    benchmark_parser,
    machine_line,
    markdown_table,
    quiet_single_thread,
    rewrite_markdown,
    write_results,
)
from nnzip.data import load_mnist
from nnzip.data.digits import digits_like_mnist
from nnzip.evaluate import EvalConfig, machine_info
from nnzip.evaluate.accuracy import predict_logits
from nnzip.evaluate.confidence import (
    accuracy_difference,
    correct_per_sample,
    format_difference,
    seed_summary,
)
from nnzip.evaluate.shift import IMAGE_CORRUPTIONS, corrupt, shift_key
from nnzip.pipeline import compress
from nnzip.recipe import load_recipe, parse_recipe
from nnzip.train import train_zoo_model

ROOT = Path(__file__).resolve().parent.parent
NAME = "shift_mnist"
SEVERITIES = (1, 2, 3)
#: The methods, as recipes: the committed recipe files where there is one, else one stage.
METHODS: dict[str, Path | dict] = {
    "pruned 93 %": ROOT / "recipes" / "prune-lenet5.yaml",
    "W8A8 static PTQ": {"stages": [{"quantize": {}}]},
    "W4 weight-only GPTQ": {"stages": [{"quantize": {"weight_bits": 4, "activation_bits": None,
                                                     "rounding": "gptq"}}]},
    "binary weights (QAT)": {"stages": [{"qat": {"weight_format": "binary", "lr": 1.0e-3,
                                                 "finetune_epochs": 3}}]},
    "Deep Compression .nnz": ROOT / "recipes" / "deep-compression.yaml",
    "distilled student": {"stages": [{"distill": {"student": "lenet5_small",
                                                  "finetune_epochs": 15, "lr": 2.0e-3}}]},
    # The control: the pruning recipe's own fine-tune (16 epochs, lr 2e-3, the same augmented
    # training images) with nothing removed, so extra training is not credited to a method.
    "dense fine-tune (control)": {"stages": [{"finetune": {"epochs": 16, "lr": 2.0e-3}}]},
}
CONTROL = "dense fine-tune (control)"
#: What compress measures of each model: only size (the benchmark predicts on every set itself).
MEASURE = EvalConfig(measure_latency=False, noise_sigmas=(), fgsm_epsilons=(),
                     robustness_samples=1, shift_severities=())


def recipe_of(method: str):
    source = METHODS[method]
    if isinstance(source, Path):
        return load_recipe(source)
    return parse_recipe({"name": method, **source}, f"<{method}>")


def shift_sets(data, samples: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every evaluation set by key: clean, each corruption at each severity, the 8x8 digits."""
    x, y = data.test.tensors
    sets = {"clean": (x, y)}
    head, labels = x[:samples], y[:samples]
    for kind in IMAGE_CORRUPTIONS:
        for severity in SEVERITIES:
            sets[shift_key(kind, severity)] = (corrupt(head, kind, severity, seed=0), labels)
    sets["digits8x8"] = digits_like_mnist(x.shape[-1])
    return sets


def correct(model: torch.nn.Module, sets: dict) -> dict[str, np.ndarray]:
    """Per set, which samples ``model`` classifies right (booleans)."""
    return {key: correct_per_sample(predict_logits(model, DataLoader(TensorDataset(x, y),
                                                                     batch_size=1024)), y)
            for key, (x, y) in sets.items()}


def pooled(marks: dict[str, np.ndarray], kinds=IMAGE_CORRUPTIONS) -> np.ndarray:
    """The corrupted sets' marks as (images, sets): one row per test image, since the sets are
    the same images corrupted several ways, and the image is the unit the interval resamples
    (:func:`accuracy_difference` then takes each image's mean and a permutation test)."""
    return np.stack([marks[shift_key(k, s)] for k in kinds for s in SEVERITIES], axis=1)


def measure(marks: dict, baseline: dict) -> dict:
    """Accuracy on clean / corrupted (pooled) / digits and per corruption kind, each with its
    paired difference against the baseline."""
    groups = {"clean": (marks["clean"], baseline["clean"]),
              "corrupted": (pooled(marks), pooled(baseline)),
              "digits8x8": (marks["digits8x8"], baseline["digits8x8"])}
    for kind in IMAGE_CORRUPTIONS:
        groups[kind] = (pooled(marks, (kind,)), pooled(baseline, (kind,)))
    return {key: {"accuracy": float(model.mean()),
                  "confidence": accuracy_difference(model, reference)}
            for key, (model, reference) in groups.items()}


def _mean_std(runs: list[dict], group: str, what: str) -> str:
    """Mean ± std over seeds (the value alone for one seed)."""
    values = [run["groups"][group]["accuracy"] if what == "accuracy"
              else run["groups"][group]["confidence"]["difference"] for run in runs]
    summary = seed_summary(values)
    scale, unit, sign = (100, " %", "") if what == "accuracy" else (1, "", "+")
    spread = f" ± {scale * summary.std:.2f}" if summary.count > 1 else ""
    return f"{scale * summary.mean:{sign}.2f}{spread}{unit}"


def render(report: dict) -> str:
    base = report["baseline"]
    methods = {}
    for run in report["runs"]:
        methods.setdefault(run["method"], []).append(run)
    rows, kinds = [], []
    base_row = ["LeNet-5 (fp32)", f"{base['size_bytes']:,}", "1"]
    for group in ("clean", "corrupted", "digits8x8"):
        base_row += [f"{100 * base['groups'][group]:.2f} %", ""]
    rows.append(base_row)
    for method, runs in methods.items():
        first = min(runs, key=lambda r: r["seed"])
        row = [method, f"{first['size_bytes']:,}", str(len(runs))]
        for group in ("clean", "corrupted", "digits8x8"):
            row += [_mean_std(runs, group, "accuracy"),
                    format_difference(first["groups"][group]["confidence"])
                    + (f" (mean {_mean_std(runs, group, 'difference')})" if len(runs) > 1
                       else "")]
        rows.append(row)
        kinds.append([method, *(format_difference(first["groups"][kind]["confidence"])
                                for kind in IMAGE_CORRUPTIONS)])
    verdicts = []
    for method, runs in methods.items():
        clean = np.mean([r["groups"]["clean"]["confidence"]["difference"] for r in runs])
        shifted = np.mean([r["groups"]["corrupted"]["confidence"]["difference"] for r in runs])
        digits = np.mean([r["groups"]["digits8x8"]["confidence"]["difference"] for r in runs])
        verdicts.append(f"- **{method}**: clean {clean:+.2f}, corrupted {shifted:+.2f}, 8×8 "
                        f"digits {digits:+.2f} points (mean over seeds)"
                        + (f"; under shift it loses {shifted - clean:+.2f} points more than "
                           "on clean data" if shifted - clean < -0.3 else ""))
    control = methods.get(CONTROL)
    if control:
        means = {g: np.mean([r["groups"][g]["confidence"]["difference"] for r in control])
                 for g in ("clean", "corrupted", "digits8x8")}
        verdicts.append(
            f"\nThe control, fine-tuned as long as the pruning recipe with nothing removed, moves "
            f"by {means['clean']:+.2f} clean, {means['corrupted']:+.2f} corrupted and "
            f"{means['digits8x8']:+.2f} on the 8×8 digits: that much of a fine-tuned method's "
            "change is the extra (augmented) training, not the compression; compare the "
            "fine-tuned methods with the control, the post-training ones with the fp32 model.")
    return "\n".join([
        "# Generalization under shift: LeNet-5 on MNIST, six compression methods", "",
        f"Clean: the 10 000 MNIST test images. Corrupted: the first {report['samples']:,} test "
        "images under each of rotation, translation, Gaussian blur, contrast, elastic "
        f"deformation and pixel noise at severities {', '.join(map(str, SEVERITIES))} "
        "(`nnzip.evaluate.shift`, seed 0; pooled, 18 sets, each image's share of its 18 versions "
        "classified right resampled as one unit, with a paired permutation test). 8×8 "
        "digits: scikit-learn's 1 797 "
        "digits (other writers, another scanner) laid out as MNIST's. Differences are the "
        "compressed model minus the fp32 LeNet-5 on the same images, in points, with a 95 % "
        "paired bootstrap interval (seed 0's model); `≈` marks a difference within noise "
        "(the interval contains 0 or the test — McNemar's exact test on clean and digits — does "
        "not reject at 5 %). Accuracies "
        f"and mean differences are over seeds {', '.join(map(str, report['seeds']))}.", "",
        *markdown_table(["method", "bytes", "seeds", "clean", "Δ clean [95 % CI]",
                         "corrupted", "Δ corrupted [95 % CI]", "8×8 digits",
                         "Δ digits [95 % CI]"], rows), "",
        "## Difference per corruption (seed 0, severities 1–3 pooled, points)", "",
        *markdown_table(["method", *IMAGE_CORRUPTIONS], kinds), "",
        "## Which methods keep generalization", "", *verdicts, "",
        f"Budget: {report['seconds'] / 60:.1f} min of wall-clock (compression, fine-tuning and "
        "prediction), 1 torch thread.", "",
        machine_line(report["machine"], ", 1 thread"), ""])


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=5000,
                        help="test images per corrupted set (the first N)")
    parser.add_argument("--only", nargs="+", default=None, choices=list(METHODS))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    console = Console(width=200)
    if args.render_only:
        console.print(rewrite_markdown(NAME, render))
        return
    quiet_single_thread()
    data = load_mnist(seed=0)
    teacher = train_zoo_model("lenet5", data, cache_dir=args.cache_dir, progress=False)
    sets = shift_sets(data, args.samples)
    baseline = correct(teacher, sets)
    from nnzip.evaluate.size import artifact_bytes

    path = RESULTS / f"{NAME}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    same = previous.get("samples") == args.samples
    report = {"benchmark": NAME, "seeds": args.seeds, "samples": args.samples,
              "machine": machine_info(1), "seconds": previous.get("seconds", 0.0) if same else 0.0,
              "baseline": {"size_bytes": artifact_bytes(teacher),
                           "groups": {"clean": float(baseline["clean"].mean()),
                                      "corrupted": float(pooled(baseline).mean()),
                                      "digits8x8": float(baseline["digits8x8"].mean())}},
              "runs": previous.get("runs", []) if same else []}
    done = {(r["method"], r["seed"]) for r in report["runs"]}
    for seed in args.seeds:
        for method in args.only or METHODS:
            if (method, seed) in done:
                continue
            started = time.perf_counter()
            result = compress(teacher, recipe_of(method), data, name="lenet5",
                              eval_config=MEASURE, seed=seed, progress=False)
            marks = correct(result.model, sets)
            report["runs"].append({"method": method, "seed": seed,
                                   "size_bytes": result.report["models"][-1]["size_bytes"],
                                   "groups": measure(marks, baseline)})
            report["seconds"] += time.perf_counter() - started
            write_results(NAME, report, render)
            console.print(f"{method}, seed {seed}: clean "
                          f"{100 * report['runs'][-1]['groups']['clean']['accuracy']:.2f} %, "
                          f"corrupted "
                          f"{100 * report['runs'][-1]['groups']['corrupted']['accuracy']:.2f} %")
    console.print(write_results(NAME, report, render).read_text())


if __name__ == "__main__":
    main()
