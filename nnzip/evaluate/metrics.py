"""The one measurement entry point: everything the report says about one model.

``evaluate`` returns a flat, JSON-ready dict whose keys (:data:`REPORT_MODEL_KEYS`) are stable,
so reports from different runs and stages can be compared key by key.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from torch import nn

from nnzip.core.modes import eval_mode
from nnzip.data.splits import DataSplits, describe_inputs, probe_batch
from nnzip.errors import NnzipError
from nnzip.evaluate.config import EvalConfig
from nnzip.evaluate.energy import measure_energy
from nnzip.evaluate.energy_model import estimate_energy
from nnzip.evaluate.flops import count_flops
from nnzip.evaluate.latency import compare_latency, fixed_threads
from nnzip.evaluate.memory import peak_memory_bytes
from nnzip.evaluate.shift import shift_report
from nnzip.evaluate.size import artifact_bytes, count_nonzero, count_params, file_bytes

log = logging.getLogger(__name__)

REPORT_MODEL_KEYS = (
    "name", "stage", "task", "params", "nonzero_params", "size_bytes", "compression_ratio",
    "flops", "macs", "latency_ms", "speedup", "runtime", "runtime_note", "pytorch_latency_ms",
    "pytorch_speedup", "throughput_per_s", "peak_memory_bytes",
    "accuracy", "top5", "agreement", "perplexity", "loss", "kl_to_reference", "spearman",
    "fidelity", "neighbour_overlap", "robustness", "energy_j", "energy_note",
    "energy_estimate_j", "energy_estimate", "confidence", "score", "shift",
)
#: Keys added after reports were first written: a report.json from before them reads as null.
LATER_REPORT_MODEL_KEYS = ("runtime", "runtime_note", "pytorch_latency_ms", "pytorch_speedup",
                           "energy_estimate_j", "energy_estimate", "confidence", "score",
                           "shift")
#: The task metrics (:mod:`nnzip.tasks`); each task fills its own, the others are None.
TASK_METRIC_KEYS = ("accuracy", "top5", "agreement", "perplexity", "loss", "kl_to_reference",
                    "spearman", "fidelity", "neighbour_overlap")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _error_text(error: BaseException) -> str:
    """The model's own error, type and first line: 'RuntimeError: mat1 and mat2 ...'."""
    return f"{type(error).__name__}: {_first_line(error)}"


def _input_hints(data: DataSplits) -> str:
    """What a user with the old reading of their .npz may need to change, if anything."""
    hints = []
    if not data.input_dtype.is_floating_point:
        hints.append("integer inputs are kept as int64 token ids; if they are features or "
                     "pixels, store x as float (x.astype('float32'))")
    if len(data.input_shape) == 2:
        hints.append("a 3-D .npz array is read as (N, C, L) signals; for grey images (N, H, W) "
                     "add layout='NHW' to the .npz so they gain a channel axis")
    return "".join(f"; {hint}" for hint in hints)


def check_model_accepts(model: nn.Module, data: DataSplits, name: str) -> None:
    """Fail early, in the user's terms, if ``model`` cannot classify ``data``'s test samples.

    The probes are real test inputs (:func:`nnzip.data.probe_batch`), so a model that wants
    integer token ids gets them; a failure names the probe's shape and dtype and the model's own
    error rather than guessing at a cause.
    """
    if len(data.test) == 0:
        raise NnzipError(f"data {data.name!r} has an empty test split: pass data with test samples")
    sample = probe_batch(data, 1)
    try:
        with eval_mode(model), torch.no_grad():
            output = model(sample)
    except Exception as error:
        raise NnzipError(
            f"model {name!r} rejects the data (per-sample input shape {tuple(data.input_shape)}; "
            f"probed with one test sample, {describe_inputs(sample)}): {_error_text(error)}: "
            f"pass data matching the model's input{_input_hints(data)}") from error
    from nnzip.tasks import task_of

    task = task_of(data)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
    expected = task.output_shapes(data)
    if shape not in expected:
        wanted = ("a classifier with one output per class of the data" if task.name == "classify"
                  else f"a model for the {task.name} task ({task.description})")
        raise NnzipError(
            f"model {name!r} returns {shape if shape else type(output).__name__} for one sample "
            f"({describe_inputs(sample)}), expected {task.output_name} of shape {expected[0]}: "
            f"pass {wanted}{_input_hints(data)}")
    # Latency, memory and accuracy run batches: a model traced or exported with a fixed batch
    # size of 1 would otherwise fail deep inside a measurement. The pair is real data too, so a
    # failure here is about the batch, not about the values.
    pair = probe_batch(data, 2)
    try:
        with eval_mode(model), torch.no_grad():
            model(pair)
    except Exception as error:
        raise NnzipError(
            f"model {name!r} accepts one sample but not a batch of 2 ({describe_inputs(pair)}): "
            f"{_error_text(error)}: pass a model with a dynamic batch dimension (e.g. "
            "torch.export with dynamic_shapes=torch.export.Dim)") from error


