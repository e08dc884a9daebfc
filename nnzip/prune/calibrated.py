"""Calibration-aware one-shot pruning: Wanda and SparseGPT, unstructured or N:M.

Both look at what a layer *sees*: the inputs X of every weight they prune on a few calibration
batches, gathered as H = X Xᵀ / n (:class:`nnzip.quant.gptq.Hessian`, shared with GPTQ). Weights
are pruned one after the other in model order, each one's inputs taken from the model with the
earlier weights already pruned (as both papers do, block by block).

- **Wanda** (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
  Models"): score ``|W_ij| · ‖X_j‖₂`` and compare weights *within each output row*; no weight
  update. ‖X_j‖₂ is √(n · H_jj), and the constant √n does not change a row's ranking.
- **SparseGPT** (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
  Pruned in One-Shot"): the Optimal Brain Surgeon sweep of GPTQ with "zero it" in place of "round
  it": columns are visited in order, a pruned weight's error is moved onto the columns not yet
  visited through the Cholesky factor of H⁻¹, so the kept weights are updated to make up for it.
  The mask is chosen adaptively per block of ``block_size`` columns, by the OBS error
  ``w² / [H⁻¹]²_jj`` (of the weights as updated so far), here within each output row; for N:M,
  per group of M columns.

Unstructured pruning removes exactly ``round(sparsity · columns)`` weights of every row; N:M keeps
N of every M consecutive inputs of every row (the input length must be a multiple of M).

What they cover: Linear weights (every call of a layer used several times counts), convolutions
with ``groups=1`` in 1, 2 or 3 dimensions (inputs unfolded into patches), and attention: the
``in_proj_weight`` of ``nn.MultiheadAttention`` (its query, key and value rows each with the
input they multiply) and its ``out_proj``, whose input is captured by running the attention once
more with an identity output projection (``nn.MultiheadAttention`` reads ``out_proj.weight``
directly and never calls ``out_proj``, so a hook there sees nothing). Every other weight is
skipped with its reason (:func:`calibrated_skip_reason`), logged and listed in the coverage; only
a selection with nothing left is an error.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nnzip.core import Weight, eval_mode, find_weights
from nnzip.core.capture import run_batch
from nnzip.core.modes import attention_fast_path_off
from nnzip.core.obs import Hessian, inverse_hessian_factor, obs_sweep
from nnzip.core.weights import Kind
from nnzip.data.splits import require_batches
from nnzip.errors import NnzipError
from nnzip.prune.masks import Masks, check_sparsity, nm_masks, select_weights

log = logging.getLogger(__name__)

Method = Literal["wanda", "sparsegpt"]
METHODS: tuple[str, ...] = ("wanda", "sparsegpt")


def _check_pattern(sparsity: float | None, n: int | None, m: int | None) -> None:
    if (n is None) != (m is None):
        raise NnzipError("N:M pruning needs both n and m, e.g. n=2, m=4")
    if n is None:
        if sparsity is None:
            raise NnzipError("give a sparsity (e.g. 0.5) or an N:M pattern (n=2, m=4)")
        check_sparsity(sparsity)
    else:
        if sparsity is not None:
            raise NnzipError("an N:M pattern removes 1 - N/M of the weights: give either "
                             "sparsity or n and m, not both")
        if not 1 <= n <= m:
            raise NnzipError(f"N:M sparsity needs 1 <= N <= M, got N={n}, M={m}: e.g. 2:4")


def _check_matrix(weight: torch.Tensor, hessian: torch.Tensor, m: int | None) -> None:
    if weight.dim() != 2:
        raise NnzipError(f"calibrated pruning works on a (rows, columns) matrix, got shape "
                         f"{tuple(weight.shape)}: reshape a convolution weight to "
                         "(out_channels, -1)")
    columns = weight.shape[1]
    if hessian.shape != (columns, columns):
        raise NnzipError(f"the Hessian must be {columns}×{columns} for a weight with {columns} "
                         f"columns, got {tuple(hessian.shape)}")
    if m is not None and columns % m:
        raise NnzipError(f"a layer with {columns} inputs per output cannot be pruned N:M with "
                         f"M={m}: exclude it or pick an M that divides {columns}")


def row_masks(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-masks removing the ``round(sparsity · columns)`` lowest scores of every row."""
    rows, columns = scores.shape
    keep = torch.ones(rows, columns, dtype=torch.bool, device=scores.device)
    count = min(columns, round(sparsity * columns))
    if count:
        keep.scatter_(1, scores.topk(count, dim=1, largest=False).indices, False)
    return keep


