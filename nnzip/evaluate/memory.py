"""Peak tensor memory of one inference, from the allocator events the torch profiler records.

The profiler (``profile_memory=True``) logs every CPU tensor allocation and free as a
``[memory]`` event with a signed byte count; replaying them in time order gives the live bytes at
every instant, whose maximum is the forward pass's peak working set.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from nnzip.core.modes import eval_mode
from nnzip.evaluate.latency import given_or_random_batch
from nnzip.evaluate.size import state_tensor_bytes


def _peak_allocated_bytes(prof: profile) -> int:
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for frees
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Mute file descriptor 2 while the profiler runs.

    Kineto writes 'USDT ... profiler_start/stop' lines straight to the C-level stderr on every
    profile, and no torch setting turns them off; they would clutter every CLI run.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (e.g. an embedded interpreter)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_bytes(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                      batch_size: int = 64, batch: torch.Tensor | None = None) -> int:
    """Peak bytes of tensor memory during one inference of ``batch``, or of a random float batch
    of ``batch_size`` samples shaped ``input_shape``.

    = parameter and buffer bytes (packed quantized weights included) + the peak of the running
    sum of allocations during the forward pass. The input batch itself is allocated beforehand
    and is not included; scratch memory that bypasses PyTorch's allocator (e.g. inside oneDNN
    kernels) is invisible to the profiler.
    """
    batch = given_or_random_batch(batch, input_shape, batch_size, "peak_memory_bytes")
    with eval_mode(model), torch.inference_mode():
        with _native_stderr_silenced(), \
                profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            output = model(batch)
        del output
    return state_tensor_bytes(model) + _peak_allocated_bytes(prof)
