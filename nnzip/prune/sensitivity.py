"""Per-layer sensitivity analysis and a sensitivity-guided split of a global sparsity target.

Han et al. (2015, Fig. 6) prune each layer alone and watch accuracy: the first conv and the last
classifier are sensitive, the big fully connected layers are not. :func:`layer_sensitivity`
measures that curve on the **validation** split (never the test set) and
:func:`allocate_sparsity` turns the curves into per-layer sparsities that meet a global target:
each layer's preferred sparsity is the largest whose accuracy drop stays within a tolerance, and
all preferences are then scaled together until the parameter-weighted total equals the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nnzip.data.splits import Batch, DataSplits, eval_batch_size
from nnzip.errors import NnzipError
from nnzip.prune.importance import Criterion, HessianMethod, Scores
from nnzip.prune.masks import check_sparsity, global_masks, select_parameters, weight_lookup
from nnzip.prune.unstructured import compute_scores

#: Sparsities each layer is tried at; 0.0 is the dense baseline every drop is measured from.
DEFAULT_SENSITIVITY_SPARSITIES: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
#: Curves map a weight name to {sparsity: validation accuracy}.
Curves = dict[str, dict[float, float]]


def split_accuracy(model: nn.Module, data: DataSplits, split: str = "val") -> float:
    """Top-1 accuracy of ``model`` on one split of ``data``: its task's validation score
    (next-token accuracy for a language model), in batches whose logits stay small."""
    from nnzip.tasks import task_of
    from nnzip.train import validate

    # An unknown split is an error here.
    loader = data.loader(split, batch_size=eval_batch_size(data, largest=512))
    return validate(model, loader, task_of(data))[1]


def layer_sensitivity(model: nn.Module, data: DataSplits,
                      sparsities: Sequence[float] = DEFAULT_SENSITIVITY_SPARSITIES, *,
                      criterion: Criterion = "magnitude", layers: Sequence[str] | None = None,
                      exclude: Sequence[str] = (), scores: Scores | None = None,
                      batches: Sequence[Batch] | None = None, hessian: HessianMethod = "fisher",
                      split: str = "val", seed: int = 0) -> Curves:
    """Accuracy on ``split`` (validation by default) with each layer pruned alone, others dense.

    Returns ``{weight name: {sparsity: accuracy}}``, always including sparsity 0.0. The model is
    changed only while a point is measured and is restored exactly afterwards.
    """
    grid = sorted({0.0, *(check_sparsity(s) for s in sparsities)})
    names = select_parameters(model, layers, exclude)
    if scores is None:
        scores = compute_scores(model, names, criterion, data=data, batches=batches,
                                hessian=hessian, seed=seed)
    params = weight_lookup(model)
    dense = split_accuracy(model, data, split)
    curves: Curves = {}
    for name in names:
        original = params[name].detach().clone()
        curve = {0.0: dense}
        try:
            for sparsity in grid[1:]:
                mask = global_masks({name: scores[name]}, sparsity)[name]
                with torch.no_grad():
                    params[name].copy_(original * mask)
                curve[sparsity] = split_accuracy(model, data, split)
        finally:
            with torch.no_grad():
                params[name].copy_(original)
        curves[name] = curve
    return curves


def preferred_sparsity(curve: Mapping[float, float], tolerance: float) -> float:
    """The largest sparsity whose accuracy stays within ``tolerance`` of the dense point."""
    dense = curve[0.0] if 0.0 in curve else max(curve.values())
    return max(s for s, acc in curve.items() if dense - acc <= tolerance + 1e-12)


def _scaled(preferred: float, power: float, max_sparsity: float) -> float:
    # Density (1 − s) raised to a common power keeps the layers' ordering and is continuous.
    return min(max_sparsity, 1.0 - (1.0 - preferred) ** power)


def allocate_sparsity(curves: Mapping[str, Mapping[float, float]], sizes: Mapping[str, int],
                      target: float, tolerance: float = 0.01,
                      max_sparsity: float = 0.995) -> dict[str, float]:
    """Per-layer sparsities whose parameter-weighted mean is ``target`` (up to rounding).

    Each layer starts from :func:`preferred_sparsity` (the drop-within-``tolerance`` choice); the
    densities ``1 − s_l`` are then raised to one common power, found by bisection, so the total
    meets the target while tolerant layers keep taking more than sensitive ones. A layer that
    tolerates no pruning at all stays dense.
    """
    target = check_sparsity(target, "target sparsity")
    missing = [name for name in curves if name not in sizes]
    if missing:
        raise NnzipError(f"no parameter count for {missing[0]!r}: pass sizes for every curve")
    preferred = {name: preferred_sparsity(curve, tolerance) for name, curve in curves.items()}
    total = sum(sizes[name] for name in curves)

    def weighted(power: float) -> float:
        return sum(sizes[n] * _scaled(p, power, max_sparsity) for n, p in preferred.items()) / total

    if target == 0.0:
        return dict.fromkeys(preferred, 0.0)
    reachable = sum(sizes[n] * max_sparsity for n, p in preferred.items() if p > 0) / total
    if reachable < target:
        dense = [n for n, p in preferred.items() if p == 0]
        raise NnzipError(f"a sensitivity-guided split cannot reach sparsity {target:.3f}: "
                         f"{', '.join(dense)} tolerate no pruning within an accuracy drop of "
                         f"{tolerance}; raise the tolerance or use scope 'global'")
    low, high = 0.0, 1.0
    while weighted(high) < target:
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if weighted(middle) < target else (low, middle)
    return {name: _scaled(p, high, max_sparsity) for name, p in preferred.items()}


def weighted_sparsity(sparsities: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Parameter-weighted mean of per-layer sparsities."""
    total = sum(sizes[name] for name in sparsities)
    return sum(sizes[name] * s for name, s in sparsities.items()) / total if total else math.nan
