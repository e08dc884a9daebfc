"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", §4.1).

Two layers joined by a positively homogeneous map (ReLU, max/avg pooling, identity) compute the
same function when output channel i of the first is divided by s_i > 0 and input channel i of the
second multiplied by s_i, since relu(x / s) = relu(x) / s. Choosing

    s_i = sqrt(r1_i · r2_i) / r2_i

with r1_i the range of the first layer's output channel i and r2_i that of the second layer's
input channel i gives both the same range sqrt(r1_i · r2_i), so no channel wastes most of the
integer grid: this helps most where one scale covers many channels (per-tensor weights, depthwise
convolutions). Chains (A → B → C) share B; the rescaling is repeated until the scales settle.

Pairs are found on a :mod:`torch.fx` trace: a Conv/Linear whose output feeds nothing but a chain
of such maps ending in the next Conv/Linear. BatchNorm is not positively homogeneous, so fold it
first (:func:`nnzip.models.fold.fold_batchnorm`; :func:`nnzip.quant.prepare` does). A convolution
followed by ``flatten`` and a Linear is a pair too (each channel owns a block of the Linear's
inputs). Outputs with several consumers (residual branches) and modules called twice are skipped.

```python
from nnzip.quant.equalize import cross_layer_equalization
equalized, pairs = cross_layer_equalization(fold_batchnorm(model))
```
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

from nnzip.errors import NnzipError
from nnzip.models.surgery import fx_trace

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Element-wise maps f with f(x / s) = f(x) / s for s > 0.
_ELEMENTWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)
_ELEMENTWISE_FUNCTIONS = (F.relu, torch.relu, F.leaky_relu, F.dropout)
#: Per-channel spatial pooling: positively homogeneous channel by channel (convolutions only).
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_POOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                   F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d)


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """'elementwise', 'pool' or 'flatten' for a node CLE can see through, else None."""
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, _ELEMENTWISE_MODULES):
            return "elementwise"
        if isinstance(module, _POOLS):
            return "pool"
        if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1):
            return "flatten"
        return None
    if node.op == "call_function":
        if node.target in _ELEMENTWISE_FUNCTIONS:
            return "elementwise"
        if node.target in _POOL_FUNCTIONS:
            return "pool"
        if node.target is torch.flatten and tuple(node.args[1:]) in ((1,), (1, -1)) \
                and not node.kwargs:
            return "flatten"
    return None


def _channel_block(first: nn.Module, second: nn.Module, kinds: list[str]) -> int | None:
    """How many consecutive inputs of ``second`` one output channel of ``first`` feeds, or None
    when the chain ``kinds`` between them does not keep channels apart."""
    if isinstance(first, nn.Linear):
        # Pooling or flattening a Linear's output would mix its features.
        if not isinstance(second, nn.Linear) or set(kinds) - {"elementwise"}:
            return None
        return 1 if second.in_features == first.out_features else None
    flattened = kinds.count("flatten")
    if flattened > 1 or ("flatten" in kinds and "pool" in kinds[kinds.index("flatten"):]):
        return None
    if isinstance(second, nn.Linear):
        if flattened != 1 or second.in_features % first.out_channels:
            return None
        return second.in_features // first.out_channels
    if flattened or type(second) is not type(first):
        return None
    return 1 if second.in_channels == first.out_channels else None


