"""Search LeNet-5's Deep-Compression space on MNIST: the measured front vs the hand-written recipe.

The cached LeNet-5 baseline (runs/cache) is searched with ``recipes/search-lenet5.yaml``
(prune → cluster or weight-only quantize → optional Huffman encode), objectives accuracy and
.nnz bytes, constraint accuracy drop ≤ 0.5 points, NSGA-II, seeded; trials are chosen on the
validation split and the front re-measured once on the 10 000 test images. The reference is the
hand-written recipes/deep-compression.yaml as measured in
benchmarks/results/share_deep_compression.json (issue 17's target: a front point at least as
small at ≤ 0.2 points drop).
Run: .venv/bin/python benchmarks/search_lenet5.py [--trials 24] [--workers 1] [--out DIR]
(``--render-only`` rewrites the .md from the committed .json). A rerun with the same --out
resumes the study; a larger --trials extends it. Writes benchmarks/results/search_lenet5.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

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
from nnzip.evaluate import machine_info
from nnzip.search import search
from nnzip.train import train_zoo_model

ROOT = Path(__file__).resolve().parent.parent
NAME = "search_lenet5"
SPACE = ROOT / "recipes" / "search-lenet5.yaml"
#: Issue 17's done-when: a front point at most the reference's bytes at most this drop (points).
MAX_DROP_POINTS = 0.2


def reference() -> dict:
    """The hand-written Deep Compression recipe on LeNet-5, as its benchmark measured it."""
    measured = json.loads((RESULTS / "share_deep_compression.json").read_text())
    lenet5 = measured["models"]["lenet5"]
    last = lenet5["recipe"]["steps"][-1]
    return {"size_bytes": last["size_bytes"], "accuracy": last["accuracy"],
            "baseline_accuracy": lenet5["baseline_accuracy"]}


def render(report: dict) -> str:
    ref = report["reference"]
    rows = []
    for point in report["front"]:
        test = point["test"] or {}
        rows.append([str(point["number"]), " → ".join(point["stages"]),
                     f"{100 * point['values']['accuracy']:.2f}%",
                     f"{100 * test.get('accuracy', float('nan')):.2f}%",
                     f"{test.get('accuracy_drop', float('nan')):+.2f}",
                     f"{test.get('size_bytes', 0):,}",
                     f"{report['fp32_bytes'] / test['size_bytes']:.1f}×"
                     if test.get("size_bytes") else "",
                     ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float)
                               else f"{k.split('.', 1)[-1]}={v}"
                               for k, v in point["params"].items())])
    best = report["best_within_drop"]
    verdict = ("**MEETS**: trial {n}, {b:,} bytes at {d:+.2f} points".format(
        n=best["number"], b=best["test"]["size_bytes"], d=best["test"]["accuracy_drop"])
        if best and best["test"]["size_bytes"] <= ref["size_bytes"]
        else "**MISSES**" + (f" (smallest within the drop: trial {best['number']}, "
                             f"{best['test']['size_bytes']:,} bytes)" if best else
                             " (no front point within the drop)"))
    states = report["trials_by_state"]
    return "\n".join([
        "# Search: LeNet-5 on MNIST, the measured front of Deep-Compression recipes", "",
        f"Space `recipes/search-lenet5.yaml`; objectives accuracy (max) and bytes of the real "
        f"artifact (min); constraint {', '.join(report['constraints'])}; NSGA-II, seed "
        f"{report['seed']}; {report['workers']} worker(s). Budget: {report['trials']} finished "
        f"trials ({states.get('complete', 0)} complete, {states.get('pruned', 0)} stopped "
        f"after the short rung, {states.get('fail', 0)} failed/interrupted), "
        f"{report['seconds'] / 60:.1f} min of wall-clock in this run (a resumed run counts only "
        "its own time). Trials chosen on the 500 validation images; the front re-measured "
        "once on the 10 000 test images.", "",
        f"Baseline test accuracy {100 * ref['baseline_accuracy']:.2f}%, fp32 safetensors "
        f"{report['fp32_bytes']:,} bytes. Hand-written recipes/deep-compression.yaml: "
        f"{ref['size_bytes']:,} bytes at {100 * (ref['baseline_accuracy'] - ref['accuracy']):+.2f}"
        " points (benchmarks/results/share_deep_compression.md).", "",
        "## The front (test split)", "",
        *markdown_table(["trial", "stages", "val acc", "test acc", "drop (points)", "bytes",
                         "vs fp32", "parameters"], rows), "",
        f"Target: a front point ≤ {ref['size_bytes']:,} bytes at ≤ {MAX_DROP_POINTS} points "
        f"drop: {verdict}.", "",
        machine_line(report["machine"], ", 1 thread"), ""])


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "search-lenet5")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    console = Console()
    if args.render_only:
        console.print(rewrite_markdown(NAME, render))
        return
    quiet_single_thread()
    data = load_mnist(seed=0)
    model = train_zoo_model("lenet5", data, cache_dir=args.cache_dir, progress=False)
    from nnzip.evaluate.size import artifact_bytes

    started = time.perf_counter()
    result = search(model, data, SPACE, out=args.out, objectives=["accuracy", "bytes"],
                    constraints=["accuracy_drop<=0.5"], trials=args.trials,
                    workers=args.workers, seed=0, name="lenet5")
    seconds = time.perf_counter() - started
    summary = json.loads(result.paths["json"].read_text())
    front = sorted(summary["points"], key=lambda p: p["values"]["bytes"])
    within = [p for p in front if p.get("test") and p["test"].get("accuracy_drop") is not None
              and p["test"]["accuracy_drop"] <= MAX_DROP_POINTS]
    report = {"benchmark": NAME, "seed": 0, "trials": args.trials, "workers": args.workers,
              "seconds": seconds, "machine": machine_info(1), "reference": reference(),
              "fp32_bytes": artifact_bytes(model), "constraints": summary["constraints"],
              "trials_by_state": summary["trials_by_state"], "front": front,
              "best_within_drop": min(within, key=lambda p: p["test"]["size_bytes"])
              if within else None}
    console.print(write_results(NAME, report, render))


if __name__ == "__main__":
    main()
