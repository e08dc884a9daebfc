"""Time a deployable model on the runtime ``deploy`` would choose, not on its PyTorch simulation.

A model quantized by nnzip runs in PyTorch as a *simulation*: float kernels on fake-quantized
tensors, slower than the float model it came from (LeNet-5 W8A8: 0.6× the baseline at batch 1),
while the same model deployed on ONNX Runtime's integer kernels runs ~5× faster. A report that
times the simulation measures something nobody will run. :func:`runtime_latency` therefore
builds the runtimes :func:`nnzip.runtime.deploy` builds (:func:`build_runtimes`, so candidates
added there are timed here too), keeps those that are correct by deploy's rule, and at *each*
batch size times them interleaved with the reference (:func:`compare_latency`): the row's
latency is the fastest correct runtime's at that batch size, and the row says which it was.
A float model gets the same with ``EvalConfig(deployed_timing="always")`` (a search sets it):
its candidates are ONNX Runtime fp32 and OpenVINO fp32/bf16 beside PyTorch eager (ResNet-20 at
batch 1 on an AMX Xeon: OpenVINO bf16 0.17 ms against PyTorch eager's 1.9 ms).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from torch import nn

from nnzip.core.modes import set_eval
from nnzip.data.splits import DataSplits, calibration_batches, probe_batch
from nnzip.errors import NnzipError
from nnzip.evaluate.config import EvalConfig
from nnzip.evaluate.latency import compare_latency, fixed_threads
from nnzip.runtime.deploy import build_runtimes, check_accuracy, openvino_runtimes
from nnzip.runtime.onnx_export import is_quantized

log = logging.getLogger(__name__)

#: What ``deploy`` calls correct, by its defaults: at most 0.2 accuracy points away from the model
#: as given, on up to 2 000 validation samples.
CORRECTNESS_SAMPLES = 2000
MAX_ACCURACY_CHANGE_POINTS = 0.2
PYTORCH = "pytorch-eager"


def deployable(model: nn.Module, always: bool = False) -> bool:
    """Whether a report times ``model`` on its deployment runtime: a model quantized by nnzip,
    whose PyTorch form is a simulation of the integer model; with ``always``
    (``EvalConfig.deployed_timing``) a float PyTorch model too. A model that already is a
    runtime's file (an ``.onnx`` or OpenVINO IR loaded as given) is timed as it is."""
    from nnzip.runtime.openvino import OvModule
    from nnzip.runtime.session import OrtModule

    if isinstance(model, OrtModule | OvModule):
        return False
    return is_quantized(model) or always


def runtime_name(model: nn.Module) -> str:
    """What a model timed as given runs on: ONNX Runtime for an ``OrtModule`` (an .onnx file
    loaded by ``nnzip eval``), else PyTorch eager."""
    from nnzip.runtime.session import OrtModule

    return "onnxruntime" if isinstance(model, OrtModule) else PYTORCH


def runtime_latency(model: nn.Module, reference: nn.Module | None, data: DataSplits,
                    config: EvalConfig) -> dict:
    """Latency per batch size on the fastest correct deploy runtime, the runtime's name, and the
    PyTorch simulation's latency timed in the same rounds.

    Returns the report keys ``latency_ms``, ``speedup`` (reference p50 in PyTorch / runtime p50),
    ``runtime`` (name per batch key), ``runtime_note``, ``pytorch_latency_ms`` and
    ``pytorch_speedup``. Raises :class:`NnzipError` when no runtime can be built (e.g. an
    export refused); the caller then times PyTorch and says why.
    """
    from nnzip.tasks import task_of

    task = task_of(data).name
    if task != "classify":  # checked before any export: a transformer's export takes seconds
        raise NnzipError(f"deploy judges a runtime by classification accuracy, and this is a "
                         f"{task} model")
    keys = [f"batch{b}" for b in config.batch_sizes]
    with tempfile.TemporaryDirectory(prefix="nnzip-runtime-timing-") as folder, \
            fixed_threads(config.threads):
        # One export per stage: the runtimes are built once and timed at every batch size.
        runtimes = build_runtimes(set_eval(model), probe_batch(data, 2), Path(folder),
                                  config.threads, calibration=calibration_batches(data, 8))
        runtimes += openvino_runtimes(Path(folder), config.threads)[0]  # as deploy does
        check_accuracy(runtimes, data, CORRECTNESS_SAMPLES, MAX_ACCURACY_CHANGE_POINTS)
        correct = [runtime for runtime in runtimes if runtime.correct]
        pytorch = next(runtime for runtime in runtimes if runtime.name == PYTORCH)
        if pytorch not in correct:  # the model as given is always correct against itself
            correct.insert(0, pytorch)
        latency, speedup, chosen, pytorch_latency, pytorch_speedup = {}, {}, {}, {}, {}
        for key, batch_size in zip(keys, config.batch_sizes, strict=True):
            modules = [runtime.module for runtime in correct]
            if reference is not None:
                modules.append(reference)
            timings = compare_latency(modules, threads=config.threads, warmup=config.warmup,
                                      repeats=config.repeats,
                                      batch=probe_batch(data, batch_size))
            candidate_timings = timings[:len(correct)]
            best = min(range(len(correct)), key=lambda index: candidate_timings[index]["p50"])
            at_pytorch = correct.index(pytorch)
            latency[key], chosen[key] = candidate_timings[best], correct[best].name
            pytorch_latency[key] = candidate_timings[at_pytorch]
            # Without a reference the model is its own: its PyTorch form is the baseline.
            baseline_p50 = (timings[-1] if reference is not None else pytorch_latency[key])["p50"]
            speedup[key] = _ratio(baseline_p50, latency[key]["p50"])
            pytorch_speedup[key] = _ratio(baseline_p50, pytorch_latency[key]["p50"])
    return {"latency_ms": latency, "speedup": speedup, "runtime": chosen,
            "runtime_note": _note(runtimes), "pytorch_latency_ms": pytorch_latency,
            "pytorch_speedup": pytorch_speedup}


def _ratio(baseline_p50: float, p50: float) -> float | None:
    return baseline_p50 / p50 if p50 else None


def _note(runtimes: list) -> str:
    """Which runtimes were candidates, and why any was not counted as correct."""
    incorrect = [f"{runtime.name} ({runtime.accuracy_change_points:+.2f} points)"
                 for runtime in runtimes if runtime.candidate and not runtime.correct
                 and runtime.name != PYTORCH]
    text = (f"fastest correct of deploy's runtimes ({', '.join(r.name for r in runtimes)}), "
            f"per batch size")
    if incorrect:
        text += (f"; not correct (accuracy moved more than {MAX_ACCURACY_CHANGE_POINTS} points): "
                 f"{', '.join(incorrect)}")
    return text

