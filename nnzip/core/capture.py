"""Run calibration batches up to one layer and look at what it sees (GPTQ, bias correction,
Wanda/SparseGPT, head pruning, embedding distillation).

Methods that work layer by layer need, for each layer, its inputs or outputs in the model as it
is *now* (earlier layers already quantized). :func:`feed_layer` runs each batch through the model
and stops the forward pass as soon as the layer has been reached, so layer k costs the forward of
layers 1..k only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch
from torch import nn

from nnzip.core.modes import attention_fast_path_off, eval_mode
from nnzip.errors import NnzipError


class _LayerReached(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def batch_inputs(batch) -> torch.Tensor:
    """The inputs of a batch given as a tensor or an (inputs, targets) pair."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def batch_size(batch) -> int:
    """The number of samples in a batch (a tensor, an (inputs, targets) pair or a mapping)."""
    if isinstance(batch, Mapping):
        first = next(iter(batch.values()), None)
        return len(first) if first is not None else 0
    return len(batch_inputs(batch))


def run_batch(model: nn.Module, batch):
    """``model`` on one calibration batch.

    A mapping (a tokenizer's output: ``input_ids``, ``attention_mask``, ...) is passed as keyword
    arguments; a tensor or an (inputs, targets) pair passes its inputs.
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(batch_inputs(batch))


def feed_layer(model: nn.Module, layer: nn.Module, batches: Iterable,
               visit: Callable[[torch.Tensor], None],
               where: Literal["input", "output"] = "input") -> int:
    """Call ``visit`` on ``layer``'s first input (or its output) for every batch.

    Returns the number of samples fed. A layer called several times per forward is visited at
    its first call only. An empty ``batches`` or a layer the forward never reaches is an error.
    """
    def on_input(_module, args):
        visit(args[0])
        raise _LayerReached

    def on_output(_module, _args, output):
        visit(output)
        raise _LayerReached

    handle = (layer.register_forward_pre_hook(on_input) if where == "input"
              else layer.register_forward_hook(on_output))
    samples = reached = 0
    try:
        # The fused attention path calls no Linear forward: a hook inside would never fire.
        with eval_mode(model), torch.no_grad(), attention_fast_path_off():
            for batch in batches:
                samples += batch_size(batch)
                try:
                    run_batch(model, batch)
                except _LayerReached:
                    reached += 1
    finally:
        handle.remove()
    if samples == 0:
        raise NnzipError("the calibration set is empty: pass at least one batch of training "
                         "inputs (e.g. nnzip.data.calibration_batches(data, 8))")
    if reached == 0:
        raise NnzipError(f"the forward pass never reached {type(layer).__name__}: is it part "
                         "of the model's forward?")
    return samples


def feed_layers(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable,
                visit: Callable[[str, torch.Tensor], None]) -> int:
    """:func:`feed_layer` for several layers in one pass: ``visit(name, input)`` for each
    layer's first input of every batch, the forward stopped once every layer has been seen
    (collect once, apply many: one pass serves every layer a method scales or measures).

    Returns the number of samples fed; a layer the forward never reaches is an error naming it.
    """
    seen: set[str] = set()
    reached: set[str] = set()

    def hook_for(name: str):
        def on_input(_module, args):
            if name in seen:
                return
            seen.add(name)
            visit(name, args[0])
            if len(seen) == len(layers):
                raise _LayerReached
        return on_input

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers.items()]
    samples = 0
    try:
        with eval_mode(model), torch.no_grad(), attention_fast_path_off():
            for batch in batches:
                samples += batch_size(batch)
                seen.clear()
                try:
                    run_batch(model, batch)
                except _LayerReached:
                    pass
                reached |= seen
    finally:
        for handle in handles:
            handle.remove()
    if samples == 0:
        raise NnzipError("the calibration set is empty: pass at least one batch of training "
                         "inputs (e.g. nnzip.data.calibration_batches(data, 8))")
    missing = sorted(set(layers) - reached)
    if missing:
        raise NnzipError(f"the forward pass never reached {', '.join(missing)}: are they part "
                         "of the model's forward?")
    return samples
