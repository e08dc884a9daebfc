"""Unstructured and N:M pruning: zero individual weights chosen by an importance criterion.

Unstructured pruning (Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
Networks") removes the lowest-scoring weights, under one global threshold or per layer. N:M
semi-structured pruning (Mishra et al. 2021) keeps N of every M consecutive input weights, the
pattern sparse tensor cores execute. Both compute masks from scores, write the zeros into the
model in place and return the masks, so a fine-tune can keep them with
:func:`nnzip.prune.masks.mask_hook`.

Both cover every weight :func:`nnzip.core.find_weights` finds (attention projections, RNN gates,
embeddings and functional parameters included), a tied tensor once: unstructured pruning at
sparsity ``s`` zeroes exactly ``round(s · N)`` of the ``N`` selected weights, as
``torch.nn.utils.prune.global_unstructured`` does over the same tensors. N:M skips the weights it
has no meaning for (see :func:`nnzip.prune.masks.nm_skip_reason`); :func:`nnzip.prune.prune`
reports them in its coverage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

from torch import nn

from nnzip.data.splits import Batch, DataSplits, calibration_batches
from nnzip.errors import NnzipError
from nnzip.prune.importance import (
    DATA_CRITERIA,
    Criterion,
    HessianMethod,
    Scores,
    importance_scores,
)
from nnzip.prune.masks import (
    Masks,
    apply_masks,
    canonical,
    global_masks,
    layer_masks,
    nm_masks,
    nm_skipped,
    select_parameters,
)

log = logging.getLogger(__name__)

Scope = Literal["global", "layer"]


def compute_scores(model: nn.Module, names: Sequence[str], criterion: Criterion = "magnitude", *,
                   data: DataSplits | None = None, batches: Sequence[Batch] | None = None,
                   calibration_batch_count: int = 8, hessian: HessianMethod = "fisher",
                   seed: int = 0) -> Scores:
    """Importance of ``names``; calibration batches are drawn from ``data`` when needed."""
    names = canonical(model, names)
    if criterion in DATA_CRITERIA and batches is None:
        if data is None:
            raise NnzipError(f"criterion {criterion!r} needs data for its gradients: pass data= "
                             "(or batches=), or use criterion 'magnitude'")
        batches = calibration_batches(data, calibration_batch_count, seed=seed)
    return importance_scores(model, criterion, names, batches=batches, hessian=hessian, seed=seed)


def _protect(scores: Scores, keep: Mapping | None) -> Scores:
    """Rank weights pruned before below every live one, so masks only ever grow."""
    if not keep:
        return scores
    return {name: score.masked_fill(~keep[name], -1.0) if name in keep else score
            for name, score in scores.items()}


def masks_from_scores(scores: Scores, sparsity: float | Mapping[str, float],
                      scope: Scope = "global", keep: Masks | None = None) -> Masks:
    """Masks at ``sparsity`` (global threshold, or per layer) that extend the masks ``keep``."""
    scores = _protect(scores, keep)
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise NnzipError("per-layer sparsities need scope='layer'")
        return global_masks(scores, sparsity)
    if scope == "layer":
        return layer_masks(scores, sparsity)
    raise NnzipError(f"unknown pruning scope {scope!r}: use 'global' or 'layer'")


def prune_unstructured(model: nn.Module, sparsity: float | Mapping[str, float], *,
                       criterion: Criterion = "magnitude", scope: Scope = "global",
                       data: DataSplits | None = None, batches: Sequence[Batch] | None = None,
                       layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                       hessian: HessianMethod = "fisher", calibration_batch_count: int = 8,
                       keep: Masks | None = None, seed: int = 0) -> Masks:
    """Prune ``model`` in place to ``sparsity`` of its selected weights; returns the masks.

    ``scope="global"`` ranks all selected weights together (layers end up with the sparsity
    their weights deserve); ``"layer"`` prunes each to the same fraction, or to its own value when
    ``sparsity`` maps weight names to fractions. ``keep`` (earlier masks) stay pruned.
    """
    names = select_parameters(model, layers, exclude)
    if isinstance(sparsity, Mapping):
        sparsity = dict(zip(canonical(model, list(sparsity)), sparsity.values(), strict=True))
        unknown = [name for name in sparsity if name not in names]
        if unknown:
            raise NnzipError(f"sparsity given for {unknown[0]!r}, which is not among the pruned "
                             f"weights {', '.join(names)}")
        names = [name for name in names if name in sparsity]
    if keep:  # earlier masks may name a tied weight by an alias
        keep = dict(zip(canonical(model, list(keep)), keep.values(), strict=True))
    scores = compute_scores(model, names, criterion, data=data, batches=batches,
                            calibration_batch_count=calibration_batch_count, hessian=hessian,
                            seed=seed)
    masks = masks_from_scores(scores, sparsity, scope, keep)
    apply_masks(model, masks)
    return masks


def magnitude_prune(model: nn.Module, sparsity: float, scope: Scope = "global", *,
                    layers: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> Masks:
    """Han et al. (2015): zero the smallest-magnitude weights, in place; returns the masks."""
    return prune_unstructured(model, sparsity, criterion="magnitude", scope=scope, layers=layers,
                              exclude=exclude)


def nm_prune(model: nn.Module, n: int = 2, m: int = 4, *, criterion: Criterion = "magnitude",
             data: DataSplits | None = None, batches: Sequence[Batch] | None = None,
             layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
             hessian: HessianMethod = "fisher", calibration_batch_count: int = 8,
             seed: int = 0) -> Masks:
    """N:M pruning in place: keep the ``n`` most important of every ``m`` consecutive inputs.

    Weights N:M has no meaning for are skipped with a warning and left dense (they have no mask
    in the result): an input length (in_features, or in_channels/groups·kh·kw) that is not a
    multiple of ``m`` (LeNet-5's first conv, 1·5·5 = 25 inputs; a depthwise 3×3, 9), an
    embedding table that is only looked up, a transposed convolution (see
    :func:`nnzip.prune.masks.nm_skip_reason`). :func:`nnzip.prune.prune` lists them in its
    coverage.
    """
    masks, skipped = nm_prune_with_skips(model, n, m, criterion=criterion, data=data,
                                         batches=batches, layers=layers, exclude=exclude,
                                         hessian=hessian,
                                         calibration_batch_count=calibration_batch_count,
                                         seed=seed)
    for name, reason in skipped.items():
        log.warning("N:M %d:%d skips %s: %s", n, m, name, reason)
    return masks


def nm_prune_with_skips(model: nn.Module, n: int = 2, m: int = 4, *,
                        criterion: Criterion = "magnitude", data: DataSplits | None = None,
                        batches: Sequence[Batch] | None = None,
                        layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                        hessian: HessianMethod = "fisher", calibration_batch_count: int = 8,
                        seed: int = 0) -> tuple[Masks, dict[str, str]]:
    """:func:`nm_prune`, also returning the skipped weights with their reasons (not logged)."""
    if not 1 <= n <= m:
        raise NnzipError(f"N:M sparsity needs 1 <= N <= M, got N={n}, M={m}: e.g. n: 2, m: 4")
    names = select_parameters(model, layers, exclude)
    skipped = nm_skipped(model, names, m)
    names = [name for name in names if name not in skipped]
    if not names:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise NnzipError(f"N:M {n}:{m} has nothing left to prune ({reasons}): pick another M "
                         "or other layers, or prune unstructured")
    scores = compute_scores(model, names, criterion, data=data, batches=batches,
                            calibration_batch_count=calibration_batch_count, hessian=hessian,
                            seed=seed)
    masks = nm_masks(scores, n, m)
    apply_masks(model, masks)
    return masks, skipped
