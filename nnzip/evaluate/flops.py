"""Compute cost: floating-point operations of one forward pass at batch size 1.

Counting uses PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode`, which intercepts
every aten op and applies a per-op formula (2 FLOPs per multiply-accumulate for matmul and conv).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnzip.core.modes import eval_mode
from nnzip.errors import NnzipError

log = logging.getLogger(__name__)

# Kernels with no FLOP formula: the counter would silently report 0 for them.
_UNCOUNTED_MODULE_PREFIXES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def _uncounted_modules(model: nn.Module) -> list[str]:
    try:
        modules = list(model.modules())
    except Exception:  # some scripted modules do not enumerate children
        return []
    return sorted({type(m).__name__ for m in modules
                   if type(m).__module__.startswith(_UNCOUNTED_MODULE_PREFIXES)})


def count_flops(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
                sample: torch.Tensor | None = None) -> tuple[int | None, int | None]:
    """(FLOPs, MACs) of one forward pass of ``sample`` (a batch of one), or of float zeros shaped
    ``(1, *input_shape)``; pass a real sample for data that is not float (token ids).

    MACs are FLOPs // 2, following the counter's 2-FLOPs-per-MAC convention. Returns
    ``(None, None)`` and logs a warning when the count cannot be trusted: the counter fails on an
    exotic module, or the model contains quantized kernels the counter has no formula for (a
    number that leaves them out would overstate the savings).
    """
    uncounted = _uncounted_modules(model)
    if uncounted:
        log.warning("FLOPs not counted: %s have no FLOP formula in torch's counter",
                    ", ".join(uncounted))
        return None, None
    if sample is None:
        if input_shape is None:
            raise NnzipError("count_flops needs input_shape or sample (e.g. "
                             "nnzip.data.probe_batch(data, 1))")
        sample = torch.zeros(1, *input_shape)
    try:
        with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(sample)
    except Exception as error:  # any failure means "unknown", never a crash
        log.warning("FLOPs not counted for %s: %s", type(model).__name__,
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None, None
    flops = int(counter.get_total_flops())
    return flops, flops // 2
