"""Compute cost: floating-point operations of one forward pass at batch size 1.

Counting uses PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode`, which intercepts
every aten op and applies a per-op formula (2 FLOPs per multiply-accumulate for matmul and conv).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from nnzip.core.modes import eval_mode
from nnzip.errors import NnzipError

log = logging.getLogger(__name__)



def _cpu_attention_flops(query_shape, key_shape, value_shape, *_args, out_shape=None,
                         **_kwargs) -> int:
    """FLOPs of the CPU's fused attention kernel: torch's formula for its CUDA twins."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: Kernels torch's counter has no formula for: the CPU's fused attention (the CUDA kernels have
#: one), so scaled_dot_product_attention, and every HF encoder's attention products, counted 0.
#: Passed per counter instance: nothing global is registered.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}

# Kernels with no FLOP formula: the counter would silently report 0 for them.
_UNCOUNTED_MODULE_PREFIXES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def _uncounted_modules(model: nn.Module) -> list[str]:
    try:
        modules = list(model.modules())
    except Exception:  # some scripted modules do not enumerate children
        return []
    return sorted({type(m).__name__ for m in modules
                   if type(m).__module__.startswith(_UNCOUNTED_MODULE_PREFIXES)})


@contextmanager
def _countable_kernels() -> Iterator[None]:
    """Run ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` on their plain path.

    In eval mode under ``no_grad`` they take a fused fast path (``_native_multi_head_attention``,
    ``_transformer_encoder_layer_fwd``) that the counter has no formula for: a TransformerEncoder
    example counted 128 MACs instead of 196 736. The plain path computes the same function with
    ops the counter knows.
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def count_flops(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
                sample: torch.Tensor | None = None) -> tuple[int | None, int | None]:
    """(FLOPs, MACs) of one forward pass of ``sample`` (a batch of one), or of float zeros shaped
    ``(1, *input_shape)``; pass a real sample for data that is not float (token ids).

    MACs are FLOPs // 2, following the counter's 2-FLOPs-per-MAC convention. Returns
    ``(None, None)`` and logs a warning when the count cannot be trusted: the counter fails on an
    exotic module, or the model contains quantized kernels the counter has no formula for (a
    number that leaves them out would overstate the savings).
    """
    if sample is None:
        if input_shape is None:
            raise NnzipError("count_flops needs input_shape or sample (e.g. "
                             "nnzip.data.probe_batch(data, 1))")
        sample = torch.zeros(1, *input_shape)
    counts = count_layer_flops(model, sample, {})
    if counts is None:
        return None, None
    return counts.total_flops, counts.total_flops // 2


@dataclass
class LayerCounts:
    """What one forward pass did at each of a set of layers: the FLOPs its kernels ran and the
    bytes it read (its first tensor argument) and wrote (its tensor outputs), summed over calls.

    ``total_flops`` is the whole model's; FLOPs outside the layers (attention's activation
    matmuls, a functional ``F.linear``) are ``total_flops - sum(flops.values())``.
    """

    total_flops: int
    flops: dict[str, int] = field(default_factory=dict)
    input_elements: dict[str, int] = field(default_factory=dict)
    input_bytes: dict[str, int] = field(default_factory=dict)
    output_bytes: dict[str, int] = field(default_factory=dict)


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def count_layer_flops(model: nn.Module, sample: torch.Tensor,
                      layers: Mapping[str, nn.Module]) -> LayerCounts | None:
    """FLOPs of one forward pass of ``sample``, and what each of ``layers`` (name → module of
    ``model``) ran, read and wrote; ``None`` (logged) where :func:`count_flops` would give none.

    Each layer's FLOPs are the counter's total after its forward minus the total before it, so
    the attribution needs no module naming and works for wrappers that call the kernel
    themselves (nnzip's QuantizedLayer). Layers must not be nested in one another.
    """
    uncounted = _uncounted_modules(model)
    if uncounted:
        log.warning("FLOPs not counted: %s have no FLOP formula in torch's counter",
                    ", ".join(uncounted))
        return None
    counts = LayerCounts(total_flops=0)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    started: dict[str, int] = {}

    def before(name: str, _module: nn.Module, args: tuple) -> None:
        started[name] = counter.get_total_flops()
        inputs = _tensors(args[:1])
        counts.input_elements[name] = counts.input_elements.get(name, 0) + sum(
            t.numel() for t in inputs)
        counts.input_bytes[name] = counts.input_bytes.get(name, 0) + sum(
            t.numel() * t.element_size() for t in inputs)

    def after(name: str, _module: nn.Module, _args: tuple, output: object) -> None:
        ran = counter.get_total_flops() - started.pop(name)
        counts.flops[name] = counts.flops.get(name, 0) + int(ran)
        counts.output_bytes[name] = counts.output_bytes.get(name, 0) + sum(
            t.numel() * t.element_size() for t in _tensors(output))

    handles = []
    for name, layer in layers.items():
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, name=name: before(name, m, a)))
        handles.append(layer.register_forward_hook(
            lambda m, a, o, name=name: after(name, m, a, o)))
    try:
        with eval_mode(model), torch.no_grad(), _countable_kernels(), counter:
            model(sample)
    except Exception as error:  # any failure means "unknown", never a crash
        log.warning("FLOPs not counted for %s: %s", type(model).__name__,
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
    finally:
        for handle in handles:
            handle.remove()
    counts.total_flops = int(counter.get_total_flops())
    return counts
