"""Train every zoo model on MNIST (cached) and measure it on the 10 000 test images.

Run: make bench (or .venv/bin/python benchmarks/zoo_mnist.py). Writes
benchmarks/results/zoo_mnist.{json,md,html}: the baselines every compression benchmark starts from.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from common import benchmark_parser
from nnzip.data import load_mnist
from nnzip.evaluate import EvalConfig, rich_table
from nnzip.pipeline import evaluate_models
from nnzip.train import DEFAULT_TRAINING, train_zoo_model

RESULTS = Path(__file__).resolve().parent / "results" / "zoo_mnist"
TARGETS = {"lenet5": 0.975, "lenet300": 0.95}  # issue 2's accuracy floors


def main() -> None:
    parser = benchmark_parser(__doc__, ["lenet5", "lenet300", "resnet8", "resnet20",
                                        "mobilenetv2"])
    args = parser.parse_args()
    console = Console()
    data = load_mnist()
    models, train_seconds = [], {}
    for arch in args.archs:
        started = time.perf_counter()
        models.append((arch, "baseline", train_zoo_model(arch, data, cache_dir=args.cache_dir)))
        train_seconds[arch] = round(time.perf_counter() - started, 1)
    report, paths = evaluate_models(
        models, data, out_dir=RESULTS, eval_config=EvalConfig(threads=1, repeats=100),
        extra={"benchmark": "zoo_mnist", "train_or_load_seconds": train_seconds,
               "training": {a: DEFAULT_TRAINING[a].model_dump() for a in args.archs}})
    console.print(rich_table(report))
    for entry in report["models"]:
        floor = TARGETS.get(entry["name"])
        if floor is not None:
            verdict = "meets" if entry["accuracy"] >= floor else "MISSES"
            console.print(f"{entry['name']}: test accuracy {100 * entry['accuracy']:.2f}% "
                          f"{verdict} the {100 * floor:.1f}% target")
    console.print(f"results: {paths['md']}")


if __name__ == "__main__":
    main()
