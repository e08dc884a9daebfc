"""Real integer execution: nnzip's int8 models on ONNX Runtime, against ORT's and PyTorch's own.

For each zoo model (trained on MNIST, cached in runs/cache), in one run on one core:

- the fp32 model in PyTorch eager (the baseline) and in ONNX Runtime;
- nnzip static PTQ (W8A8, per-channel weights, min-max), exported to ONNX in the QDQ form with
  nnzip's own scales, run by ONNX Runtime with its integer fusions: weights stored as uint8
  (nnzip's default on AVX2 without VNNI) and as int8 (to show the saturation), the
  integer-operator (QOperator) form ORT saves from it, and the fp32 file with the rounded
  weights;
- ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, same calibration images);
- PyTorch's own int8: FX static quantization (x86 backend) and ``quantize_dynamic`` (Linear);
- nnzip's ``deploy``: the fastest runtime that keeps the accuracy within 0.2 points.

Accuracy is on the 10 000 MNIST test images; latency is timed interleaved (p50 of 60 calls at
batch 1, 20 at batch 64) so the ratios hold on a noisy machine. Issue 4 targets: ORT accuracy
within 0.2 points of nnzip's simulation; the deployed ResNet ≥ 3× faster than eager fp32 at
batch 1.

    python benchmarks/quant_runtime.py [--archs lenet5 resnet8]
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from common import (
    benchmark_parser,
    markdown_table,
    ort_quantize_static,
    print_table,
    quiet_single_thread,
    run_each,
)
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate import machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.evaluate.latency import compare_latency
from nnzip.quant import quantize_static
from nnzip.runtime import (
    OrtModule,
    deploy,
    export_onnx,
    float_for_export,
    integer_op_count,
    op_counts,
    to_qoperator,
)
from nnzip.runtime.onnx_export import float_view
from nnzip.train import train_zoo_model

BATCHES = (1, 64)


def test_accuracy(model: nn.Module, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=1000)),
                    data.test.tensors[1])


def torch_fx_int8(model: nn.Module, batches: list, example: torch.Tensor) -> nn.Module:
    """PyTorch's own static int8 (FX graph mode, x86/fbgemm backend)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                          (example,))
    with torch.no_grad():
        for inputs, _ in batches:
            prepared(inputs)
    return convert_fx(prepared)


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear},
                                                  dtype=torch.qint8)


def file_size(model: nn.Module, folder: Path, name: str) -> int:
    # torch.save, not nnzip's artifact_bytes (safetensors): PyTorch's int8 modules keep their
    # weights in packed-params objects that only torch.save writes.
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def run_model(arch: str, data, cache_dir: Path, console: Console) -> dict:
    dense = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    batches = calibration_batches(data, 8)
    example = data.test.tensors[0][:2]
    folder = Path(tempfile.mkdtemp(prefix=f"nnzip-runtime-{arch}-"))
    folded = float_for_export(dense)
    started = time.perf_counter()
    int8 = quantize_static(dense, batches)
    ptq_seconds = time.perf_counter() - started
    fp32_path = export_onnx(folded, folder / "fp32.onnx", example)
    qdq_u8 = export_onnx(int8, folder / "nnzip-qdq-u8.onnx", example, weight_dtype="uint8")
    qdq_s8 = export_onnx(int8, folder / "nnzip-qdq-s8.onnx", example, weight_dtype="int8")
    qop_u8 = to_qoperator(qdq_u8, folder / "nnzip-qop-u8.onnx")
    # quantize_static folded BatchNorm already: the float view is the deployable float graph.
    rounded = export_onnx(float_view(int8), folder / "nnzip-w8-fp32.onnx", example)
    ort_path = ort_quantize_static(fp32_path, folder / "ort-qdq.onnx", batches)
    ort_qop = to_qoperator(ort_path, folder / "ort-qop.onnx")
    ort_u8 = ort_quantize_static(fp32_path, folder / "ort-qdq-u8.onnx", batches, "uint8")
    ort_u8_qop = to_qoperator(ort_u8, folder / "ort-qop-u8.onnx")
    runtimes: list[tuple[str, nn.Module, int | None, int | None]] = [
        ("PyTorch eager fp32", dense, file_size(dense, folder, "dense"), None),
        ("ONNX Runtime fp32", OrtModule(fp32_path), fp32_path.stat().st_size, 0),
        ("nnzip W8A8, PyTorch (simulated)", int8, None, None),
        ("nnzip W8A8 QDQ u8 weights, ORT", OrtModule(qdq_u8), qdq_u8.stat().st_size,
         integer_op_count(op_counts(qop_u8))),
        ("nnzip W8A8 QOperator u8, ORT", OrtModule(qop_u8), qop_u8.stat().st_size,
         integer_op_count(op_counts(qop_u8))),
        ("nnzip W8A8 QDQ s8 weights, ORT", OrtModule(qdq_s8), qdq_s8.stat().st_size, None),
        ("nnzip W8 weights, ORT fp32", OrtModule(rounded), rounded.stat().st_size, 0),
        ("ORT quantize_static QDQ", OrtModule(ort_path), ort_path.stat().st_size,
         integer_op_count(op_counts(ort_qop))),
        ("ORT quantize_static QDQ u8 weights", OrtModule(ort_u8), ort_u8.stat().st_size,
         integer_op_count(op_counts(ort_u8_qop))),
    ]
    try:
        fx = torch_fx_int8(folded, batches, example)
        runtimes.append(("PyTorch FX int8 (x86)", fx, file_size(fx, folder, "fx"), None))
    except Exception as error:  # report, do not hide, a path that does not apply
        console.print(f"  {arch}: PyTorch FX int8 failed: {type(error).__name__}: {error}")
    dynamic = torch_dynamic_int8(dense)
    runtimes.append(("PyTorch quantize_dynamic (Linear)", dynamic,
                     file_size(dynamic, folder, "dynamic"), None))
    rows = []
    for name, module, size, integer_ops in runtimes:
        rows.append({"runtime": name, "accuracy": test_accuracy(module, data), "bytes": size,
                     "integer_ops": integer_ops, "latency_ms": {}})
        console.print(f"  {arch} {name}: {100 * rows[-1]['accuracy']:.2f}%")
    for batch in BATCHES:
        timings = compare_latency([module for _, module, _, _ in runtimes], data.input_shape,
                                  batch_size=batch, repeats=60 if batch == 1 else 20)
        for row, timing in zip(rows, timings, strict=True):
            row["latency_ms"][str(batch)] = timing
    base = rows[0]
    simulated = rows[2]["accuracy"]
    for row in rows:
        row["drop_points"] = 100 * (base["accuracy"] - row["accuracy"])
        row["vs_simulation_points"] = 100 * (row["accuracy"] - simulated)
        row["speedup"] = {batch: base["latency_ms"][batch]["p50"] / row["latency_ms"][batch]["p50"]
                          for batch in row["latency_ms"]}
    deployment = deploy(int8, data, folder / "deploy", batch_sizes=BATCHES, original=dense)
    return {"arch": arch, "ptq_seconds": ptq_seconds, "rows": rows,
            "deploy": {"chosen": deployment.chosen.name,
                       "speedup": {str(b): deployment.speedup(b) for b in BATCHES},
                       "runtimes": [r.summary() for r in deployment.runtimes]}}