def _latency(model: nn.Module, reference: nn.Module | None, data: DataSplits,
             config: EvalConfig) -> dict:
    """Latency per batch size, the speedup over ``reference`` timed interleaved with it, and the
    runtime that ran it: a model quantized by nnzip (any PyTorch model with
    ``config.deployed_timing="always"``) on the runtime ``deploy`` would choose
    (:func:`nnzip.runtime.timing.runtime_latency`), any other model in PyTorch eager."""
    from nnzip.runtime.timing import deployable, runtime_latency, runtime_name

    keys = [f"batch{b}" for b in config.batch_sizes]
    timed = {"runtime_note": None, "pytorch_latency_ms": None, "pytorch_speedup": None}
    if not config.measure_latency:
        return {"latency_ms": {k: {"p50": None, "p95": None} for k in keys},
                "speedup": {k: None for k in keys}, "runtime": None, **timed}
    if deployable(model, always=config.deployed_timing == "always"):
        quantized = deployable(model)
        what = "the PyTorch simulation of the quantized model" if quantized else "PyTorch eager"
        if not config.runtime_timing:
            if quantized:  # a float model in PyTorch is what it is: nothing to warn about
                timed["runtime_note"] = (f"{what}: runtime timing is off "
                                         "(EvalConfig.runtime_timing)")
        else:
            try:
                return runtime_latency(model, reference, data, config)
            except NnzipError as error:  # e.g. no ONNX form: PyTorch is all there is
                log.info("timing the model in PyTorch: %s", error)
                timed["runtime_note"] = (f"{what}: no deploy runtime could be built "
                                         f"({_first_line(error)})")
    latency, speedup = {}, {}
    for key, batch_size in zip(keys, config.batch_sizes, strict=True):
        models = [model] if reference is None else [model, reference]
        timings = compare_latency(models, threads=config.threads, warmup=config.warmup,
                                  repeats=config.repeats, batch=probe_batch(data, batch_size))
        latency[key] = timings[0]
        speedup[key] = timings[-1]["p50"] / timings[0]["p50"] if timings[0]["p50"] else None
    return {"latency_ms": latency, "speedup": speedup,
            "runtime": dict.fromkeys(keys, runtime_name(model)), **timed}


def _energy(model: nn.Module, data: DataSplits, config: EvalConfig,
            batch_size: int) -> tuple[float | None, str]:
    if not config.measure_latency:
        return None, "not measured: timing measurements are off (EvalConfig.measure_latency)"
    batch = probe_batch(data, batch_size)
    with eval_mode(model), fixed_threads(config.threads), torch.inference_mode():
        joules, note = measure_energy(partial(model, batch), config.repeats)
    if joules is None:
        return None, note
    return joules, f"RAPL package energy per batch-{batch_size} forward, whole CPU package"


