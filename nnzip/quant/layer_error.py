"""Where a quantized model loses accuracy: a per-layer error table.

For every QuantizedLayer, on calibration (or any) inputs:

- ``weight_error``: ‖W_q − W‖ / ‖W‖, the relative error of the weight alone;
- ``output_error``: ‖f(x; W_q, x_q) − f(x; W)‖ / ‖f(x; W)‖ on the layer's *own* input x in the
  quantized model: what this layer's rounding (weight and input) adds by itself;
- ``accumulated_error`` (with a float ``reference`` model whose layers have the same names):
  ‖y_quantized model − y_reference‖ / ‖y_reference‖ at the layer's output: everything lost up to
  and including this layer.

A large output error with a small weight error points at the activation quantization (outlier
channels: try SmoothQuant); a growing accumulated error shows how errors compound with depth.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from nnzip.core.capture import batch_inputs
from nnzip.core.modes import eval_mode
from nnzip.errors import NnzipError
from nnzip.quant.modules import QuantizedLayer, quantized_layers


class _SquaredSums:
    def __init__(self) -> None:
        self.error = 0.0
        self.signal = 0.0

    def add(self, value: torch.Tensor, reference: torch.Tensor) -> None:
        self.error += float((value.float() - reference.float()).pow(2).sum())
        self.signal += float(reference.float().pow(2).sum())

    def relative(self) -> float:
        return (self.error / max(self.signal, 1e-30)) ** 0.5


def _relative_weight_error(layer: QuantizedLayer) -> float:
    weight = layer.layer.weight.detach().float()
    error = (layer.dequantized_weight().float() - weight).norm()
    return float(error / weight.norm().clamp(min=1e-12))


def layer_errors(model: nn.Module, batches: Iterable, reference: nn.Module | None = None
                 ) -> dict[str, dict[str, float]]:
    """The per-layer error table of a converted model, in model order (JSON-ready)."""
    layers = quantized_layers(model)
    if not layers:
        raise NnzipError("the model has no QuantizedLayer: quantize it first")
    own = {name: _SquaredSums() for name in layers}
    accumulated = {name: _SquaredSums() for name in layers}
    reference_outputs: dict[str, torch.Tensor] = {}

    def own_error(name: str, layer: QuantizedLayer):
        def hook(_module, args, output):
            x = args[0]
            exact = layer.compute(layer.smooth_input(x), layer.layer.weight)
            own[name].add(output, exact)
            if name in reference_outputs:
                accumulated[name].add(output, reference_outputs.pop(name))
        return hook

    def keep_reference(name: str):
        def hook(_module, _args, output):
            reference_outputs[name] = output.detach()
        return hook

    handles = [layer.register_forward_hook(own_error(name, layer))
               for name, layer in layers.items()]
    if reference is not None:
        reference_modules = dict(reference.named_modules())
        missing = sorted(set(layers) - set(reference_modules))
        if missing:
            raise NnzipError(f"the reference model has no layers named {missing[:3]}: pass the "
                             "float model the quantized one was made from")
        handles += [reference_modules[name].register_forward_hook(keep_reference(name))
                    for name in layers]
    seen = 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                inputs = batch_inputs(batch)
                if reference is not None:
                    with eval_mode(reference):
                        reference(inputs)
                model(inputs)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise NnzipError("layer_errors needs at least one batch of inputs")
    table = {}
    for name, layer in layers.items():
        row = {"weight_error": _relative_weight_error(layer),
               "output_error": own[name].relative()}
        if reference is not None:
            row["accumulated_error"] = accumulated[name].relative()
        table[name] = row
    return table
