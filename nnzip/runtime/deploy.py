"""Deployment: run the model on every runtime nnzip knows, keep the fastest one that is correct.

Whether int8 beats fp32 depends on the machine, not on folklore. On x86 CPUs with AVX-512 VNNI
(or AVX-VNNI) ONNX Runtime's int8 kernels are fast; on AVX2-only CPUs they go through
``vpmaddubsw``, which is barely faster than fp32 FMA and *saturates* its int16 pair sums when
weights use the full int8 range (ONNX Runtime's docs advise 7-bit weights, "reduce_range", there).
So :func:`deploy` measures instead of assuming:

1. it builds every applicable runtime of the model — PyTorch eager; ONNX Runtime fp32 for a float
   model; for a model quantized by nnzip, the QDQ ONNX file run with ORT's integer fusions
   (``int8``), the same file with fusions off (``dequantized``, float kernels on the integer
   weights: exactly nnzip's simulation), and the saved integer-operator form (``qoperator``);
   On AVX2 without VNNI the QDQ file stores its weights as uint8 (the same integers shifted by
   128), which takes ORT's exact u8u8 kernels (:func:`nnzip.runtime.export_onnx`);
2. it checks each one's accuracy on validation data against the model as given (a runtime that
   changes accuracy by more than ``max_accuracy_change`` points is not correct, whatever its
   speed: had the weights been stored as int8, the saturation above would be caught here);
3. it times them interleaved at each batch size (:func:`nnzip.evaluate.compare_latency`) and picks
   the fastest correct runtime at the first batch size.

The chosen artifact is copied to ``out_dir/model.onnx`` (or ``model.pt2`` when PyTorch wins), and
``deploy.json`` records every runtime's accuracy, latency and integer-operator count.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from nnzip.atomic import atomic_path, write_text
from nnzip.core.modes import set_eval
from nnzip.data.splits import DataSplits, calibration_batches, probe_batch
from nnzip.errors import NnzipError
from nnzip.evaluate.accuracy import accuracy, agreement, predict_logits
from nnzip.evaluate.latency import compare_latency, fixed_threads
from nnzip.evaluate.machine import machine_info
from nnzip.evaluate.size import file_bytes
from nnzip.models.fold import fold_batchnorm, foldable_pairs
from nnzip.outputs import staged_folder
from nnzip.runtime.onnx_export import chain_quantized, export_onnx, float_view, is_quantized
from nnzip.runtime.qdq_graph import integer_report, integer_summary
from nnzip.runtime.session import OrtModule, integer_op_count, op_counts, to_qoperator

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """One way to run the model, and what was measured of it."""

    name: str
    description: str
    path: Path | None
    module: nn.Module = field(repr=False)
    accuracy: float | None = None
    accuracy_change_points: float | None = None
    agreement: float | None = None
    latency_ms: dict[int, dict[str, float]] = field(default_factory=dict)
    file_bytes: int | None = None
    integer_ops: int | None = None
    #: What ORT runs integer and float, and why float (:func:`nnzip.runtime.qdq_graph.
    #: integer_summary`): for ONNX runtimes.
    integer_nodes: dict | None = None
    correct: bool | None = None
    #: False for the original model, which is timed beside the candidates but never chosen.
    candidate: bool = True

    def summary(self) -> dict:
        data = {item.name: getattr(self, item.name) for item in fields(self)
                if item.name != "module"}
        data["path"] = str(self.path) if self.path else None
        data["latency_ms"] = {str(batch): value for batch, value in self.latency_ms.items()}
        return data


@dataclass
class Deployment:
    chosen: Runtime
    runtimes: list[Runtime]
    path: Path | None
    machine: dict

    def speedup(self, batch_size: int) -> float | None:
        """p50 latency of the original model (or PyTorch eager) over the chosen runtime's."""
        baseline = next((r for r in self.runtimes if not r.candidate), self.runtimes[0])
        if batch_size not in self.chosen.latency_ms:
            return None
        return (baseline.latency_ms[batch_size]["p50"]
                / self.chosen.latency_ms[batch_size]["p50"])

    def summary(self) -> dict:
        return {"chosen": self.chosen.name,
                "speedup": {str(batch): round(self.speedup(batch), 3)
                            for batch in self.chosen.latency_ms},
                "path": str(self.path) if self.path else None,
                "runtimes": [runtime.summary() for runtime in self.runtimes],
                "machine": self.machine}


def _float_for_export(model: nn.Module) -> nn.Module:
    """The float model with BatchNorm folded where it can be (what a deployment runs)."""
    try:
        if foldable_pairs(model):
            return fold_batchnorm(model)
    except NnzipError as error:  # untraceable: ONNX export may still work without folding
        log.info("exporting without BatchNorm folding: %s", error)
    return model