def equalizable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(first, second) layer names that cross-layer equalization can rescale exactly."""
    traced = fx_trace(model, "equalize", "quantize without equalize")
    modules = dict(model.named_modules())
    layers = {node: modules[str(node.target)] for node in traced.graph.nodes
              if node.op == "call_module"
              and isinstance(modules.get(str(node.target)), (*_CONVS, nn.Linear))}
    calls = [str(node.target) for node in traced.graph.nodes if node.op == "call_module"]
    pairs = []
    for node, first in layers.items():
        kinds, current = [], node
        # Walk the single-consumer chain from the first layer's output to the next layer.
        while len(current.users) == 1:
            (user,) = current.users
            if user in layers:
                block = _channel_block(first, layers[user], kinds)
                if user.all_input_nodes == [current] and block is not None:
                    pairs.append((str(node.target), str(user.target)))
                break
            kind = _kind(user, modules)
            if kind is None or user.all_input_nodes != [current]:
                break
            kinds.append(kind)
            current = user
    # A module called twice would be rescaled for both calls: leave it alone.
    return [pair for pair in pairs if calls.count(pair[0]) == 1 and calls.count(pair[1]) == 1]


def _output_channel_ranges(layer: nn.Module) -> torch.Tensor:
    """max |w| of each output channel (weights are quantized symmetrically)."""
    return layer.weight.detach().abs().flatten(1).amax(dim=1)


def _grouped_inputs(layer: nn.Module, block: int) -> torch.Tensor:
    """The weight viewed as (groups, out per group, channels per group, block, rest)."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        return weight.reshape(1, weight.shape[0], -1, block, 1)
    groups = layer.groups
    return weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], 1, -1)


def _input_channel_ranges(layer: nn.Module, block: int) -> torch.Tensor:
    """max |w| over everything input channel i of ``layer`` multiplies (channel order)."""
    return _grouped_inputs(layer, block).abs().amax(dim=(1, 3, 4)).reshape(-1)


def equalization_scales(first_ranges: torch.Tensor, second_ranges: torch.Tensor) -> torch.Tensor:
    """s_i = sqrt(r1_i · r2_i) / r2_i; 1 where a channel is dead in either layer."""
    scale = torch.sqrt(first_ranges * second_ranges) / second_ranges
    alive = (first_ranges > 0) & (second_ranges > 0) & torch.isfinite(scale)
    return torch.where(alive, scale, torch.ones_like(scale))


@torch.no_grad()
def equalize_pair(first: nn.Module, second: nn.Module, block: int = 1) -> torch.Tensor:
    """Rescale ``first``'s output channels and ``second``'s inputs in place; return the scales.

    ``block`` is the number of consecutive inputs of ``second`` per channel (a flattened
    convolution output feeding a Linear).
    """
    scale = equalization_scales(_output_channel_ranges(first),
                                _input_channel_ranges(second, block))
    view = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.div_(scale.reshape(view))
    if first.bias is not None:
        first.bias.div_(scale)
    grouped = _grouped_inputs(second, block)
    per_input = scale.reshape(grouped.shape[0], 1, grouped.shape[2], 1, 1)
    second.weight.copy_((grouped * per_input).reshape(second.weight.shape))
    return scale


def cross_layer_equalization(model: nn.Module, *, inplace: bool = False, iterations: int = 20,
                             tolerance: float = 1e-4) -> tuple[nn.Module, int]:
    """The model with every equalizable pair rescaled, and the number of pairs.

    The result computes the same function up to float rounding. Fold BatchNorm first: a
    BatchNorm between two layers hides the pair. ``iterations`` bounds the sweeps over chains
    that share a layer; a sweep whose scales all lie within ``tolerance`` of 1 ends early.
    """
    if iterations < 1:
        raise NnzipError(f"iterations must be at least 1, got {iterations}")
    target = model if inplace else copy.deepcopy(model)
    pairs = equalizable_pairs(target)
    blocks = []
    for first_name, second_name in pairs:
        first, second = target.get_submodule(first_name), target.get_submodule(second_name)
        channels = first.out_features if isinstance(first, nn.Linear) else first.out_channels
        inputs = second.in_features if isinstance(second, nn.Linear) else second.in_channels
        blocks.append((first, second, inputs // channels))
    for _ in range(iterations):
        changes = [float((equalize_pair(*pair) - 1).abs().max()) for pair in blocks]
        if max(changes, default=0.0) <= tolerance:
            break
    return target, len(pairs)


__all__ = ["cross_layer_equalization", "equalizable_pairs", "equalization_scales",
           "equalize_pair"]
