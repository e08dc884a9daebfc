"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2; Finkelstein et
al. 2019, "Fighting Quantization Bias With Bias").

Rounding errors do not average out: at 4 bits a layer's quantized output is often shifted, per
output channel, by a constant E[W x] − E[W_q x̂], and ReLUs and later layers amplify the shift.
The shift is measured on calibration inputs and added to the layer's bias (one is created for a
layer without), which removes it exactly on those inputs.

Here the correction is *sequential* and against the float model: layers are taken in model order,
and for each the mean output per channel of the quantized model (earlier layers quantized and
already corrected, inputs quantized) is compared with that of the float model on the same
calibration batches. After layer k is corrected its mean output per channel equals the float
one, and the later layers see those corrected outputs. So the correction also absorbs the mean
shift that activation quantization and earlier layers cause, not only the layer's own rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from nnzip.core.capture import batch_inputs, feed_layer
from nnzip.core.modes import eval_mode
from nnzip.data.splits import require_batches
from nnzip.errors import NnzipError
from nnzip.quant.modules import QuantizedLayer, quantized_layers


def channel_sums(output: torch.Tensor, layer: QuantizedLayer) -> tuple[torch.Tensor, int]:
    """Per output channel, the sum of ``output`` over every other dimension, and the count."""
    channel_dim = -1 if isinstance(layer.layer, nn.Linear) else 1
    values = output.detach().double().movedim(channel_dim, 0).reshape(output.shape[channel_dim],
                                                                     -1)
    return values.sum(dim=1), values.shape[1]


@contextlib.contextmanager
def float_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body with every QuantizedLayer computing in float, then restore their modes."""
    layers = quantized_layers(model)
    modes = {name: layer.mode for name, layer in layers.items()}
    for layer in layers.values():
        layer.mode = "float"
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.mode = modes[name]


def _float_output_means(model: nn.Module, layers: dict[str, QuantizedLayer],
                        batches: list) -> dict[str, torch.Tensor]:
    sums: dict[str, list] = {name: [0.0, 0] for name in layers}

    def hook(name):
        def accumulate(module, _args, output):
            total, count = channel_sums(output, module)
            sums[name][0] = sums[name][0] + total
            sums[name][1] += count
        return accumulate

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        with float_mode(model), eval_mode(model), torch.no_grad():
            for batch in batches:
                model(batch_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / max(count, 1) for name, (total, count) in sums.items()}


def _quantized_output_mean(model: nn.Module, layer: QuantizedLayer,
                           batches: list) -> torch.Tensor:
    state: list = [0.0, 0]

    def accumulate(output: torch.Tensor) -> None:
        total, count = channel_sums(output, layer)
        state[0] = state[0] + total
        state[1] += count

    feed_layer(model, layer, batches, accumulate, where="output")
    return state[0] / state[1]


def _add_to_bias(layer: nn.Module, shift: torch.Tensor) -> None:
    weight = layer.weight
    shift = shift.to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(shift.clone(), requires_grad=weight.requires_grad)
        else:
            layer.bias.add_(shift)


def bias_correction(model: nn.Module, batches: Iterable) -> dict[str, float]:
    """Correct the bias of every frozen QuantizedLayer of ``model`` in place.

    ``batches`` are calibration inputs (tensors or (inputs, targets) pairs; training data, not the
    test set). Returns, per layer, the largest correction applied (in the output's units). Apply
    it once, after :func:`nnzip.quant.convert` (and GPTQ, if used): the float reference is
    computed with the layers' current biases.
    """
    layers = quantized_layers(model)
    if not layers:
        raise NnzipError("the model has no QuantizedLayer: call prepare(), calibrate() and "
                         "convert() before bias correction")
    unfrozen = sorted(name for name, layer in layers.items() if layer.mode != "quantize")
    if unfrozen:
        raise NnzipError(f"bias correction needs frozen layers, but {unfrozen} are not in "
                         "'quantize' mode: call convert() first")
    batches = require_batches(batches, "bias correction")
    float_means = _float_output_means(model, layers, batches)
    corrections = {}
    for name, layer in layers.items():
        shift = float_means[name] - _quantized_output_mean(model, layer, batches)
        _add_to_bias(layer.layer, shift)
        corrections[name] = float(shift.abs().max())
    return corrections
