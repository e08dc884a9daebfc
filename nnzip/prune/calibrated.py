"""Calibration-aware one-shot pruning: Wanda and SparseGPT, unstructured or N:M.

Both look at what a layer *sees*: the inputs X of every Linear (or groups=1 Conv2d) layer on a few
calibration batches, gathered as H = X Xᵀ / n (:class:`nnzip.quant.gptq.Hessian`, shared with
GPTQ). Layers are pruned one after the other in model order, each one's inputs taken from the
model with the earlier layers already pruned (as both papers do, block by block).

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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from nnzip.data.splits import require_batches
from nnzip.errors import NnzipError
from nnzip.prune.masks import Masks, check_sparsity, nm_masks, select_parameters
from nnzip.quant.capture import feed_layer
from nnzip.quant.gptq import Hessian, inverse_hessian_factor, layer_input_rows, obs_sweep

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


def _prunable_module(model: nn.Module, name: str) -> nn.Module:
    module = model.get_submodule(name.removesuffix(".weight"))
    if not (isinstance(module, nn.Linear)
            or (isinstance(module, nn.Conv2d) and module.groups == 1)):
        raise NnzipError(f"calibrated pruning handles Linear and Conv2d (groups=1) layers, not "
                         f"{name} ({type(module).__name__}): exclude it")
    return module


def input_hessian(model: nn.Module, layer: nn.Module, batches: Sequence) -> torch.Tensor:
    """H = X Xᵀ / n of ``layer``'s inputs when ``model`` runs on ``batches`` as it is now."""
    hessian = Hessian(layer.weight[0].numel())
    feed_layer(model, layer, batches, lambda x: hessian.add(layer_input_rows(layer, x)))
    return hessian.value()


def calibrated_prune(model: nn.Module, batches: Iterable, method: Method = "wanda",
                     sparsity: float | None = None, *, n: int | None = None,
                     m: int | None = None, layers: Sequence[str] | None = None,
                     exclude: Sequence[str] = (), block_size: int = 128,
                     damping: float = 0.01) -> Masks:
    """Prune ``model`` in place with Wanda or SparseGPT; returns the keep-masks by weight name.

    ``batches`` are calibration inputs (tensors, (inputs, targets) pairs, or mappings of keyword
    arguments such as a tokenizer's output). Every selected Linear / Conv2d (groups=1) weight is
    pruned to ``sparsity`` per output row, or to ``n`` of every ``m`` inputs; layers are taken in
    model order, each one's inputs computed with the earlier ones already pruned. An N:M layer
    whose input length is not a multiple of ``m`` is skipped with a warning and left dense.
    """
    if method not in METHODS:
        raise NnzipError(f"unknown calibrated pruning method {method!r}: use 'wanda' or "
                         "'sparsegpt'")
    _check_pattern(sparsity, n, m)
    batches = require_batches(batches, method)
    names = select_parameters(model, layers, exclude)
    modules = {name: _prunable_module(model, name) for name in names}
    if m is not None:
        skipped = [name for name, module in modules.items()
                   if module.weight[0].numel() % m]
        if skipped:
            log.warning("N:M %d:%d skips %s: input length not a multiple of %d", n, m,
                        ", ".join(skipped), m)
        modules = {name: module for name, module in modules.items() if name not in skipped}
        if not modules:
            raise NnzipError(f"no selected layer has an input length divisible by M={m}: pick "
                             "another M or other layers")
    masks: Masks = {}
    for name, module in modules.items():
        weight = module.weight
        matrix = weight.detach().reshape(weight.shape[0], -1)
        hessian = input_hessian(model, module, batches)
        if method == "wanda":
            keep = wanda_mask(matrix, hessian, sparsity, n=n, m=m)
            pruned = matrix * keep
        else:
            pruned, keep = sparsegpt_prune_weight(matrix, hessian, sparsity, n=n, m=m,
                                                  block_size=block_size, damping=damping)
        with torch.no_grad():
            weight.copy_(pruned.reshape(weight.shape))
        masks[name] = keep.reshape(weight.shape).to(weight.device)
    return masks


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
