"""Wall-clock latency of a forward pass, reported as median and 95th percentile.

Each call is timed on its own with :func:`time.perf_counter` after a warm-up, at a fixed thread
count so that results do not depend on whatever else set torch's global thread pool.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from nnzip.evaluate._modes import eval_mode


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)``; restore the old count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def random_batch(input_shape: tuple[int, ...], batch_size: int, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal batch: timings must not depend on the data, runs must repeat."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *input_shape, generator=generator)


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1,
                    threads: int = 1, warmup: int = 10, repeats: int = 50) -> dict[str, float]:
    """Latency in milliseconds of one forward pass: ``{"p50": ..., "p95": ...}``."""
    batch = random_batch(input_shape, batch_size)
    times_ms = np.empty(max(repeats, 1))
    with eval_mode(model), fixed_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        for index in range(len(times_ms)):
            start = time.perf_counter()
            model(batch)
            times_ms[index] = (time.perf_counter() - start) * 1000.0
    return {"p50": float(np.median(times_ms)), "p95": float(np.percentile(times_ms, 95))}
