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
   a sentence encoder (data of task ``embed``, :func:`nnzip.tasks.task_of`) is checked instead by
   the mean cosine of its embeddings to the model's own (at least ``min_cosine``), with STS
   Spearman recorded beside it (:func:`check_embedding`). Token ids export with a dynamic token
   dimension; a statically quantized transformer gets, for OpenVINO, a QDQ file with
   quantization placed as NNCF's transformer preset places it (attention's query and key
   quantized too, residual adds left float: :func:`nnzip.runtime.onnx_export.openvino_placed`),
   and its int4 / dynamic int8 files are read by OpenVINO too;
   Beside them, where OpenVINO is installed (:mod:`nnzip.runtime.openvino`): OpenVINO fp32 with
   its precision hint pinned to f32, bf16 where the CPU has it (AMX / AVX-512 BF16), and int8
   from nnzip's own QDQ file (its execution graph shows which layers run on u8/i8), each with a
   dynamic batch dimension and with one static shape per batch size;
3. it times the correct ones interleaved at each batch size (:func:`nnzip.evaluate.compare_latency`)
   and records the fastest correct runtime *per batch size*: which one wins changes with the
   batch size and the CPU (on an AMX Xeon, ORT fp32 can win at batch 1 and OpenVINO int8 at 64).
   Runtimes within ``size_tolerance`` (3 %) of the fastest count as tied, and of those the one
   with the smallest file wins (:func:`pick`): on AMX, bf16 on the dequantized float weights
   runs as fast as int8, and a user should not get a file 3× larger for a difference in noise.

The winner at ``target_batch`` (the first batch size unless given) is saved in its runtime's own
format: ``out_dir/model.onnx`` (ONNX Runtime), ``model.xml`` + ``model.bin`` (OpenVINO IR, which
records the precision and shape mode it runs with) or ``model.pt2`` (PyTorch), all read by
:func:`nnzip.load_model`. ``deploy.json`` records every runtime's accuracy, latency and integer
layers, the choice per batch size with its speed-up over PyTorch eager and over the runner-up,
which candidates were skipped and why, and the machine (CPU flags, runtime versions).
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
from nnzip.runtime.onnx_export import (
    chain_quantized,
    export_onnx,
    float_view,
    is_quantized,
    openvino_placed,
)
from nnzip.runtime.onnx_lowbit import lowbit_kind
from nnzip.runtime.qdq_graph import integer_report, integer_summary
from nnzip.runtime.session import OrtModule, integer_op_count, op_counts, to_qoperator
from nnzip.tasks import task_of

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
    #: OpenVINO only: per executed layer type, how many nodes run at each precision.
    layer_precisions: dict[str, dict[str, int]] | None = None
    #: Sentence encoders (task ``embed``): mean cosine of the runtime's embeddings of the
    #: validation sentences to those of the model as given, the one correctness criterion.
    cosine: float | None = None
    #: The task's own metric on the test split and its change from the model as given
    #: (``{"spearman": ..., "spearman_change": ...}`` for an encoder), recorded, not a criterion.
    task_metric: dict[str, float] | None = None

    def summary(self) -> dict:
        data = {item.name: getattr(self, item.name) for item in fields(self)
                if item.name != "module"}
        data["path"] = str(self.path) if self.path else None
        data["latency_ms"] = {str(batch): value for batch, value in self.latency_ms.items()}
        return data


