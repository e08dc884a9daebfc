"""How a model is measured: one small dataclass, so a run is described by data, not by flags."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """Settings for :func:`nnzip.evaluate.evaluate`.

    Latency is taken at a fixed torch thread count (``threads``) so numbers are comparable across
    runs and machines; the previous thread count is restored afterwards. ``robustness_samples``
    limits the (slow) robustness checks to the first N test samples; ``None`` uses the whole test
    set.
    """

    threads: int = 1
    warmup: int = 10
    repeats: int = 50
    batch_sizes: tuple[int, ...] = (1, 64)
    noise_sigmas: tuple[float, ...] = (0.1, 0.2, 0.3)
    fgsm_epsilons: tuple[float, ...] = (0.05, 0.1, 0.2)
    robustness_samples: int | None = None
    measure_latency: bool = True
    eval_batch_size: int = 256
