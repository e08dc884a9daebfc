"""Is nnzip's latency measurement stable? Time the same model twice in one run and compare.

Compression claims are latency *ratios* measured in one run, so the measurement itself must repeat:
two measurements of the same model must agree within 15 % at p50. nnzip times compared models
interleaved (``compare_latency``), which is what this checks; the naive back-to-back measurement
is shown beside it to show why. Run: make bench. Writes benchmarks/results/latency_stability.*.
"""

from __future__ import annotations

import torch
from rich.console import Console

from common import benchmark_parser, machine_line, markdown_table, print_table, write_results
from nnzip.data import load_mnist
from nnzip.evaluate import EvalConfig, compare_latency, machine_info, measure_latency
from nnzip.train import train_zoo_model

TOLERANCE = 0.15
COLUMNS = ["model", "batch", "1st p50 (ms)", "2nd p50 (ms)", "1st p95 (ms)", "2nd p95 (ms)",
           "p50 ratio", "stable", "back-to-back ratio"]


def table_rows(report: dict) -> list[list[str]]:
    return [[row["model"], str(row["batch"]), f"{row['first_p50_ms']:.3f}",
             f"{row['second_p50_ms']:.3f}", f"{row['first_p95_ms']:.3f}",
             f"{row['second_p95_ms']:.3f}", f"{row['p50_ratio']:.3f}",
             "yes" if row["stable"] else "NO", f"{row['back_to_back_p50_ratio']:.3f}"]
            for row in report["rows"]]


def render_markdown(report: dict) -> str:
    lines = ["# Latency stability", "",
             f"Same model timed twice in one run, interleaved in rounds as nnzip times compared "
             f"models; {report['threads']} torch thread, {report['warmup']} warm-up runs, "
             f"{report['repeats']} timed runs per measurement. Stable means the two p50s agree "
             f"within {report['tolerance']:.0%}. The last column is the naive alternative: two "
             "measurements one after the other.", "",
             *markdown_table(COLUMNS, table_rows(report)), "", machine_line(report["machine"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__, ["lenet5", "resnet8"])
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
    path = write_results("latency_stability", result, render_markdown)
    console = Console()
    print_table(console, f"Same model timed twice in one run (p50 within {TOLERANCE:.0%}?)",
                COLUMNS, table_rows(result))
    console.print(f"all stable: {result['all_stable']}  ->  {path}")


if __name__ == "__main__":
    main()
