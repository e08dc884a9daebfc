"""How a model is measured: one small dataclass, so a run is described by data, not by flags."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from nnzip.evaluate.score import ScoreWeights

#: The strongest severity of the shift suites (:mod:`nnzip.evaluate.shift`); 0 is clean data.
MAX_SHIFT_SEVERITY = 3

#: Which models :func:`nnzip.evaluate.evaluate` times on their deploy runtime (``runtime_timing``
#: on): only those quantized by nnzip, or every model.
DEPLOYED_TIMING = ("quantized", "always")


@dataclass
class EvalConfig:
    """Settings for :func:`nnzip.evaluate.evaluate`.

    Latency is taken at a fixed torch thread count (``threads``) so numbers are comparable across
    runs and machines; the previous thread count is restored afterwards. ``robustness_samples``
    limits the (slow) robustness checks to the first N test samples; ``None`` uses the whole test
    set.

    ``runtime_timing`` times a model quantized by nnzip on the runtime ``nnzip deploy`` would
    choose (the fastest correct one per batch size; the row's ``runtime`` names it), not on its
    PyTorch simulation; off, such a model is timed in PyTorch eager, as a float model is.

    ``score_weights`` weigh the report's composite score (:mod:`nnzip.evaluate.score`); None
    takes a recipe's ``score:`` weights, else the defaults.
    ``shift_severities`` are the severities (1–3) of the shift suites (:mod:`nnzip.evaluate.shift`),
    empty to measure no shift; ``shift_samples`` limits each shifted set to its first N test
    samples (STS pairs for an encoder), ``None`` uses them all; ``shift_seed`` seeds the shifts.
    ``deployed_timing`` says which models get that: ``"quantized"`` (the default) only models
    quantized by nnzip, whose PyTorch form is a simulation; ``"always"`` float models too (a
    channel-pruned, BatchNorm-folded network runs on ONNX Runtime or OpenVINO fp32/bf16 once
    deployed, and a search comparing trials' latency must compare what each would deploy).
    """

    threads: int = 1
    warmup: int = 10
    repeats: int = 50
    batch_sizes: tuple[int, ...] = (1, 64)
    noise_sigmas: tuple[float, ...] = (0.1, 0.2, 0.3)
    fgsm_epsilons: tuple[float, ...] = (0.05, 0.1, 0.2)
    robustness_samples: int | None = None
    measure_latency: bool = True
    runtime_timing: bool = True
    deployed_timing: str = "quantized"
    eval_batch_size: int = 256
    score_weights: ScoreWeights | None = None
    shift_severities: tuple[int, ...] = (1, 2, 3)
    shift_samples: int | None = 500
    shift_seed: int = 0

    def __post_init__(self) -> None:
        """Refuse a count below one (a negative ``robustness_samples`` once sliced the test set
        from its end: -5 measured 9 995 images)."""
        from nnzip.errors import NnzipError

        counts = {"threads": self.threads, "repeats": self.repeats,
                  "eval_batch_size": self.eval_batch_size,
                  "robustness_samples": self.robustness_samples,
                  "shift_samples": self.shift_samples,
                  **{f"batch_sizes[{i}]": size for i, size in enumerate(self.batch_sizes)}}
        for name, value in counts.items():
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, numbers.Integral) or value < 1):
                raise NnzipError(f"EvalConfig {name} must be a whole number of at least 1, "
                                 f"got {value!r}")
        for severity in self.shift_severities:
            if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) \
                    or not 1 <= severity <= MAX_SHIFT_SEVERITY:
                raise NnzipError(f"EvalConfig shift_severities must be whole numbers from 1 to "
                                 f"{MAX_SHIFT_SEVERITY}, got {severity!r}")
        if self.deployed_timing not in DEPLOYED_TIMING:
            raise NnzipError(f"EvalConfig deployed_timing must be one of "
                             f"{', '.join(map(repr, DEPLOYED_TIMING))}, got "
                             f"{self.deployed_timing!r}")
        if self.warmup < 0:
            raise NnzipError(f"EvalConfig warmup must be at least 0, got {self.warmup!r}")
