"""Quantization-aware training and low-bit weights on the zoo: accuracy, bytes, training time.

For each zoo model (trained on MNIST, cached in runs/cache) this compares, at 8-bit activations:
4-bit affine weights after PTQ, after QAT with the straight-through estimator and after QAT with
learned step sizes (LSQ, Esser et al. 2020); binary (XNOR-Net's BWN) and ternary (TWN) weights
after PTQ and after QAT (STE and LSQ); and 4-bit power-of-two weights (Miyashita et al. 2016)
after PTQ and QAT. QAT is nnzip's quantization_aware_training: PTQ on 8 calibration batches, then
the shared fit loop for a few epochs (Adam, cosine schedule, best validation epoch kept), on one
thread. Accuracy is on the 10 000 MNIST test images; bytes are the quantized state dict as
safetensors (codes bit-packed: 4, 1, 2 bits; fp32 per-channel scales and biases). Simulated
integer arithmetic. Run: ``python benchmarks/quant_qat.py``. Writes
benchmarks/results/quant_qat.{md,json}.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from common import benchmark_parser, machine_line, markdown_table, print_table, run_each
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate import artifact_bytes, machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.quant import QuantConfig, quantization_aware_training, quantize_static
from nnzip.train import TrainConfig, train_zoo_model

TARGETS = {"int4_qat_drop_points": 0.5}


@dataclass(frozen=True)
class Scheme:
    label: str
    config: QuantConfig
    lr: float | None = None  # None: PTQ only, else QAT at this learning rate

    @property
    def method(self) -> str:
        return "PTQ" if self.lr is None else f"QAT {self.config.estimator.upper()}"


W4 = QuantConfig(weight_bits=4)
BINARY = QuantConfig(weight_format="binary")
TERNARY = QuantConfig(weight_format="ternary")
POW2 = QuantConfig(weight_format="pow2", weight_bits=4)
SCHEMES = [
    Scheme("W4A8", W4),
    Scheme("W4A8", W4, lr=1e-4),
    Scheme("W4A8", QuantConfig(weight_bits=4, estimator="lsq"), lr=1e-4),
    Scheme("W1A8 binary", BINARY),
    Scheme("W1A8 binary", BINARY, lr=1e-3),
    Scheme("W1A8 binary", QuantConfig(weight_format="binary", estimator="lsq"), lr=1e-3),
    Scheme("W2A8 ternary", TERNARY),
    Scheme("W2A8 ternary", TERNARY, lr=1e-4),  # at 1e-3: 96.87 % on lenet5, below its PTQ
    Scheme("W2A8 ternary", QuantConfig(weight_format="ternary", estimator="lsq"), lr=1e-3),
    Scheme("W4A8 pow2", POW2),
    Scheme("W4A8 pow2", POW2, lr=1e-4),
]


def test_accuracy(model, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=1000)),
                    data.test.tensors[1])


def run_scheme(dense, data, batches, scheme: Scheme, epochs: int) -> tuple:
    started = time.perf_counter()
    if scheme.lr is None:
        return quantize_static(dense, batches, scheme.config), time.perf_counter() - started, None
    train_config = TrainConfig(epochs=epochs, lr=scheme.lr, patience=None, seed=0)
    quantized, result = quantization_aware_training(dense, data, batches, scheme.config,
                                                    train_config)
    return quantized, time.perf_counter() - started, result.best_epoch


def run_model(arch: str, data, cache_dir: Path, epochs: int, console: Console) -> dict:
    dense = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    dense_accuracy, dense_bytes = test_accuracy(dense, data), artifact_bytes(dense)
    batches = calibration_batches(data, 8)
    rows = []
    for scheme in SCHEMES:
        torch.manual_seed(0)
        quantized, seconds, best_epoch = run_scheme(dense, data, batches, scheme, epochs)
        acc, size = test_accuracy(quantized, data), artifact_bytes(quantized)
        rows.append({"scheme": scheme.label, "method": scheme.method, "lr": scheme.lr,
                     "epochs": 0 if scheme.lr is None else epochs, "best_epoch": best_epoch,
                     "accuracy": acc, "drop_points": 100 * (dense_accuracy - acc),
                     "bytes": size, "size_fraction": size / dense_bytes, "seconds": seconds})
        console.print(f"  {arch} {scheme.label} {scheme.method}: {100 * acc:.2f}% "
                      f"({rows[-1]['drop_points']:+.2f} points drop), {size:,} bytes, "
                      f"{seconds:.1f} s")
    return {"arch": arch, "fp32_accuracy": dense_accuracy, "fp32_bytes": dense_bytes,
            "rows": rows}


COLUMNS = ["weights", "method", "lr", "accuracy", "drop (points)", "bytes", "of fp32",
           "seconds"]


def table_rows(result: dict) -> list[list[str]]:
    return [[row["scheme"], row["method"], "—" if row["lr"] is None else f"{row['lr']:g}",
             f"{100 * row['accuracy']:.2f}%", f"{row['drop_points']:.2f}", f"{row['bytes']:,}",
             f"{100 * row['size_fraction']:.1f}%", f"{row['seconds']:.1f}"]
            for row in result["rows"]]


def render_markdown(report: dict) -> str:
    epochs = report["epochs"]
    lines = ["# Quantization-aware training and low-bit weights on the zoo", "",
             "Activations 8-bit per tensor (asymmetric, calibrated by min-max on 8 batches of 64 "
             "training images), weights per output channel. PTQ: static, BatchNorm folded. "
             f"QAT: PTQ then {epochs} epochs of nnzip's fit loop (Adam, cosine schedule, batch "
             "64, augmentation, the best validation epoch kept) on the 4 500 training images; "
             "STE: straight-through estimator, weight scales recomputed from the weights each "
             "step; LSQ: learned step sizes (weights per channel, activations per tensor), "
             "initialised from the PTQ scales. Binary: sign · mean|w| per channel (BWN); "
             "ternary: TWN threshold 0.7 · mean|w|; pow2: signed powers of two, 4 bits. "
             "Accuracy on the 10 000 MNIST test images; bytes are the quantized state dict as "
             "safetensors (codes bit-packed, fp32 scales and biases); seconds are the wall time "
             "of PTQ or of the whole QAT (calibration, training, validation) on one thread. "
             "Issue 4 target: 4-bit QAT drop ≤ 0.5 points; binary QAT: reported as measured.",
             "", "Learning rates: 1e-4 for 4-bit, 1e-3 for binary (3e-4 recovered less on "
             "lenet5: 96.99 % with STE). Ternary STE uses 1e-4: at 1e-3 it scored 96.87 % on "
             "lenet5, below its own PTQ, since QAT keeps the best trained epoch, never the "
             "starting point. These were one quick try each on lenet5, not a search.", ""]
    for result in report["models"]:
        lines += [f"## {result['arch']}: fp32 {100 * result['fp32_accuracy']:.2f}%, "
                  f"{result['fp32_bytes']:,} bytes", "",
                  *markdown_table(COLUMNS, table_rows(result)), ""]
    lines.append(machine_line(report["machine"], ", 1 thread"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__, ["lenet5", "resnet8"])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    console = Console(width=140)
    data = load_mnist()
    report = {"benchmark": "quant_qat", "machine": machine_info(1), "epochs": args.epochs,
              "targets": TARGETS, "models": []}
    run_each("quant_qat", report, args.archs,
             lambda arch: run_model(arch, data, args.cache_dir, args.epochs, console),
             render_markdown)
    for result in report["models"]:
        print_table(console, f"{result['arch']} (fp32 {100 * result['fp32_accuracy']:.2f}%)",
                    COLUMNS, table_rows(result), left=["weights", "method"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    main()
