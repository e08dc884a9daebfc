"""Wall-clock latency of a forward pass, reported as median and 95th percentile.

Each call is timed on its own with :func:`time.perf_counter` after a warm-up, at a fixed thread
count so that results do not depend on whatever else set torch's global thread pool.

On a shared machine the speed of the CPU drifts over seconds (other tenants, frequency changes),
so two models timed one after the other can differ by 20 % for no reason of their own. Compared
models are therefore timed *interleaved*: in rounds, each round timing a slice of every model, so
that drift hits all of them alike and their ratio holds (benchmarks/latency_stability.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from nnzip.core.modes import eval_mode
from nnzip.errors import NnzipError


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
    """A seeded standard-normal float batch, for models timed by shape alone; runs must repeat.

    With data at hand, time :func:`nnzip.data.probe_batch` instead: it has the data's dtype.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *input_shape, generator=generator)


def given_or_random_batch(batch: torch.Tensor | None, input_shape: tuple[int, ...] | None,
                          batch_size: int, caller: str) -> torch.Tensor:
    """``batch`` when given, else a :func:`random_batch` of ``input_shape``."""
    if batch is not None:
        return batch
    if input_shape is None:
        raise NnzipError(f"{caller} needs input_shape (a seeded random float batch) or batch "
                         "(e.g. nnzip.data.probe_batch(data, batch_size))")
    return random_batch(input_shape, batch_size)


def _timed_calls(model: nn.Module, batch: torch.Tensor, count: int) -> list[float]:
    times_ms = []
    for _ in range(count):
        start = time.perf_counter()
        model(batch)
        times_ms.append((time.perf_counter() - start) * 1000.0)
    return times_ms


def compare_latency(models: list[nn.Module], input_shape: tuple[int, ...] | None = None,
                    batch_size: int = 1, threads: int = 1, warmup: int = 10, repeats: int = 50,
                    rounds: int = 10, batch: torch.Tensor | None = None, settle: int = 1,
                    seed: int = 0) -> list[dict[str, float]]:
    """Latency of several models timed interleaved: ``[{"p50": ms, "p95": ms}, ...]``.

    Every model gets ``warmup`` untimed calls, then ``rounds`` rounds in each of which every
    model, in a seeded random order, runs ``settle`` untimed calls and then ``repeats / rounds``
    timed calls on the same seeded batch (or on ``batch`` when given: real token ids for a
    transformer, say).

    Why both: the first call after another model's runs on caches (and AMX tile state) that
    model left. With a fixed order every model always follows the same neighbour, so that cost
    falls on some models and not others; measured, it moved ResNet-8's batch-64 speed-up on one
    OpenVINO model by 13 % against an identical one timed after a different neighbour. The
    untimed settling call removes the cost and the shuffled order spreads what is left.
    """
    batch = given_or_random_batch(batch, input_shape, batch_size, "compare_latency")
    rounds = max(1, min(rounds, repeats))
    per_round = max(1, -(-repeats // rounds))  # ceil: at least `repeats` samples in all
    samples: list[list[float]] = [[] for _ in models]
    order = np.random.default_rng(seed)
    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(eval_mode(model))
        stack.enter_context(fixed_threads(threads))
        stack.enter_context(torch.inference_mode())
        for model in models:
            _timed_calls(model, batch, warmup)
        for _ in range(rounds):
            for index in order.permutation(len(models)):
                _timed_calls(models[index], batch, settle)
                samples[index].extend(_timed_calls(models[index], batch, per_round))
    return [{"p50": float(np.median(times)), "p95": float(np.percentile(times, 95))}
            for times in samples]


def measure_latency(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                    batch_size: int = 1, threads: int = 1, warmup: int = 10, repeats: int = 50,
                    batch: torch.Tensor | None = None) -> dict[str, float]:
    """Latency in milliseconds of one forward pass: ``{"p50": ..., "p95": ...}``."""
    # settle=0: with one model, every call already follows a call of the same model.
    return compare_latency([model], input_shape, batch_size, threads, warmup, repeats,
                           batch=batch, settle=0)[0]
