"""Masks: which weights survive, as a plain ``dict[str, BoolTensor]`` keyed by parameter name.

A mask is ``True`` where the weight is kept. Masks are computed from importance scores (see
:mod:`nnzip.prune.importance`), written into the weights by :func:`apply_masks`, kept through
fine-tuning by :func:`mask_hook` (the training loop's step hook) and folded away by
:func:`fold_masks`, which leaves a plain model whose pruned weights are exact zeros: no
``weight_orig`` / ``weight_mask`` re-parametrization (``torch.nn.utils.prune``) survives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nnzip.errors import NnzipError

log = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]

#: Layers whose ``weight`` is pruned by default: dense and (non-transposed) convolutions.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, PRUNABLE_TYPES)
            and isinstance(getattr(module, "weight", None), nn.Parameter)}


def prunable_names(model: nn.Module) -> list[str]:
    """Parameter names (``"fc1.weight"``) of every Linear / Conv weight, in model order."""
    return [f"{name}.weight" for name in _weight_layers(model)]


def _resolve(model: nn.Module, names: Sequence[str], option: str) -> list[str]:
    valid = prunable_names(model)
    resolved = []
    for name in names:
        # A layer may be named by its module ("fc1") or by its weight ("fc1.weight").
        candidate = name if name in valid else f"{name}.weight"
        if candidate not in valid:
            layers = ", ".join(v.removesuffix(".weight") for v in valid)
            raise NnzipError(f"unknown layer {name!r} in {option}: the prunable layers of this "
                             f"model are {layers}")
        resolved.append(candidate)
    return resolved


def select_parameters(model: nn.Module, layers: Sequence[str] | None = None,
                      exclude: Sequence[str] = ()) -> list[str]:
    """The weight names to prune: ``layers`` (default: all Linear/Conv weights) minus ``exclude``.

    Layers may be named ``"fc1"`` or ``"fc1.weight"``; an unknown name is an error that lists the
    valid ones.
    """
    chosen = _resolve(model, layers, "layers") if layers is not None else prunable_names(model)
    dropped = set(_resolve(model, exclude, "exclude"))
    selected = [name for name in chosen if name not in dropped]
    if not selected:
        raise NnzipError("no layer is left to prune: name at least one Linear/Conv layer in "
                         "'layers' that is not in 'exclude'")
    return selected


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1), or an error saying what a sparsity is."""
    if not isinstance(sparsity, int | float) or isinstance(sparsity, bool) \
            or math.isnan(sparsity) or not 0.0 <= sparsity < 1.0:
        raise NnzipError(f"{what} must be a fraction of weights to remove in [0, 1), e.g. 0.9, "
                         f"got {sparsity!r}")
    return float(sparsity)


def _count(total: int, sparsity: float) -> int:
    return min(total, round(sparsity * total))


def global_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> Masks:
    """One threshold over all tensors: the ``round(s · N)`` lowest scores overall are pruned.

    Scores are concatenated and the pruned set is chosen by index (``torch.topk``), so ties at
    the threshold never make the count overshoot: the sparsity is exact up to rounding.
    """
    sparsity = check_sparsity(sparsity)
    names = list(scores)
    flat = torch.cat([scores[name].detach().reshape(-1).float().cpu() for name in names])
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    prune_count = _count(flat.numel(), sparsity)
    if prune_count:
        keep[torch.topk(flat, prune_count, largest=False, sorted=False).indices] = False
    masks, start = {}, 0
    for name in names:
        size = scores[name].numel()
        masks[name] = keep[start:start + size].reshape(scores[name].shape) \
            .to(scores[name].device)
        start += size
    return masks


def layer_masks(scores: Mapping[str, torch.Tensor],
                sparsity: float | Mapping[str, float]) -> Masks:
    """Each tensor pruned on its own to ``sparsity`` (one value, or one per name)."""
    masks = {}
    for name, score in scores.items():
        target = sparsity[name] if isinstance(sparsity, Mapping) else sparsity
        target = check_sparsity(target, f"sparsity of {name}")
        masks[name] = global_masks({name: score}, target)[name]
    return masks


