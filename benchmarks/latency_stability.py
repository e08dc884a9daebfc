"""Is nnzip's latency measurement stable? Time the same model twice in one run and compare.

Compression claims are latency *ratios* measured in one run, so the measurement itself must repeat:
two measurements of the same model must agree within 15 % at p50. nnzip times compared models
interleaved (``compare_latency``), which is what this checks; the naive back-to-back measurement
is shown beside it to show why. Run: make bench. Writes benchmarks/results/latency_stability.*.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nnzip.atomic import write_text
from nnzip.data import load_mnist
from nnzip.evaluate import EvalConfig, compare_latency, machine_info, measure_latency
from nnzip.train import train_zoo_model

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--archs", nargs="+", default=["lenet5", "resnet8"])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    config = EvalConfig(threads=1, warmup=20, repeats=args.repeats)
    data = load_mnist()
    rows = []
    for arch in args.archs:
        model = train_zoo_model(arch, data, cache_dir=args.cache_dir, progress=False).eval()
        for batch in config.batch_sizes:
            first, second = compare_latency([model, model], data.input_shape, batch,
                                            config.threads, config.warmup, config.repeats)
            back_to_back = [measure_latency(model, data.input_shape, batch, config.threads,
                                            config.warmup, config.repeats) for _ in range(2)]
            ratio = second["p50"] / first["p50"]
            rows.append({"model": arch, "batch": batch, "first_p50_ms": first["p50"],
                         "second_p50_ms": second["p50"], "first_p95_ms": first["p95"],
                         "second_p95_ms": second["p95"], "p50_ratio": ratio,
                         "stable": abs(ratio - 1) <= TOLERANCE,
                         "back_to_back_p50_ratio": back_to_back[1]["p50"] / back_to_back[0]["p50"]})
    result = {"benchmark": "latency_stability", "tolerance": TOLERANCE,
              "threads": config.threads, "warmup": config.warmup, "repeats": config.repeats,
              "torch_threads_default": torch.get_num_threads(),
              "machine": machine_info(config.threads), "rows": rows,
              "all_stable": all(row["stable"] for row in rows)}

    table = Table(title=f"Same model timed twice in one run (p50 within {TOLERANCE:.0%}?)")
    for column in ("model", "batch", "1st p50 ms", "2nd p50 ms", "1st p95 ms", "2nd p95 ms",
                   "p50 ratio", "stable", "back-to-back ratio"):
        table.add_column(column, justify="right")
    lines = ["# Latency stability", "",
             f"Same model timed twice in one run, interleaved in rounds as nnzip times compared "
             f"models; {config.threads} torch thread, {config.warmup} warm-up runs, "
             f"{config.repeats} timed runs per measurement. Stable means the two p50s agree "
             f"within {TOLERANCE:.0%}. The last column is the naive alternative: two "
             "measurements one after the other.", "",
             "| model | batch | 1st p50 (ms) | 2nd p50 (ms) | 1st p95 (ms) | 2nd p95 (ms) | "
             "p50 ratio | stable | back-to-back ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["model"], str(row["batch"]), f"{row['first_p50_ms']:.3f}",
                 f"{row['second_p50_ms']:.3f}", f"{row['first_p95_ms']:.3f}",
                 f"{row['second_p95_ms']:.3f}", f"{row['p50_ratio']:.3f}",
                 "yes" if row["stable"] else "NO", f"{row['back_to_back_p50_ratio']:.3f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    machine = result["machine"]
    lines += ["", f"Machine: {machine['cpu_model']}, {machine['cores']} cores, "
                  f"torch {machine['torch_version']}."]
    write_text(RESULTS / "latency_stability.json", json.dumps(result, indent=2))
    write_text(RESULTS / "latency_stability.md", "\n".join(lines) + "\n")
    Console().print(table)
    Console().print(f"all stable: {result['all_stable']}  ->  {RESULTS / 'latency_stability.md'}")


if __name__ == "__main__":
    main()
