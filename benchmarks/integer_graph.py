"""Fully integer graphs: nnzip's W8A8 QDQ export with and without the integer chain, vs ORT's own.

For each zoo model (trained on MNIST, cached in runs/cache), in one run on one thread:

- PyTorch eager fp32 (the baseline of every speed-up) and ONNX Runtime fp32 (BatchNorm folded);
- nnzip static PTQ (W8A8, per-channel weights, min-max; 8 calibration batches of the training
  split), simulated in PyTorch;
- its QDQ export as nnzip quantized it (each layer's input and weight: what ``export_onnx``
  wrote before issue 16), run by ONNX Runtime with its integer fusions;
- the same export made a fully integer chain (``export_onnx(..., calibration=...)``: residual
  adds, pooling, layer outputs, the classifier quantized with nnzip's scales, or observed by
  nnzip where it had none);
- ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, the same calibration images).

Reported: accuracy on the 10 000 MNIST test images, argmax agreement of each ORT int8 graph with
nnzip's simulation, the nodes ORT runs integer and float (and why float:
``nnzip.runtime.qdq_graph.integer_report``), p50 latency timed interleaved at batch 1 and 64, and
speed-ups against PyTorch eager fp32. Issue 16: no float Conv/Add between quantized layers, and
accuracy within 0.1 points of fp32.

    python benchmarks/integer_graph.py [--archs lenet5 resnet8 resnet20 mobilenetv2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnxruntime
import torch
from rich.console import Console
from torch import nn

from common import (
    benchmark_parser,
    machine_line,
    markdown_table,
    ort_quantize_static,
    quiet_single_thread,
    run_each,
)
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate import machine_info
from nnzip.evaluate.accuracy import accuracy, agreement, predict_logits
from nnzip.evaluate.latency import compare_latency
from nnzip.quant import quantize_static
from nnzip.runtime import OrtModule, export_onnx, float_for_export
from nnzip.runtime.qdq_graph import integer_report, integer_summary
from nnzip.train import train_zoo_model

BATCHES = (1, 64)
REPEATS = {1: 60, 64: 20}


def test_logits(model: nn.Module, data) -> torch.Tensor:
    return predict_logits(model, data.loader("test", batch_size=1000))


def run_model(arch: str, data, cache_dir: Path, console: Console) -> dict:
    dense = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    batches = calibration_batches(data, 8)
    example = data.test.tensors[0][:2]
    folder = Path(tempfile.mkdtemp(prefix=f"nnzip-integer-{arch}-"))
    folded = float_for_export(dense)
    int8 = quantize_static(dense, batches)
    fp32_path = export_onnx(folded, folder / "fp32.onnx", example)
    plain = export_onnx(int8, folder / "nnzip-qdq.onnx", example)
    chain = export_onnx(int8, folder / "nnzip-chain.onnx", example, calibration=batches)
    ort_path = ort_quantize_static(fp32_path, folder / "ort-qdq.onnx", batches)
    runtimes: list[tuple[str, nn.Module, Path | None]] = [
        ("PyTorch eager fp32", dense, None),
        ("ONNX Runtime fp32", OrtModule(fp32_path), fp32_path),
        ("nnzip W8A8, PyTorch (simulated)", int8, None),
        ("nnzip QDQ, layer inputs only (before)", OrtModule(plain), plain),
        ("nnzip QDQ, integer chain", OrtModule(chain), chain),
        ("ORT quantize_static QDQ", OrtModule(ort_path), ort_path),
    ]
    labels = data.test.tensors[1]
    logits = [test_logits(module, data) for _, module, _ in runtimes]
    simulated = logits[2]
    rows = []
    for (name, _, path), output in zip(runtimes, logits, strict=True):
        row = {"runtime": name, "accuracy": accuracy(output, labels),
               "agreement_with_simulation": agreement(output, simulated),
               "bytes": path.stat().st_size if path is not None else None,
               "nodes": integer_summary(integer_report(path)) if path is not None else None,
               "latency_ms": {}}
        rows.append(row)
        console.print(f"  {arch} {name}: {100 * row['accuracy']:.2f}%")
    for batch in BATCHES:
        timings = compare_latency([module for _, module, _ in runtimes], data.input_shape,
                                  batch_size=batch, repeats=REPEATS[batch])
        for row, timing in zip(rows, timings, strict=True):
            row["latency_ms"][str(batch)] = timing
    base = rows[0]
    for row in rows:
        row["vs_fp32_points"] = 100 * (row["accuracy"] - base["accuracy"])
        row["speedup"] = {batch: base["latency_ms"][batch]["p50"] / row["latency_ms"][batch]["p50"]
                          for batch in row["latency_ms"]}
    return {"arch": arch, "rows": rows}


COLUMNS = ["runtime", "accuracy", "vs fp32", "agree w/ sim.", "bytes", "integer ops",
           "float nodes", "p50 b1 ms", "p50 b64 ms", "speed-up b1", "speed-up b64"]


def _ops(nodes: dict | None) -> str:
    if nodes is None:
        return "–"
    return ", ".join(f"{count} {op}" for op, count in nodes["integer_ops"].items()) or "none"


def _floats(nodes: dict | None) -> str:
    if nodes is None:
        return "–"
    return "; ".join(f"{group['count']} {group['op']} ({group['reason']})"
                     for group in nodes["float"]) or "none"


def table_rows(result: dict) -> list[list[str]]:
    return [[row["runtime"], f"{100 * row['accuracy']:.2f}%", f"{row['vs_fp32_points']:+.2f}",
             f"{100 * row['agreement_with_simulation']:.2f}%",
             "–" if row["bytes"] is None else f"{row['bytes']:,}", _ops(row["nodes"]),
             _floats(row["nodes"]), f"{row['latency_ms']['1']['p50']:.3f}",
             f"{row['latency_ms']['64']['p50']:.2f}", f"{row['speedup']['1']:.2f}×",
             f"{row['speedup']['64']:.2f}×"] for row in result["rows"]]


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    lines = ["# Fully integer graphs: nnzip's W8A8 export with the integer chain", "",
             machine_line(machine, ", 1 thread") + f" CPU flags: "
             f"{', '.join(machine['cpu_flags'])}; onnxruntime {report['onnxruntime_version']}.",
             "",
             "Accuracy on the 10 000 MNIST test images; *vs fp32* in points against PyTorch eager "
             "fp32; *agree w/ sim.*: argmax agreement with nnzip's simulated W8A8 model. *integer "
             "ops* / *float nodes*: the graph ONNX Runtime builds (all optimizations), from "
             "`nnzip.runtime.qdq_graph.integer_report`, float nodes with the reason. Latency is "
             "p50, timed interleaved in one run; speed-ups are against PyTorch eager fp32.", ""]
    for result in report["models"]:
        lines += [f"## {result['arch']}", "", *markdown_table(COLUMNS, table_rows(result)), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = benchmark_parser(__doc__, ["lenet5", "resnet8", "resnet20", "mobilenetv2"]
                            ).parse_args()
    quiet_single_thread()
    console = Console(width=160)
    data = load_mnist()
    report = {"benchmark": "integer_graph", "machine": machine_info(1),
              "onnxruntime_version": onnxruntime.__version__, "models": []}
    run_each("integer_graph", report, args.archs,
             lambda arch: run_model(arch, data, args.cache_dir, console), render_markdown,
             default=float)


if __name__ == "__main__":
    main()