def nm_group_size(param_shape: Sequence[int]) -> int:
    """Length of the input dimension N:M groups run along (in_channels·kh·kw for a conv)."""
    return math.prod(param_shape[1:])


def nm_masks(scores: Mapping[str, torch.Tensor], n: int, m: int) -> Masks:
    """N:M semi-structured masks: in every ``m`` consecutive inputs of an output, keep ``n``.

    Groups run along the flattened input dimension of each output row (Mishra et al. 2021,
    "Accelerating Sparse Deep Neural Networks", the 2:4 pattern of NVIDIA Ampere). Every tensor's
    input length must be divisible by ``m`` (see :func:`nm_incompatible`).
    """
    if not 1 <= n <= m:
        raise NnzipError(f"N:M sparsity needs 1 <= N <= M, got N={n}, M={m}: e.g. 2:4")
    masks = {}
    for name, score in scores.items():
        rows, length = score.shape[0], nm_group_size(score.shape)
        if length % m:
            raise NnzipError(f"layer {name} has {length} inputs per output, not divisible by "
                             f"M={m}: exclude it or pick another M")
        groups = score.detach().reshape(rows, length // m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(2, groups.topk(n, dim=2).indices, True)
        masks[name] = keep.reshape(score.shape)
    return masks


def nm_incompatible(model: nn.Module, names: Sequence[str], m: int) -> list[str]:
    """The names among ``names`` whose input length is not a multiple of ``m``."""
    params = dict(model.named_parameters())
    return [name for name in names if nm_group_size(params[name].shape) % m]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero, in place, every weight whose mask is ``False``."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise NnzipError(f"mask for {name!r} matches no parameter of the model: compute "
                             "masks on this model")
        params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))


def mask_hook(masks: Mapping[str, torch.Tensor]) -> Callable[[nn.Module, int], None]:
    """A :func:`nnzip.train.fit` step hook that re-applies ``masks`` after every optimizer step.

    The optimizer (momentum, Adam's moments) would otherwise bring pruned weights back.
    """
    def keep_masks(model: nn.Module, step: int) -> None:
        del step
        apply_masks(model, masks)

    return keep_masks


def masks_from_model(model: nn.Module, names: Sequence[str]) -> Masks:
    """Masks that keep exactly the weights of ``names`` that are not zero now."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() != 0 for name in names}


def fold_masks(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Leave a plain model with exact zeros: apply ``masks`` and remove any pruning hooks.

    Also folds ``torch.nn.utils.prune`` re-parametrizations (``weight_orig`` · ``weight_mask``)
    into plain parameters, so a model pruned by either library saves as ordinary tensors.
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    if masks:
        apply_masks(model, masks)
    return model


def layer_sparsity(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction of exact zeros in each weight (default: every Linear/Conv weight)."""
    params = dict(model.named_parameters())
    names = prunable_names(model) if names is None else names
    return {name: float((params[name] == 0).sum()) / params[name].numel() for name in names}


def sparsity_summary(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """Zeros over the pruned weights, over all Linear/Conv weights and over all parameters."""
    params = dict(model.named_parameters())
    weights = prunable_names(model)
    names = weights if names is None else list(names)

    def zero_fraction(selected: Sequence[str]) -> float:
        total = sum(params[name].numel() for name in selected)
        zeros = sum(int((params[name] == 0).sum()) for name in selected)
        return zeros / total if total else 0.0

    return {"achieved_sparsity": zero_fraction(names),
            "weight_sparsity": zero_fraction(weights),
            "param_sparsity": zero_fraction(list(params)),
            "pruned_weights": sum(params[name].numel() for name in names),
            "weights": sum(params[name].numel() for name in weights),
            "params": sum(p.numel() for p in params.values())}