@dataclass
class Deployment:
    """What :func:`deploy` measured and chose.

    ``chosen`` is the runtime saved at ``path`` (the winner at ``target_batch``);
    ``chosen_by_batch`` the fastest correct runtime at each timed batch size; ``skipped`` the
    candidates not built or not correct, each with the reason.
    """

    chosen: Runtime
    runtimes: list[Runtime]
    path: Path | None
    machine: dict
    chosen_by_batch: dict[int, Runtime] = field(default_factory=dict)
    target_batch: int | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    def baseline(self) -> Runtime:
        """The original model (when given) or the model as given."""
        return next((r for r in self.runtimes if r.name == "original-pytorch-eager"),
                    self.runtimes[0])

    def speedup(self, batch_size: int, versus: Runtime | None = None) -> float | None:
        """p50 latency of ``versus`` (the baseline by default) over that of the fastest correct
        runtime at ``batch_size``."""
        winner = self.chosen_by_batch.get(batch_size, self.chosen)
        versus = versus or self.baseline()
        if batch_size not in winner.latency_ms or batch_size not in versus.latency_ms:
            return None
        return versus.latency_ms[batch_size]["p50"] / winner.latency_ms[batch_size]["p50"]

    def runner_up(self, batch_size: int) -> Runtime | None:
        """The fastest correct candidate at ``batch_size`` other than the winner."""
        winner = self.chosen_by_batch.get(batch_size, self.chosen)
        timed = sorted((r for r in self.runtimes if r.correct and batch_size in r.latency_ms
                        and r is not winner), key=lambda r: r.latency_ms[batch_size]["p50"])
        return timed[0] if timed else None

    def choice(self, batch_size: int) -> dict:
        """The winner at ``batch_size`` and by how much it beats eager and the runner-up."""
        winner = self.chosen_by_batch[batch_size]
        runner_up = self.runner_up(batch_size)
        eager = self.runtimes[0]

        def ratio(versus: Runtime | None) -> float | None:
            value = self.speedup(batch_size, versus) if versus is not None else None
            return None if value is None else round(value, 3)

        return {"runtime": winner.name, "p50_ms": winner.latency_ms[batch_size]["p50"],
                "baseline": self.baseline().name, "speedup": ratio(self.baseline()),
                f"speedup_vs_{eager.name.replace('-', '_')}": ratio(eager),
                "runner_up": runner_up.name if runner_up else None,
                "speedup_vs_runner_up": ratio(runner_up), "file_bytes": winner.file_bytes,
                "runner_up_file_bytes": runner_up.file_bytes if runner_up else None}

    def summary(self) -> dict:
        return {"chosen": {str(batch): self.choice(batch) for batch in self.chosen_by_batch},
                "saved": {"runtime": self.chosen.name, "batch_size": self.target_batch,
                          "path": str(self.path) if self.path else None},
                "path": str(self.path) if self.path else None,
                "skipped": self.skipped,
                "runtimes": [runtime.summary() for runtime in self.runtimes],
                "machine": self.machine}