COLUMNS = ["runtime", "accuracy", "drop", "vs sim.", "bytes", "int ops", "p50 b1 ms",
           "p50 b64 ms", "speedup b1", "speedup b64"]


def table_rows(result: dict) -> list[list[str]]:
    def number(value, fmt):
        return "–" if value is None else format(value, fmt)

    return [[row["runtime"], f"{100 * row['accuracy']:.2f}%", f"{row['drop_points']:+.2f}",
             f"{row['vs_simulation_points']:+.2f}", number(row["bytes"], ","),
             number(row["integer_ops"], "d"), f"{row['latency_ms']['1']['p50']:.3f}",
             f"{row['latency_ms']['64']['p50']:.2f}", f"{row['speedup']['1']:.2f}×",
             f"{row['speedup']['64']:.2f}×"] for row in result["rows"]]


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    lines = ["# Integer execution: nnzip int8 on ONNX Runtime vs ORT's and PyTorch's own", "",
             f"Machine: {machine['cpu_model']}, flags {', '.join(machine['cpu_flags'])}, one "
             f"thread; torch {machine['torch_version']}, onnxruntime "
             f"{report['onnxruntime_version']}.", "",
             "Accuracy on the 10 000 MNIST test images; *drop* is against PyTorch eager fp32, "
             "*vs sim.* against nnzip's simulated W8A8 model (issue 4: within 0.2 points). "
             "*int ops*: integer operators (QLinearConv, QGemm, ...) in the graph ONNX Runtime "
             "builds. Bytes: the file (ONNX) or the saved state dict (PyTorch). Latency is p50, "
             "timed interleaved in one run; speedup is against PyTorch eager fp32.", ""]
    for result in report["models"]:
        deployed = result["deploy"]
        lines += [f"## {result['arch']}", "",
                  *markdown_table(COLUMNS, table_rows(result)), "",
                  f"`nnzip.runtime.deploy` of the W8A8 model chose **{deployed['chosen']}**: "
                  f"{deployed['speedup']['1']:.2f}× faster than PyTorch eager fp32 at batch 1, "
                  f"{deployed['speedup']['64']:.2f}× at batch 64 (timed in its own run).", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    import onnxruntime

    args = benchmark_parser(__doc__, ["lenet5", "resnet8"]).parse_args()
    console = Console(width=160)
    data = load_mnist()
    report = {"benchmark": "quant_runtime", "machine": machine_info(1),
              "onnxruntime_version": onnxruntime.__version__, "models": []}
    run_each("quant_runtime", report, args.archs,
             lambda arch: run_model(arch, data, args.cache_dir, console), render_markdown,
             default=float)
    for result in report["models"]:
        print_table(console, f"{result['arch']}: deploy chose {result['deploy']['chosen']}",
                    COLUMNS, table_rows(result), left=["runtime"])


if __name__ == "__main__":
    quiet_single_thread()
    main()
