"""Learned Step Size Quantization (LSQ, Esser et al. 2020): the quantization step is a parameter.

Forward, as any fake-quantizer: v = x / s, q = clip(round(v) + z, qmin, qmax), x̂ = (q − z) · s.
Backward, the straight-through estimator for x (gradient 1 inside the range, 0 where clipped)
and, for the step, the paper's eq. 3, which a rounding-aware gradient gives:

    ∂x̂/∂s = (q − z) − v   inside the range,      (q − z)   where clipped,

so the step feels how far each value sits from its level. The step's gradient is a sum over
every value it quantizes, so the paper scales it by g = 1 / sqrt(N · Qp) (N values, Qp the
largest positive level) to keep its update in proportion to the weights' updates. nnzip learns
one step per output channel of a weight (N = values per channel) and one per activation tensor
(N = features of one sample, the batch being averaged by the loss).

The same rule covers binary weights (the level function is the sign, range ±1) and ternary
weights (round, range ±1): :func:`lsq_fake_quantize` takes the level function.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nnzip.errors import NnzipError
from nnzip.quant.affine import MIN_SCALE


def lsq_gradient_scale(count: int, qmax: int) -> float:
    """The paper's step-size gradient scale g = 1 / sqrt(N · Qp)."""
    if count < 1 or qmax < 1:
        raise NnzipError(f"the LSQ gradient scale needs N ≥ 1 values and Qp ≥ 1, got N={count}, "
                         f"Qp={qmax}")
    return 1.0 / math.sqrt(count * qmax)


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass, its gradient multiplied by ``scale`` in the backward."""
    scaled = x * scale
    # x.detach() + 0, exactly: the forward value is not disturbed by rounding.
    return x.detach() + (scaled - scaled.detach())


def sign_levels(v: torch.Tensor) -> torch.Tensor:
    """The binary level function: ±1, with 0 ↦ +1."""
    return torch.where(v >= 0, 1.0, -1.0).to(v.dtype)


def lsq_fake_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, *,
                      zero_point: torch.Tensor | int = 0, gradient_scale: float = 1.0,
                      levels: Callable[[torch.Tensor], torch.Tensor] = torch.round
                      ) -> torch.Tensor:
    """Fake-quantize ``x`` with a learnable ``step`` (broadcast against ``x``); see the module.

    The step is kept above :data:`MIN_SCALE` so a large update cannot make it zero or negative.
    """
    step = scale_gradient(torch.clamp(step, min=MIN_SCALE), gradient_scale)
    v = x / step
    inside = (v + zero_point >= qmin) & (v + zero_point <= qmax)
    # round(x/s) + z, not round(x/s + z): the two differ on ties, and this is what the frozen
    # layer's fake_quantize computes, so training and the integer model agree exactly.
    q = torch.clamp(levels(v.detach()) + zero_point, qmin, qmax) - zero_point
    # Value q; gradient through v only inside the range, which yields eq. 3 for the step.
    return (q + (v - v.detach()) * inside) * step


def lsq_codes(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, *,
              zero_point: torch.Tensor | int = 0,
              levels: Callable[[torch.Tensor], torch.Tensor] = torch.round) -> torch.Tensor:
    """The integer levels the forward of :func:`lsq_fake_quantize` uses, as int8 (for freezing)."""
    step = torch.clamp(step.detach(), min=MIN_SCALE)
    return torch.clamp(levels(x.detach() / step) + zero_point, qmin, qmax).to(torch.int8)
