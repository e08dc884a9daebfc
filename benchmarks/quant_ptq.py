"""Post-training quantization on the zoo: accuracy and artifact bytes per scheme and observer.

For each zoo model (trained on MNIST, cached in runs/cache) this runs nnzip's static PTQ
(BatchNorm folded, 8 calibration batches of training data) with several activation observers at
W8A8, and weight-only / W4A8 variants, and measures accuracy on the 10 000 MNIST test images and
the bytes of the quantized state dict (bit-packed integer weights) against the fp32 one. This is
simulated integer arithmetic; ONNX Runtime execution and latency come with the runtime work of
issue 4. Run: ``python benchmarks/quant_ptq.py``. Writes benchmarks/results/quant_ptq.{md,json}.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from common import benchmark_parser, machine_line, markdown_table, print_table, run_each
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate import artifact_bytes, machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.quant import QuantConfig, quantize_static
from nnzip.train import train_zoo_model

SCHEMES: dict[str, QuantConfig] = {
    "W8A8 min-max": QuantConfig(),
    "W8A8 percentile 99.99": QuantConfig(observer="percentile"),
    "W8A8 KL (entropy)": QuantConfig(observer="kl"),
    "W8A8 MSE": QuantConfig(observer="mse"),
    "W8A8 per-tensor weights": QuantConfig(weight_granularity="tensor"),
    "W8 weight-only": QuantConfig(activation_bits=None),
    "W4A8 min-max": QuantConfig(weight_bits=4),
    "W4A8 MSE weights": QuantConfig(weight_bits=4, weight_range="mse", observer="mse"),
    "W4 weight-only MSE": QuantConfig(weight_bits=4, weight_range="mse", activation_bits=None),
}
TARGETS = {"int8_drop_points": 0.3, "int8_size_fraction": 0.27, "int4_size_fraction": 0.15}


def test_accuracy(model, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=1000)),
                    data.test.tensors[1])


def run_model(arch: str, data, cache_dir: Path, console: Console) -> dict:
    dense = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    dense_accuracy, dense_bytes = test_accuracy(dense, data), artifact_bytes(dense)
    batches = calibration_batches(data, 8)
    rows = []
    for label, config in SCHEMES.items():
        started = time.perf_counter()
        quantized = quantize_static(dense, batches, config)
        seconds = time.perf_counter() - started
        acc, size = test_accuracy(quantized, data), artifact_bytes(quantized)
        rows.append({"scheme": label, "accuracy": acc,
                     "drop_points": 100 * (dense_accuracy - acc), "bytes": size,
                     "size_fraction": size / dense_bytes, "seconds": seconds})
        console.print(f"  {arch} {label}: {100 * acc:.2f}% ({rows[-1]['drop_points']:+.2f} "
                      f"points drop), {100 * size / dense_bytes:.1f}% of fp32 bytes")
    return {"arch": arch, "fp32_accuracy": dense_accuracy, "fp32_bytes": dense_bytes,
            "rows": rows}


COLUMNS = ["scheme", "accuracy", "drop (points)", "bytes", "of fp32", "PTQ s"]


def table_rows(result: dict) -> list[list[str]]:
    return [[row["scheme"], f"{100 * row['accuracy']:.2f}%", f"{row['drop_points']:.2f}",
             f"{row['bytes']:,}", f"{100 * row['size_fraction']:.1f}%", f"{row['seconds']:.1f}"]
            for row in result["rows"]]


def render_markdown(report: dict) -> str:
    lines = ["# Post-training quantization (simulated integer arithmetic) on the zoo", "",
             "Static PTQ: BatchNorm folded into the convolutions, activation ranges calibrated "
             "on 8 batches of 64 training images, weights per output channel (symmetric, "
             "narrow range) unless said, activations per tensor (asymmetric, unsigned). "
             "Accuracy on the 10 000 MNIST test images; bytes are the quantized state dict as "
             "safetensors (integer weights bit-packed, fp32 scales and biases). Issue 4 "
             "targets: int8 drop ≤ 0.3 points, int8 ≤ 27 % and 4-bit ≤ 15 % of the fp32 bytes.",
             ""]
    for result in report["models"]:
        lines += [f"## {result['arch']}: fp32 {100 * result['fp32_accuracy']:.2f}%, "
                  f"{result['fp32_bytes']:,} bytes", "",
                  *markdown_table(COLUMNS, table_rows(result)), ""]
    lines.append(machine_line(report["machine"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__, ["lenet5", "resnet8", "resnet20", "mobilenetv2"])
    args = parser.parse_args()
    console = Console(width=140)
    data = load_mnist()
    report = {"benchmark": "quant_ptq", "machine": machine_info(1), "models": []}
    run_each("quant_ptq", report, args.archs,
             lambda arch: run_model(arch, data, args.cache_dir, console), render_markdown)
    for result in report["models"]:
        print_table(console, f"{result['arch']} (fp32 {100 * result['fp32_accuracy']:.2f}%)",
                    COLUMNS, table_rows(result), left=["scheme"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    main()