def float_for_export(model: nn.Module) -> nn.Module:
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

    Token ids (an integer ``example`` of shape (batch, tokens)) export with a dynamic token
    dimension too (:func:`sequence_dim_of`), so an encoder's file runs sentences of any length.

    ``calibration`` batches make the QDQ file a fully integer chain (adds, pooling, outputs
    quantized too: :func:`nnzip.runtime.export_onnx`); the file as nnzip quantized it stays the
    "dequantized" runtime, nnzip's own simulation.

    A model loaded from a runtime's file (an ``.onnx`` as :class:`OrtModule`, an OpenVINO IR as
    :class:`~nnzip.runtime.openvino.OvModule`) is the reference, timed but not a candidate; its
    file is copied into ``folder`` as the source of the candidates (a file with
    ``DequantizeLinear`` / ``FakeQuantize`` nodes as the quantized one).
    """
    folder.mkdir(parents=True, exist_ok=True)
    from nnzip.runtime.openvino import OvModule, save_ir

    sequence_dim = sequence_dim_of(example)

    def export(exported: nn.Module, path: Path) -> Path:
        return export_onnx(exported, path, example, sequence_dim=sequence_dim)

    if isinstance(model, OrtModule | OvModule):
        runtimes = [Runtime("model-as-given", f"the model as loaded, run by "
                            f"{type(model).__name__} (the reference, not a candidate: its file "
                            "is the candidates' source)", model.path, model, candidate=False)]
        if isinstance(model, OvModule):  # ONNX Runtime cannot read IR: OpenVINO candidates only
            quantized = any(op.get_type_name() == "FakeQuantize"
                            for op in model.ov_model.get_ordered_ops())
            save_ir(model, folder / ("qdq.xml" if quantized else "fp32.xml"))
            return runtimes
        quantized = "DequantizeLinear" in op_counts(model.path)
        path = folder / ("qdq.onnx" if quantized else "fp32.onnx")
        with atomic_path(path) as tmp:
            shutil.copyfile(model.path, tmp)
        if quantized:
            return runtimes + _ort_int8_runtimes(path, folder, threads)
        return runtimes + [Runtime("onnxruntime-fp32", "ONNX Runtime, float32, all graph "
                                   "optimizations", path, OrtModule(path, threads))]
    runtimes = [Runtime("pytorch-eager", "the model as given, PyTorch eager", None, model)]
    if not is_quantized(model):
        path = export(float_for_export(model), folder / "fp32.onnx")
        runtimes.append(Runtime("onnxruntime-fp32", "ONNX Runtime, float32, all graph "
                                "optimizations", path, OrtModule(path, threads)))
        return runtimes
    weights_only = export(float_for_export(float_view(model)), folder / "fp32.onnx")
    lowbit = lowbit_kind(model)
    if lowbit is not None:  # int4 as MatMulNBits, dynamic int8 as MatMulInteger: not QDQ
        path = export(model, folder / f"{lowbit}.onnx")
        return [*runtimes, Runtime(f"onnxruntime-{lowbit}", "ONNX Runtime's int4 / dynamic int8 "
                                   "kernels on nnzip's integers", path, OrtModule(path, threads)),
                Runtime("onnxruntime-fp32", "ONNX Runtime float32 with the dequantized weights",
                        weights_only, OrtModule(weights_only, threads))]
    if calibration is None:
        qdq = simulation = export(model, folder / "qdq.onnx")
    elif sequence_dim is not None:
        # A transformer: no integer chain, which quantizes attention's mask add (a range of
        # ±3.4e38: MiniLM's embeddings fell to cosine 0.32); ORT fuses the Linears of nnzip's
        # own file, and OpenVINO gets NNCF's placement.
        qdq = simulation = export(model, folder / "qdq.onnx")
        openvino_placed(model, simulation, calibration, folder / "qdq-openvino.onnx")
    else:  # the integer chain for the integer runtimes, nnzip's own file for the simulation
        simulation = export(model, folder / "qdq-simulation.onnx")
        qdq = chain_quantized(model, simulation, calibration, folder / "qdq.onnx")
    return runtimes + _ort_int8_runtimes(qdq, folder, threads, simulation) + [
        Runtime("onnxruntime-fp32", "ONNX Runtime float32 with the dequantized weights, "
                "activations in float (int8-rounded weights, fp32 file)", weights_only,
                OrtModule(weights_only, threads))]


def _ort_int8_runtimes(qdq: Path, folder: Path, threads: int,
                       simulation: Path | None = None) -> list[Runtime]:
    """ONNX Runtime's forms of a QDQ file: fused integer kernels, QOperator, and float kernels
    on ``simulation`` (the file as nnzip quantized it; ``qdq`` itself by default)."""
    simulation = simulation or qdq
    qoperator = to_qoperator(qdq, folder / "qoperator.onnx")
    return [
        Runtime("onnxruntime-int8-qdq", "QDQ model, ONNX Runtime fuses DQ→op→Q into integer "
                "kernels", qdq, OrtModule(qdq, threads, "all")),
        Runtime("onnxruntime-int8-qoperator", "the integer-operator form ORT saved from the QDQ "
                "model (QLinearConv, ...)", qoperator, OrtModule(qoperator, threads, "all")),
        Runtime("onnxruntime-dequantized", "QDQ model with fusions off: float kernels on the "
                "dequantized integer weights (nnzip's simulation)", simulation,
                OrtModule(simulation, threads, "basic")),
    ]


#: The files of :func:`build_runtimes` for a low-bit model (named by
#: :func:`nnzip.runtime.onnx_lowbit.lowbit_kind`), which OpenVINO reads too.
LOWBIT_FILES = {"int4-matmulnbits": "int4 MatMulNBits",
                "int8-dynamic": "dynamic int8 (DynamicQuantizeLinear, MatMulInteger)"}


def openvino_runtimes(folder: Path, threads: int = 1
                      ) -> tuple[list[Runtime], list[dict[str, str]]]:
    """OpenVINO candidates of the ONNX files :func:`build_runtimes` wrote in ``folder``, and the
    ones skipped, with why: OpenVINO not installed, no BF16 on this CPU, no quantized graph, or
    a model OpenVINO cannot compile. Never raises for a missing or failing OpenVINO: ONNX Runtime
    and PyTorch remain.

    The int8 candidates read a transformer's ``qdq-openvino.onnx`` where there is one (NNCF's
    placement: :func:`nnzip.runtime.onnx_export.openvino_placed`), else ``qdq.onnx``; an int4
    (MatMulNBits) or dynamic int8 (MatMulInteger) file is read as it is, float layers in f32 and
    in bf16."""
    from nnzip.runtime import openvino

    missing = openvino.openvino_missing()
    if missing is not None:
        return [], [{"runtime": "openvino-*", "reason": missing}]
    capabilities = openvino.cpu_capabilities()
    # The ONNX files build_runtimes wrote, or the IR of a model given as OpenVINO IR.
    fp32, qdq = (next((path for path in (folder / f"{stem}.onnx", folder / f"{stem}.xml")
                       if path.is_file()), folder / f"{stem}.onnx") for stem in ("fp32", "qdq"))
    # A transformer's QDQ file with quantization placed as NNCF places it (build_runtimes):
    # the chain ONNX Runtime wants is not what OpenVINO runs fast, nor right.
    if (folder / "qdq-openvino.onnx").is_file():
        qdq = folder / "qdq-openvino.onnx"
    plans = [("openvino-fp32", fp32, "f32", "OpenVINO, float32 (precision hint pinned to f32)"),
             ("openvino-bf16", fp32, "bf16", "OpenVINO, bfloat16 float layers (AMX / AVX-512 "
              "BF16)"),
             ("openvino-int8", qdq, "f32", "OpenVINO reading nnzip's QDQ model: u8/i8 kernels "
              "where it fuses, f32 elsewhere"),
             # NNCF's int8 models run their float parts in bf16 by default where the CPU has it
             # (AMX), and were faster for it: the same choice, checked for accuracy like the rest.
             ("openvino-int8-bf16", qdq, "bf16", "OpenVINO reading nnzip's QDQ model: u8/i8 "
              "kernels where it fuses, bfloat16 elsewhere (AMX / AVX-512 BF16)")]
    lowbit_files = [path for path in sorted(folder.glob("*.onnx"))
                    if all(part in LOWBIT_FILES for part in path.stem.split("+"))]
    for path in lowbit_files:  # int4 MatMulNBits, dynamic int8: OpenVINO reads them too
        kind = " and ".join(LOWBIT_FILES[part] for part in path.stem.split("+"))
        plans += [(f"openvino-{path.stem}" + ("-bf16" if precision == "bf16" else ""), path,
                   precision, f"OpenVINO reading nnzip's {kind} file, {precision} float layers")
                  for precision in ("f32", "bf16")]
    runtimes, skipped = [], []
    for name, path, precision, description in plans:
        if precision == "bf16" and "BF16" not in capabilities:
            skipped.append({"runtime": name, "reason": "this CPU has no BF16 (OpenVINO CPU "
                            f"capabilities: {', '.join(capabilities)})"})
            continue
        if not path.is_file():
            reason = ("the model is quantized: its float form is not available here"
                      if path != qdq else "no static QDQ graph: the model is not quantized, "
                      "or it is int4 / dynamic int8 (its own candidates read that file)"
                      if lowbit_files else "the model is not quantized: no QDQ graph to run "
                      "as int8")
            skipped.append({"runtime": name, "reason": reason})
            continue
        for static in (False, True):
            variant = name + ("-static" if static else "")
            try:
                module = openvino.OvModule(path, threads, precision, static_shapes=static)
                # What the CPU plugin really executes, per layer (compiles a static variant).
                layer_precisions = openvino.runtime_precisions(module)
            except NnzipError as error:
                skipped.append({"runtime": variant, "reason": str(error)})
                continue
            shape = "one static shape per batch size" if static else "dynamic batch size"
            runtimes.append(Runtime(variant, f"{description}; {shape}", path, module,
                                    layer_precisions=layer_precisions,
                                    integer_ops=openvino.integer_layer_count(layer_precisions)))
    return runtimes, skipped


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


def check_embedding(runtimes: list[Runtime], data: DataSplits, samples: int,
                    min_cosine: float) -> None:
    """Cosine and STS Spearman of each runtime of a sentence encoder vs the first (the model as
    given): the mean cosine of its embeddings of up to ``samples`` validation sentences to the
    first runtime's decides correctness (at least ``min_cosine``); the task's metric, STS
    Spearman on the test pairs, and its change are recorded beside it
    (:func:`nnzip.evaluate.embedding.fidelity`, :func:`~nnzip.evaluate.embedding.sts_spearman`).
    """
    from nnzip.evaluate.embedding import fidelity, sts_spearman

    split = data.val if len(data.val) else data.test
    inputs = split.tensors[0][:samples]
    validation = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, inputs),
                                             batch_size=256)
    pairs = getattr(data, "pairs", None)
    test = data.loader("test", batch_size=256) if pairs is not None else None
    reference = reference_spearman = None
    for runtime in runtimes:
        embeddings = predict_logits(runtime.module, validation)
        if reference is None:
            reference = embeddings
        runtime.cosine = round(fidelity(embeddings, reference), 6)
        if test is not None:
            spearman = sts_spearman(pairs.sentences(), predict_logits(runtime.module, test), pairs)
            if reference_spearman is None:
                reference_spearman = spearman
            runtime.task_metric = {"spearman": round(spearman, 6),
                                   "spearman_change": round(spearman - reference_spearman, 6)}
        runtime.correct = runtime.candidate and runtime.cosine >= min_cosine


def check_runtimes(runtimes: list[Runtime], data: DataSplits, samples: int, *,
                   max_accuracy_change: float, min_cosine: float) -> list[dict[str, str]]:
    """Check every runtime against the first by the task of ``data``
    (:func:`nnzip.tasks.task_of`): a sentence encoder by cosine (:func:`check_embedding`),
    the others by accuracy (:func:`check_accuracy`). Returns the candidates found incorrect,
    each with why, as :attr:`Deployment.skipped` lists them."""
    if task_of(data).name == "embed":
        check_embedding(runtimes, data, samples, min_cosine)
        return [{"runtime": r.name, "reason": f"mean cosine to the model as given "
                 f"{r.cosine:.4f} on the validation sentences (at least {min_cosine:g} "
                 "required)"} for r in runtimes if r.candidate and not r.correct]
    check_accuracy(runtimes, data, samples, max_accuracy_change)
    return [{"runtime": r.name, "reason": f"accuracy changed by "
             f"{r.accuracy_change_points:+.2f} points (more than "
             f"{max_accuracy_change:g} allowed)"}
            for r in runtimes if r.candidate and not r.correct]


def sequence_dim_of(example: torch.Tensor) -> int | None:
    """1 for token ids (integers of shape (batch, tokens)): that dimension is exported dynamic,
    so sentences of any length run; None for anything else."""
    return 1 if example.ndim == 2 and not example.is_floating_point() else None


def _smaller_first(runtime: Runtime) -> float:
    return float("inf") if runtime.file_bytes is None else runtime.file_bytes


def pick(runtimes: list[Runtime], batch_size: int, size_tolerance: float = 0.03) -> Runtime:
    """The correct runtime to deploy at ``batch_size``: of those whose p50 latency is within
    ``size_tolerance`` (a fraction) of the fastest correct one's, the smallest file (a runtime
    without a file, PyTorch eager, last), then the faster.

    Why a tolerance: two runtimes a few per cent apart in one interleaved run swap places in the
    next (the spread of repeated runs on this kind of machine is of that order), while their
    files can differ 3× (int8 vs float weights). ``size_tolerance=0`` keeps the strictly fastest.
    """
    correct = [r for r in runtimes if r.correct and batch_size in r.latency_ms]
    if not correct:
        raise NnzipError(f"no correct runtime was timed at batch size {batch_size}")
    fastest = min(r.latency_ms[batch_size]["p50"] for r in correct)
    tied = [r for r in correct if r.latency_ms[batch_size]["p50"] <= fastest * (1 + size_tolerance)]
    return min(tied, key=lambda r: (_smaller_first(r), r.latency_ms[batch_size]["p50"]))


def deploy(model: nn.Module, data: DataSplits, out_dir: str | Path, *,
           batch_sizes: tuple[int, ...] = (1, 64), threads: int = 1, samples: int = 2000,
           max_accuracy_change: float = 0.2, repeats: int = 50,
           original: nn.Module | None = None, target_batch: int | None = None,
           openvino: bool = True, min_cosine: float = 0.99,
           size_tolerance: float = 0.03) -> Deployment:
    """Measure every runtime of ``model``, keep the fastest correct one per batch size, and save
    the winner at ``target_batch`` (default: ``batch_sizes[0]``).

    ``original`` (e.g. the float model before compression) is timed beside the candidates in
    PyTorch eager, as the baseline of the reported speedup; it is never chosen.

    ``max_accuracy_change`` (points, on up to ``samples`` validation inputs) is how far a runtime
    may move accuracy away from the model as given and still count as correct. For a sentence
    encoder (data of task ``embed``) correct means instead a mean cosine of at least
    ``min_cosine`` to the embeddings of the model as given (:func:`check_embedding`).
    ``openvino=False`` leaves the OpenVINO candidates out (recorded as skipped).
    ``size_tolerance``: runtimes this close to the fastest (a fraction of its p50) are tied, and
    the smallest file of them is kept (:func:`pick`).
    """
    if not 0 <= size_tolerance <= 1:
        raise NnzipError(f"size_tolerance is a fraction of the fastest latency in [0, 1], got "
                         f"{size_tolerance}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise NnzipError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if max_accuracy_change < 0:
        raise NnzipError("max_accuracy_change is in accuracy points and must be ≥ 0")
    if not 0.0 < min_cosine <= 1.0:
        raise NnzipError(f"min_cosine is a cosine similarity in (0, 1], got {min_cosine}")
    target_batch = batch_sizes[0] if target_batch is None else target_batch
    if target_batch not in batch_sizes:
        raise NnzipError(f"target batch size {target_batch} is not among the timed batch sizes "
                         f"{list(batch_sizes)}: add it to batch_sizes")
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
            if openvino:
                extra, skipped = openvino_runtimes(folder / "runtimes", threads)
                runtimes += extra
            else:
                skipped = [{"runtime": "openvino-*", "reason": "not asked for (openvino=False)"}]
            if runtimes[0].name == "model-as-given" and runtimes[0].path.suffix == ".xml":
                skipped.insert(0, {"runtime": "onnxruntime-*", "reason": "the model is an "
                                   "OpenVINO IR, which ONNX Runtime cannot read: deploy its "
                                   ".onnx or PyTorch form to compare"})
            if original is not None:
                runtimes.append(Runtime("original-pytorch-eager", "the original model, "
                                        "PyTorch eager (baseline, not a candidate)", None,
                                        set_eval(original), candidate=False))
            skipped += check_runtimes(runtimes, data, samples, min_cosine=min_cosine,
                                      max_accuracy_change=max_accuracy_change)
        for runtime in runtimes:
            if runtime.path is not None and runtime.path.suffix == ".onnx" \
                    and runtime.integer_ops is None:
                runtime.integer_ops = integer_op_count(op_counts(runtime.path))
            if runtime.path is not None:
                runtime.file_bytes = file_bytes(runtime.path)
                if runtime.path.suffix == ".onnx":
                    level = getattr(runtime.module, "optimization", "all")
                    runtime.integer_nodes = integer_summary(integer_report(runtime.path,
                                                                           optimization=level))
        # Only what may be chosen, and the baseline, is timed: a wrong runtime's speed is moot.
        timed = [runtime for runtime in runtimes if runtime.correct or not runtime.candidate]
        chosen_by_batch = {}
        for batch in batch_sizes:
            timings = compare_latency([runtime.module for runtime in timed], threads=threads,
                                      repeats=repeats, batch=probe_batch(data, batch))
            for runtime, timing in zip(timed, timings, strict=True):
                runtime.latency_ms[batch] = {key: round(value, 4) for key, value in timing.items()}
            chosen_by_batch[batch] = pick(timed, batch, size_tolerance)
        chosen = chosen_by_batch[target_batch]
        path = _save_chosen(chosen, model, example, folder)
        for runtime in runtimes:  # named as they will be once the folder is in place
            if runtime.path is not None and Path(runtime.path).is_relative_to(folder):
                runtime.path = out_dir / Path(runtime.path).relative_to(folder)
        path = out_dir / path.relative_to(folder)
        deployment = Deployment(chosen, runtimes, path, _machine(threads), chosen_by_batch,
                                target_batch, skipped)
        write_text(folder / "deploy.json", json.dumps(deployment.summary(), indent=2) + "\n")
    return deployment


def _save_chosen(chosen: Runtime, model: nn.Module, example: torch.Tensor,
                 out_dir: Path) -> Path:
    """The winner in its runtime's own format: .pt2, .onnx, or OpenVINO IR (.xml + .bin)."""
    from nnzip.models.io import export_model
    from nnzip.runtime.openvino import OvModule, save_ir

    if chosen.path is None:
        return export_model(model, out_dir / "model.pt2", example)
    if isinstance(chosen.module, OvModule):
        # Inside the staged folder: the .xml and .bin appear together when it is swapped in.
        return save_ir(chosen.module, out_dir / "model.xml")
    with atomic_path(out_dir / "model.onnx") as tmp:
        shutil.copyfile(chosen.path, tmp)
    return out_dir / "model.onnx"


def _machine(threads: int) -> dict:
    """machine_info plus the runtimes' versions and what OpenVINO's CPU plugin can run fast."""
    from nnzip.runtime import openvino

    machine = machine_info(threads) | {"onnxruntime_version": _ort_version(),
                                       "openvino_version": None}
    if openvino.openvino_missing() is None:
        machine["openvino_version"] = openvino.openvino_version()
        machine["openvino_cpu_capabilities"] = openvino.cpu_capabilities()
    return machine


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