def evaluate(model: nn.Module, data: DataSplits, *, name: str = "model",
             stage: str = "baseline", reference: nn.Module | None = None,
             reference_size_bytes: int | None = None,
             artifact_path: str | Path | None = None,
             config: EvalConfig | None = None) -> dict:
    """Measure ``model`` on ``data``'s test split; one report entry with :data:`REPORT_MODEL_KEYS`.

    The task metrics come from the data's task (:mod:`nnzip.tasks`): accuracy for a classifier,
    perplexity for a language model, STS Spearman and fidelity for a sentence encoder; the keys
    of the other tasks are None. ``reference`` is the model it was compressed from: the
    compression ratio divides its size (``reference_size_bytes``, or measured) by this model's,
    ``agreement`` compares their test predictions, ``confidence`` gives the task metric's
    difference against it with a paired-bootstrap interval and a p-value
    (:mod:`nnzip.evaluate.confidence`), and ``speedup`` (reference p50 / model p50,
    per batch size) comes from timing the two interleaved, so machine drift cannot fake it.
    A model quantized by nnzip is timed on the runtime ``nnzip deploy`` would choose at each
    batch size (``runtime`` names it; ``pytorch_latency_ms`` / ``pytorch_speedup`` keep its
    PyTorch simulation, timed in the same rounds) unless ``config.runtime_timing`` is off;
    with ``config.deployed_timing="always"`` a float model is too (its PyTorch eager timing kept
    beside it).
    Without a reference the model is its own (ratio, agreement and speedup 1.0).
    ``energy_estimate_j`` is the estimated energy of one batch-1 inference from its operation
    counts and memory traffic (:mod:`nnzip.evaluate.energy_model`), beside ``energy_j``, the
    RAPL measurement where the machine has one. The size is
    that of ``artifact_path`` when given, else of the state dict serialized as safetensors. The
    model's training/eval mode is left as it was.
    """
    config = config or EvalConfig()
    check_model_accepts(model, data, name)
    if reference is not None:
        check_model_accepts(reference, data, f"{name} reference")

    size_bytes = file_bytes(artifact_path) if artifact_path is not None else artifact_bytes(model)
    if size_bytes == 0:
        raise NnzipError(f"artifact of model {name!r} is empty (0 bytes): pass the saved model")
    if reference_size_bytes is None:
        reference_size_bytes = artifact_bytes(reference) if reference is not None else size_bytes
    flops, macs = count_flops(model, sample=probe_batch(data, 1))

    largest_batch = max(config.batch_sizes)
    timing = _latency(model, reference, data, config)
    p50_largest = timing["latency_ms"][f"batch{largest_batch}"]["p50"]
    throughput = largest_batch / (p50_largest / 1000.0) if p50_largest else None
    energy_j, energy_note = _energy(model, data, config, largest_batch)
    energy_estimate = estimate_energy(model, probe_batch(data, 1))

    from nnzip.tasks import task_of

    task = task_of(data)
    measured = task.measure(model, data, reference, config)
    metrics = {key: measured.get(key) for key in TASK_METRIC_KEYS}
    return {
        "name": name,
        "stage": stage,
        "task": task.name,
        "params": count_params(model),
        "nonzero_params": count_nonzero(model),
        "size_bytes": size_bytes,
        "compression_ratio": reference_size_bytes / size_bytes,
        "flops": flops,
        "macs": macs,
        **timing,
        "throughput_per_s": throughput,
        "peak_memory_bytes": peak_memory_bytes(model, batch=probe_batch(data, largest_batch)),
        **metrics,
        "robustness": measured["robustness"],
        "energy_j": energy_j,
        "energy_note": energy_note,
        # Counted, not timed: every machine gets it (energy_j stays the RAPL measurement).
        "energy_estimate_j": energy_estimate["total_j"] if energy_estimate else None,
        "energy_estimate": energy_estimate,
        # The task metric's difference against ``reference`` (nnzip.evaluate.confidence);
        # the composite score is set by build_report, against the report's baseline row.
        "confidence": measured.get("confidence"),
        "score": None,
        "shift": shift_report(model, data, reference, config),
    }
