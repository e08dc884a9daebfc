"""SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization
for Large Language Models"): move activation outliers into the weights before W8A8 quantization.

Transformer activations have a few input channels whose values are 10–100× larger than the rest,
so one per-tensor activation scale wastes most int8 levels on them; weights are flat and
quantize easily. For a Linear y = W x, dividing input channel j by s_j and multiplying weight
column j by s_j changes nothing in float, and with

    s_j = max|X_j|^α / max|W_:,j|^(1−α)          (α = 0.5: split the difficulty evenly)

the smoothed activation and weight have comparable ranges per channel. The paper folds 1/s into
the LayerNorm that produces x. That is only exact when the LayerNorm output feeds nothing else:
in a post-LN encoder such as BERT/MiniLM it is also the residual of the next block, so here the
division is kept as an input scaling of the Linear (:meth:`QuantizedLayer.smooth`: one
per-channel multiply before the input is quantized, exported as a Mul before QuantizeLinear).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from nnzip.core.capture import batch_inputs
from nnzip.core.modes import eval_mode
from nnzip.core.select import select_names
from nnzip.data.splits import require_batches
from nnzip.errors import NnzipError
from nnzip.quant.modules import QuantizedLayer, quantized_layers

#: Smallest activation or weight maximum used, so that a dead channel does not divide by zero.
MIN_RANGE = 1e-5


def input_channel_max(model: nn.Module, layers: dict[str, QuantizedLayer],
                      batches: Iterable) -> dict[str, torch.Tensor]:
    """max |x_j| of each layer's input per input channel (last dimension) over ``batches``,
    with every layer run in float (the observers see nothing)."""
    maxima: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def record(_module, args):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            maxima[name] = x if name not in maxima else torch.maximum(maxima[name], x)
        return record

    modes = {name: layer.mode for name, layer in quantized_layers(model).items()}
    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        for layer in quantized_layers(model).values():
            layer.mode = "float"
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                model(batch_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
        for name, layer in quantized_layers(model).items():
            layer.mode = modes[name]
    return maxima


def smoothing_factors(activation_max: torch.Tensor, weight: torch.Tensor,
                      alpha: float = 0.5) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_:,j|^(1−α), one per input channel of a (out, in) weight."""
    weight_max = weight.detach().abs().amax(dim=0).float().clamp(min=MIN_RANGE)
    factors = activation_max.clamp(min=MIN_RANGE).pow(alpha) / weight_max.pow(1 - alpha)
    # A channel never active in calibration keeps its scale (nothing to migrate).
    return torch.where(activation_max > 0, factors, torch.ones_like(factors)).clamp(min=MIN_RANGE)


def smooth_quant(model: nn.Module, batches: Iterable, alpha: float = 0.5,
                 layers: Sequence[str] | None = None) -> list[str]:
    """Smooth the Linear QuantizedLayers of a prepared (not yet calibrated) model, in place.

    ``batches`` are calibration inputs (training data). By default every Linear whose input is
    quantized is smoothed; ``layers`` names a subset (names or glob patterns). Returns the names
    smoothed. Calibrate afterwards: the observers must see the smoothed inputs.
    """
    if not 0.0 < alpha < 1.0:
        raise NnzipError(f"alpha must lie strictly between 0 and 1 (0.5 in the paper), got {alpha}")
    available = {name: layer for name, layer in quantized_layers(model).items()
                 if isinstance(layer.layer, nn.Linear) and layer.input_scheme is not None}
    if not available:
        raise NnzipError("SmoothQuant found no Linear layer with quantized inputs: prepare the "
                         "model with activation_bits set (W8A8) first")
    # Names or glob patterns, matched as every method's `layers` (nnzip.core.select).
    names = select_names(list(available), layers, what="Linear layers with quantized inputs "
                         "(smoothquant_layers)")
    chosen = {name: available[name] for name in names}
    batches = require_batches(batches, "SmoothQuant")
    maxima = input_channel_max(model, chosen, batches)
    for name, layer in chosen.items():
        if name not in maxima:
            raise NnzipError(f"the forward pass never reached {name!r}: is it part of the "
                             "model's forward?")
        layer.smooth(smoothing_factors(maxima[name], layer.layer.weight, alpha))
    return list(chosen)