def wanda_mask(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None = None, *,
               n: int | None = None, m: int | None = None) -> torch.Tensor:
    """Wanda's keep-mask of a (rows, columns) weight: ``|W| · ‖X_j‖`` compared within each row.

    ``hessian`` is X Xᵀ / n of the layer's inputs (only its diagonal is used).
    """
    _check_pattern(sparsity, n, m)
    _check_matrix(weight, hessian, m)
    scores = weight.detach().float().abs() * torch.diagonal(hessian).float().clamp_min(0).sqrt()
    if n is not None:
        return nm_masks({"weight": scores}, n, m)["weight"]
    return row_masks(scores, sparsity)


def sparsegpt_prune_weight(weight: torch.Tensor, hessian: torch.Tensor,
                           sparsity: float | None = None, *, n: int | None = None,
                           m: int | None = None, block_size: int = 128, damping: float = 0.01
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one (rows, columns) weight: the pruned and updated weight, and its mask.

    Unstructured: in every block of ``block_size`` columns each row loses its weights with the
    smallest OBS error ``w² / [H⁻¹]²_jj`` (block counts are cumulative roundings, so a row loses
    exactly ``round(sparsity · columns)``). N:M: the same error picks N of every M columns.
    """
    _check_pattern(sparsity, n, m)
    _check_matrix(weight, hessian, m)
    if block_size < 1 or damping <= 0:
        raise NnzipError(f"SparseGPT needs block_size ≥ 1 and damping > 0, got {block_size} "
                         f"and {damping}")
    if m is not None and block_size % m:
        raise NnzipError(f"block_size {block_size} must be a multiple of M={m}, so that no "
                         "N:M group straddles two blocks")
    working = weight.detach().float().clone()
    inverse_factor = inverse_hessian_factor(hessian.float(), damping, method="SparseGPT")
    inverse_diagonal = torch.diagonal(inverse_factor)
    keep = torch.ones_like(working, dtype=torch.bool)

    def select(block: torch.Tensor, offset: int, position: int, stop: int) -> None:
        if n is not None:
            if offset % m:
                return
            group = slice(position, position + m)
            error = block[:, offset:offset + m] ** 2 / inverse_diagonal[group] ** 2
            chosen = torch.zeros_like(error, dtype=torch.bool)
            chosen.scatter_(1, error.topk(n, dim=1).indices, True)
            keep[:, group] = chosen
            return
        if offset:
            return
        start = position
        count = round(sparsity * stop) - round(sparsity * start)
        error = block ** 2 / inverse_diagonal[start:stop] ** 2
        block_keep = torch.ones_like(error, dtype=torch.bool)
        if count:
            block_keep.scatter_(1, error.topk(count, dim=1, largest=False).indices, False)
        keep[:, start:stop] = block_keep

    def prune_column(block: torch.Tensor, offset: int, position: int, stop: int) -> torch.Tensor:
        select(block, offset, position, stop)
        return block[:, offset] * keep[:, position]

    obs_sweep(working, inverse_factor, prune_column, block_size)
    return working.to(weight.dtype), keep


class _Enough(Exception):
    """Raised by a capture hook once a module has run as often as it does per batch."""


def conv_input_rows(layer: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """Every kernel patch of a ``groups=1`` Conv1d/2d/3d input as a row: (patches, columns).

    Columns follow ``weight.reshape(out_channels, -1)`` (channel, then kernel offsets), so
    ``rows @ weight.reshape(out, -1).T`` is the convolution. The input is padded as the layer pads
    it (zeros, reflect, 'same', ...), then windows are cut along each spatial axis with
    ``Tensor.unfold``; dilation keeps every d-th tap of a window of span ``d·(k − 1) + 1``.
    """
    spatial = len(layer.kernel_size)
    if x.dim() == spatial + 1:  # an unbatched input
        x = x.unsqueeze(0)
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    windows = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
    for axis, (size, stride, dilation) in enumerate(
            zip(layer.kernel_size, layer.stride, layer.dilation, strict=True)):
        windows = windows.unfold(2 + axis, dilation * (size - 1) + 1, stride)
    windows = windows[(Ellipsis, *(slice(None, None, d) for d in layer.dilation))]
    # (N, C, out..., k...) -> (N, out..., C, k...): one patch per row, columns as in the weight.
    order = [0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial)]
    return windows.permute(order).reshape(-1, layer.weight[0].numel())


def calibrated_skip_reason(weight: Weight, m: int | None = None) -> str | None:
    """Why Wanda/SparseGPT cannot prune ``weight``, or ``None`` when they can."""
    reason = None
    if weight.tied:
        reason = (f"tied to {', '.join(weight.aliases)}: each name sees other inputs, and one "
                  "Hessian per weight cannot describe both; prune it by magnitude")
    elif weight.kind == Kind.CONV and weight.groups != 1:
        reason = (f"grouped convolution (groups={weight.groups}): each group multiplies other "
                  "input channels, which one input Hessian per layer does not describe; prune "
                  "it by magnitude")
    elif weight.kind == Kind.CONV_TRANSPOSE:
        reason = ("transposed convolution: its inputs are not the columns of its stored weight; "
                  "prune it by magnitude")
    elif weight.kind == Kind.EMBEDDING:
        reason = ("embedding table: rows are looked up by token id, not multiplied by an "
                  "input; prune it by magnitude")
    elif weight.kind == Kind.RNN:
        reason = ("RNN gate matrix: applied inside the fused recurrent kernel, so the inputs it "
                  "multiplies at every step (the hidden states) cannot be captured without "
                  "unrolling the recurrence; prune it by magnitude")
    elif weight.kind == Kind.FUNCTIONAL:
        reason = ("parameter used through a functional call (F.linear / F.conv2d) inside its "
                  "module's forward: no hook sees the input it multiplies; prune it by magnitude")
    elif weight.kind not in (Kind.LINEAR, Kind.CONV, Kind.ATTENTION_IN, Kind.ATTENTION_OUT):
        reason = f"{weight.kind} weight: calibrated pruning does not handle it"
    elif m is not None and weight.input_length % m:
        reason = f"{weight.input_length} inputs per output, not a multiple of M={m}"
    return reason


Extract = Callable[[tuple, dict], torch.Tensor]


@dataclass(frozen=True)
class _Source:
    """Where a weight's inputs come from: the module to watch and, per block of rows of the
    (rows, columns) weight, how to turn that module's call arguments into input rows."""

    module: nn.Module
    blocks: tuple[tuple[slice, Extract], ...]


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def _attention_inputs(attention: nn.MultiheadAttention, args: tuple, kwargs: dict) -> dict:
    bound = inspect.signature(attention.forward).bind(*args, **kwargs)
    return bound.arguments


def _pre_projection(attention: nn.MultiheadAttention, args: tuple, kwargs: dict
                    ) -> torch.Tensor:
    """The input of ``attention.out_proj``: the attention run again with an identity output
    projection (it reads ``out_proj.weight`` itself, so ``out_proj`` is never called)."""
    weight = attention.out_proj.weight
    swapped = {"out_proj.weight": torch.eye(weight.shape[1], dtype=weight.dtype,
                                            device=weight.device)}
    if attention.out_proj.bias is not None:
        swapped["out_proj.bias"] = torch.zeros_like(attention.out_proj.bias)
    output = functional_call(attention, swapped, args, {**kwargs, "need_weights": False})
    return output[0]


def _source(model: nn.Module, weight: Weight) -> _Source:
    rows = slice(None)
    if weight.kind == Kind.LINEAR:
        columns = weight.shape[1]
        return _Source(weight.module, ((rows, lambda a, k: _first_input(a, k)
                                        .reshape(-1, columns)),))
    if weight.kind == Kind.CONV:
        return _Source(weight.module, ((rows, lambda a, k: conv_input_rows(
            weight.module, _first_input(a, k))),))
    if weight.kind == Kind.ATTENTION_OUT:
        attention = model.get_submodule(weight.reader)
        columns = weight.shape[1]
        return _Source(attention, ((rows, lambda a, k: _pre_projection(attention, a, k)
                                    .reshape(-1, columns)),))
    attention = weight.module  # Kind.ATTENTION_IN: in_proj_weight or q/k/v_proj_weight

    def argument(role: str) -> Extract:
        columns = weight.shape[1]
        return lambda a, k: _attention_inputs(attention, a, k)[role].reshape(-1, columns)

    if weight.attr == "in_proj_weight":
        # Rows [0, E) multiply the query, [E, 2E) the key, [2E, 3E) the value.
        third = weight.shape[0] // 3
        return _Source(attention, tuple((slice(i * third, (i + 1) * third), argument(role))
                                        for i, role in enumerate(("query", "key", "value"))))
    role = {"q_proj_weight": "query", "k_proj_weight": "key", "v_proj_weight": "value"}
    return _Source(attention, ((rows, argument(role[weight.attr])),))


def _calls_per_batch(model: nn.Module, modules: Sequence[nn.Module], batch) -> dict[int, int]:
    """How often each module runs in one forward pass (a layer used twice counts twice), so a
    capture can stop the forward right after the module's last call."""
    counts = dict.fromkeys(map(id, modules), 0)

    def count(module: nn.Module, _args) -> None:
        counts[id(module)] += 1

    handles = [module.register_forward_pre_hook(count) for module in set(modules)]
    try:
        with eval_mode(model), torch.no_grad(), attention_fast_path_off():
            run_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def _block_hessians(model: nn.Module, source: _Source, batches: Sequence, calls: int
                    ) -> list[torch.Tensor]:
    """H = X Xᵀ / n per block of ``source``, over every call in every batch, as it is now."""
    hessians: list[Hessian | None] = [None] * len(source.blocks)
    seen, busy = 0, False

    def visit(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        nonlocal seen, busy
        if busy:  # the out_proj capture runs the attention again inside this hook
            return
        busy = True
        try:
            for index, (_, extract) in enumerate(source.blocks):
                rows = extract(args, kwargs)
                if hessians[index] is None:
                    hessians[index] = Hessian(rows.shape[1])
                hessians[index].add(rows)
        finally:
            busy = False
        seen += 1
        if seen >= calls:
            raise _Enough

    handle = source.module.register_forward_pre_hook(visit, with_kwargs=True)
    try:
        with eval_mode(model), torch.no_grad(), attention_fast_path_off():
            for batch in batches:
                seen = 0
                with contextlib.suppress(_Enough):
                    run_batch(model, batch)
    finally:
        handle.remove()
    return [hessian.value() for hessian in hessians]


def input_hessian(model: nn.Module, layer: nn.Module, batches: Sequence) -> torch.Tensor:
    """H = X Xᵀ / n of a Linear or (groups=1) convolution ``layer``'s inputs, over every call
    when ``model`` runs on ``batches`` as it is now."""
    batches = require_batches(batches, "input_hessian")
    weight = next((w for w in find_weights(model) if w.module is layer
                   and w.kind in (Kind.LINEAR, Kind.CONV) and w.groups == 1), None)
    if weight is None:
        raise NnzipError(f"input_hessian needs a Linear or groups=1 convolution of the model, "
                         f"got {type(layer).__name__}")
    source = _source(model, weight)
    calls = _calls_per_batch(model, [layer], batches[0])[id(layer)]
    if calls == 0:
        raise NnzipError(f"the forward pass never reached {type(layer).__name__}: is it part "
                         "of the model's forward?")
    return _block_hessians(model, source, batches, calls)[0]


def _prune_matrix(matrix: torch.Tensor, hessian: torch.Tensor, method: Method,
                  sparsity: float | None, n: int | None, m: int | None, block_size: int,
                  damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    if method == "wanda":
        keep = wanda_mask(matrix, hessian, sparsity, n=n, m=m)
        return matrix * keep, keep
    return sparsegpt_prune_weight(matrix, hessian, sparsity, n=n, m=m, block_size=block_size,
                                  damping=damping)


def _require_some(sources: dict, skipped: dict[str, str], method: str) -> None:
    if not sources:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise NnzipError(f"{method} has nothing left to prune in the selected weights "
                         f"({reasons}): prune these by magnitude (criterion 'magnitude') or "
                         "select other layers")


def calibrated_prune(model: nn.Module, batches: Iterable, method: Method = "wanda",
                     sparsity: float | None = None, *, n: int | None = None,
                     m: int | None = None, layers: Sequence[str] | None = None,
                     exclude: Sequence[str] = (), block_size: int = 128,
                     damping: float = 0.01) -> Masks:
    """Prune ``model`` in place with Wanda or SparseGPT; returns the keep-masks by weight name.

    ``batches`` are calibration inputs (tensors, (inputs, targets) pairs, or mappings of keyword
    arguments such as a tokenizer's output). Every selected weight the method can handle (see the
    module docstring) is pruned to ``sparsity`` per output row, or to ``n`` of every ``m``
    inputs, in model order, each one's inputs computed with the earlier ones already pruned. The
    others are skipped with a warning naming the reason (:func:`calibrated_skip_reason`) and left
    dense; :func:`nnzip.prune.prune` lists them in its coverage.
    """
    masks, skipped = calibrated_prune_with_skips(
        model, batches, method, sparsity, n=n, m=m, layers=layers, exclude=exclude,
        block_size=block_size, damping=damping)
    for name, reason in skipped.items():
        log.warning("%s skips %s: %s", method, name, reason)
    return masks


def calibrated_prune_with_skips(model: nn.Module, batches: Iterable, method: Method = "wanda",
                                sparsity: float | None = None, *, n: int | None = None,
                                m: int | None = None, layers: Sequence[str] | None = None,
                                exclude: Sequence[str] = (), block_size: int = 128,
                                damping: float = 0.01) -> tuple[Masks, dict[str, str]]:
    """:func:`calibrated_prune`, also returning the skipped weights and why (not logged)."""
    if method not in METHODS:
        raise NnzipError(f"unknown calibrated pruning method {method!r}: use 'wanda' or "
                         "'sparsegpt'")
    _check_pattern(sparsity, n, m)
    batches = require_batches(batches, method)
    skipped: dict[str, str] = {}
    sources: dict[str, tuple[Weight, _Source]] = {}
    for weight in select_weights(model, layers, exclude):
        reason = calibrated_skip_reason(weight, m)
        if reason is None:
            sources[weight.name] = (weight, _source(model, weight))
        else:
            skipped[weight.name] = reason
    _require_some(sources, skipped, method)
    calls = _calls_per_batch(model, [source.module for _, source in sources.values()],
                             batches[0])
    for name, (_, source) in list(sources.items()):
        if calls[id(source.module)] == 0:
            skipped[name] = "the forward pass on the calibration batches never uses it"
            del sources[name]
    _require_some(sources, skipped, method)
    masks: Masks = {}
    for name, (weight, source) in sources.items():
        hessians = _block_hessians(model, source, batches, calls[id(source.module)])
        matrix = weight.param.detach().reshape(weight.shape[0], -1)
        pruned, keep = matrix.clone(), torch.ones_like(matrix, dtype=torch.bool)
        for (rows, _), hessian in zip(source.blocks, hessians, strict=True):
            pruned[rows], keep[rows] = _prune_matrix(matrix[rows], hessian, method, sparsity,
                                                     n, m, block_size, damping)
        with torch.no_grad():
            weight.param.copy_(pruned.reshape(weight.shape))
        masks[name] = keep.reshape(weight.shape).to(weight.param.device)
    return masks, skipped


def wanda_prune(model: nn.Module, batches: Iterable, sparsity: float | None = None, *,
                n: int | None = None, m: int | None = None, layers: Sequence[str] | None = None,
                exclude: Sequence[str] = ()) -> Masks:
    """Wanda (Sun et al. 2023) in place: see :func:`calibrated_prune`."""
    return calibrated_prune(model, batches, "wanda", sparsity, n=n, m=m, layers=layers,
                            exclude=exclude)


def sparsegpt_prune(model: nn.Module, batches: Iterable, sparsity: float | None = None, *,
                    n: int | None = None, m: int | None = None,
                    layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                    block_size: int = 128, damping: float = 0.01) -> Masks:
    """SparseGPT (Frantar & Alistarh 2023) in place: see :func:`calibrated_prune`."""
    return calibrated_prune(model, batches, "sparsegpt", sparsity, n=n, m=m, layers=layers,
                            exclude=exclude, block_size=block_size, damping=damping)