def build_runtimes(model: nn.Module, example: torch.Tensor, folder: Path,
                   threads: int = 1, *, calibration: list | None = None) -> list[Runtime]:
    """Every runtime of ``model``: PyTorch eager; ONNX Runtime forms saved in ``folder``.

    ``calibration`` batches make the QDQ file a fully integer chain (adds, pooling, outputs
    quantized too: :func:`nnzip.runtime.export_onnx`)."""
    folder.mkdir(parents=True, exist_ok=True)
    runtimes = [Runtime("pytorch-eager", "the model as given, PyTorch eager", None, model)]
    if not is_quantized(model):
        path = export_onnx(_float_for_export(model), folder / "fp32.onnx", example)
        runtimes.append(Runtime("onnxruntime-fp32", "ONNX Runtime, float32, all graph "
                                "optimizations", path, OrtModule(path, threads)))
        return runtimes
    weights_only = export_onnx(_float_for_export(float_view(model)), folder / "fp32.onnx", example)
    simulation = export_onnx(model, folder / "qdq-simulation.onnx", example)
    # The integer chain (adds, pooling, outputs quantized too) for the integer runtimes; the
    # file as nnzip quantized it stays the "dequantized" runtime: nnzip's own simulation.
    qdq = (chain_quantized(model, simulation, calibration, folder / "qdq.onnx")
           if calibration is not None else simulation)
    qoperator = to_qoperator(qdq, folder / "qoperator.onnx")
    runtimes += [
        Runtime("onnxruntime-int8-qdq", "QDQ model, ONNX Runtime fuses DQ→op→Q into integer "
                "kernels", qdq, OrtModule(qdq, threads, "all")),
        Runtime("onnxruntime-int8-qoperator", "the integer-operator form ORT saved from the QDQ "
                "model (QLinearConv, ...)", qoperator, OrtModule(qoperator, threads, "all")),
        Runtime("onnxruntime-dequantized", "QDQ model with fusions off: float kernels on the "
                "dequantized integer weights (nnzip's simulation)", simulation,
                OrtModule(simulation, threads, "basic")),
        Runtime("onnxruntime-fp32", "ONNX Runtime float32 with the dequantized weights, "
                "activations in float (int8-rounded weights, fp32 file)", weights_only,
                OrtModule(weights_only, threads)),
    ]
    return runtimes


def check_accuracy(runtimes: list[Runtime], data: DataSplits, samples: int,
                   max_accuracy_change: float) -> None:
    """Accuracy and agreement of each runtime vs the first (PyTorch eager) on validation data."""
    split = data.val if len(data.val) else data.test
    inputs, labels = split.tensors[0][:samples], split.tensors[1][:samples]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, labels),
                                         batch_size=256)
    reference_logits = None
    for runtime in runtimes:
        logits = predict_logits(runtime.module, loader)
        runtime.accuracy = accuracy(logits, labels)
        if reference_logits is None:
            reference_logits, reference_accuracy = logits, runtime.accuracy
        runtime.accuracy_change_points = round(100 * (runtime.accuracy - reference_accuracy), 4)
        runtime.agreement = agreement(logits, reference_logits)
        runtime.correct = (runtime.candidate
                           and abs(runtime.accuracy_change_points) <= max_accuracy_change)


def deploy(model: nn.Module, data: DataSplits, out_dir: str | Path, *,
           batch_sizes: tuple[int, ...] = (1, 64), threads: int = 1, samples: int = 2000,
           max_accuracy_change: float = 0.2, repeats: int = 50,
           original: nn.Module | None = None) -> Deployment:
    """Measure every runtime of ``model`` and keep the fastest correct one at ``batch_sizes[0]``.

    ``original`` (e.g. the float model before compression) is timed beside the candidates in
    PyTorch eager, as the baseline of the reported speedup; it is never chosen.

    ``max_accuracy_change`` (points, on up to ``samples`` validation inputs) is how far a runtime
    may move accuracy away from the model as given and still count as correct.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise NnzipError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if max_accuracy_change < 0:
        raise NnzipError("max_accuracy_change is in accuracy points and must be ≥ 0")
    out_dir = Path(out_dir)
    model = set_eval(model)  # a .pt2 program refuses .eval(): kept as exported
    example = probe_batch(data, 2)
    # Written into a temporary folder that replaces out_dir as a whole at the end: no runtime
    # file of an earlier deployment sits beside the new deploy.json.
    with staged_folder(out_dir) as folder:
        with fixed_threads(threads):
            calibration = calibration_batches(data, 8) if is_quantized(model) else None
            runtimes = build_runtimes(model, example, folder / "runtimes", threads,
                                      calibration=calibration)
            if original is not None:
                runtimes.append(Runtime("original-pytorch-eager", "the original model, "
                                        "PyTorch eager (baseline, not a candidate)", None,
                                        set_eval(original), candidate=False))
            check_accuracy(runtimes, data, samples, max_accuracy_change)
        for runtime in runtimes:
            if runtime.path is not None:
                runtime.file_bytes = file_bytes(runtime.path)
                runtime.integer_ops = integer_op_count(op_counts(runtime.path))
                if runtime.path.suffix == ".onnx":
                    level = getattr(runtime.module, "optimization", "all")
                    runtime.integer_nodes = integer_summary(integer_report(runtime.path,
                                                                           optimization=level))
        for batch in batch_sizes:
            timings = compare_latency([runtime.module for runtime in runtimes], threads=threads,
                                      repeats=repeats, batch=probe_batch(data, batch))
            for runtime, timing in zip(runtimes, timings, strict=True):
                runtime.latency_ms[batch] = {key: round(value, 4) for key, value in timing.items()}
        correct = [runtime for runtime in runtimes if runtime.correct]
        chosen = min(correct, key=lambda runtime: runtime.latency_ms[batch_sizes[0]]["p50"])
        path = _save_chosen(chosen, model, example, folder)
        for runtime in runtimes:  # named as they will be once the folder is in place
            if runtime.path is not None:
                runtime.path = out_dir / Path(runtime.path).relative_to(folder)
        path = out_dir / path.relative_to(folder)
        machine = machine_info(threads) | {"onnxruntime_version": _ort_version()}
        deployment = Deployment(chosen, runtimes, path, machine)
        write_text(folder / "deploy.json", json.dumps(deployment.summary(), indent=2) + "\n")
    return deployment


def _save_chosen(chosen: Runtime, model: nn.Module, example: torch.Tensor,
                 out_dir: Path) -> Path:
    from nnzip.models.io import export_model

    if chosen.path is None:
        return export_model(model, out_dir / "model.pt2", example)
    with atomic_path(out_dir / "model.onnx") as tmp:
        shutil.copyfile(chosen.path, tmp)
    return out_dir / "model.onnx"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
