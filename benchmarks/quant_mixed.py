"""Mixed precision against uniform bit widths at the same budget: W?A8 on the zoo.

For each zoo model (trained on MNIST, cached in runs/cache) and each weight range (min-max and
MSE-optimal), nnzip measures the per-layer bit sensitivity once (each layer alone at 2, 3, 4 and
8 bits, output KL on the 500 validation images), then for an average budget of 4 and of 3 weight
bits allocates the bits exactly and quantizes statically (activations int8, calibrated on 8
training batches). Uniform W4A8 / W3A8 (and W8A8 for reference) use the same settings. Accuracy
is on the 10 000 MNIST test images; bytes are the quantized state dict as safetensors (bit-packed
integer weights, fp32 scales and biases); seconds include the sensitivity pass for mixed rows.
Simulated integer arithmetic. Run: ``python benchmarks/quant_mixed.py``. Writes
benchmarks/results/quant_mixed.{md,json}.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from common import benchmark_parser, markdown_table, print_table, run_each
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate import artifact_bytes, machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.quant import QuantConfig, allocate_bits, bit_sensitivity, quantize_static
from nnzip.quant.mixed import mean_weight_bits, packed_weight_bytes
from nnzip.train import train_zoo_model

CANDIDATE_BITS = (2, 3, 4, 8)
BUDGETS = (4.0, 3.0)
WEIGHT_RANGES = ("minmax", "mse")


def test_accuracy(model, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=1000)),
                    data.test.tensors[1])


def _row(label: str, weight_range: str, layer_bits: dict, params: dict, quantized, data,
         dense: dict, seconds: float) -> dict:
    acc, size = test_accuracy(quantized, data), artifact_bytes(quantized)
    return {"scheme": label, "weight_range": weight_range,
            "average_bits": mean_weight_bits(layer_bits, params),
            "accuracy": acc, "drop_points": 100 * (dense["accuracy"] - acc),
            "weight_bytes": packed_weight_bytes(layer_bits, params), "bytes": size,
            "size_fraction": size / dense["bytes"], "seconds": seconds, "layer_bits": layer_bits}


def run_model(arch: str, data, cache_dir: Path, console: Console) -> dict:
    model = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    dense = {"accuracy": test_accuracy(model, data), "bytes": artifact_bytes(model)}
    calibration = calibration_batches(data, 8)
    validation = list(data.loader("val", batch_size=250))
    rows, sensitivity_seconds = [], {}
    for weight_range in WEIGHT_RANGES:
        config = QuantConfig(weight_range=weight_range)
        started = time.perf_counter()
        sensitivity = bit_sensitivity(model, validation, CANDIDATE_BITS, config)
        sensitivity_seconds[weight_range] = time.perf_counter() - started
        params = sensitivity.params
        for budget in BUDGETS:
            started = time.perf_counter()
            bits = allocate_bits(sensitivity.kl, params, average_bits=budget)
            quantized = quantize_static(model, calibration, replace(config, layer_bits=bits))
            seconds = time.perf_counter() - started + sensitivity_seconds[weight_range]
            rows.append(_row(f"mixed, average ≤ {budget:g} bits", weight_range, bits, params,
                             quantized, data, dense, seconds))
        for uniform in (8, *(int(b) for b in BUDGETS)):
            started = time.perf_counter()
            quantized = quantize_static(model, calibration, replace(config, weight_bits=uniform))
            seconds = time.perf_counter() - started
            rows.append(_row(f"uniform W{uniform}A8", weight_range, dict.fromkeys(params,
                             uniform), params, quantized, data, dense, seconds))
        for row in rows[-len(BUDGETS) - 3:]:
            console.print(f"  {arch} {row['scheme']} ({weight_range}): "
                          f"{100 * row['accuracy']:.2f}% ({row['drop_points']:+.2f} points), "
                          f"{row['average_bits']:.2f} bits, {row['bytes']:,} bytes")
    return {"arch": arch, "fp32_accuracy": dense["accuracy"], "fp32_bytes": dense["bytes"],
            "sensitivity_seconds": sensitivity_seconds, "rows": rows}


COLUMNS = ["scheme", "weights", "avg bits", "accuracy", "drop (points)", "weight bytes",
           "bytes", "of fp32", "seconds"]


def table_rows(result: dict) -> list[list[str]]:
    return [[row["scheme"], row["weight_range"], f"{row['average_bits']:.2f}",
             f"{100 * row['accuracy']:.2f}%", f"{row['drop_points']:.2f}",
             f"{row['weight_bytes']:,}", f"{row['bytes']:,}",
             f"{100 * row['size_fraction']:.1f}%", f"{row['seconds']:.1f}"]
            for row in result["rows"]]


def _bits_lines(result: dict) -> list[str]:
    lines = []
    for row in result["rows"]:
        if row["scheme"].startswith("mixed"):
            bits = ", ".join(f"{name} {b}" for name, b in row["layer_bits"].items())
            lines.append(f"- {row['scheme']} ({row['weight_range']}): {bits}")
    return lines


def render_markdown(report: dict) -> str:
    lines = ["# Mixed precision vs uniform bits (W?A8, simulated integer arithmetic) on the zoo",
             "", __doc__.split("\n\n", 1)[1].split("Run:")[0].replace("\n", " ").strip(), ""]
    for result in report["models"]:
        lines += [f"## {result['arch']}: fp32 {100 * result['fp32_accuracy']:.2f}%, "
                  f"{result['fp32_bytes']:,} bytes", "",
                  *markdown_table(COLUMNS, table_rows(result)), "",
                  "Bits chosen per layer:", "", *_bits_lines(result), ""]
    machine = report["machine"]
    lines += [f"Machine: {machine['cpu_model']}, {machine['cores']} cores, one torch thread, "
              f"torch {machine['torch_version']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = benchmark_parser(__doc__, ["lenet5", "resnet8"]).parse_args()
    console = Console(width=140)
    data = load_mnist()
    report = {"benchmark": "quant_mixed", "machine": machine_info(1), "models": []}
    run_each("quant_mixed", report, args.archs,
             lambda arch: run_model(arch, data, args.cache_dir, console), render_markdown)
    for result in report["models"]:
        print_table(console, f"{result['arch']} (fp32 {100 * result['fp32_accuracy']:.2f}%)",
                    COLUMNS, table_rows(result), left=["scheme", "weights"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    main()
