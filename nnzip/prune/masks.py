"""Masks: which weights survive, as a plain ``dict[str, BoolTensor]`` keyed by weight name.

A mask is ``True`` where the weight is kept. Masks are computed from importance scores (see
:mod:`nnzip.prune.importance`), written into the weights by :func:`apply_masks`, kept through
fine-tuning by :func:`mask_hook` (the training loop's step hook) and folded away by
:func:`fold_masks`, which leaves a plain model whose pruned weights are exact zeros: no
``weight_orig`` / ``weight_mask`` re-parametrization (``torch.nn.utils.prune``) survives.

The weights pruning may change are every weight :func:`nnzip.core.find_weights` finds: Linear and
convolution weights (grouped, depthwise, 1-D/3-D, transposed), embeddings, attention projections,
LSTM/GRU gate matrices and bare parameters used through ``F.linear``/``F.conv2d``. A tied tensor
is one weight, keyed by its first name; its other names (``decoder.weight`` tied to
``embed.weight``) are accepted wherever a name is, and resolve to it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nnzip.core import Coverage, Weight, build_coverage, find_weights
from nnzip.core.select import select_weights as core_select_weights
from nnzip.core.weights import Kind
from nnzip.errors import NnzipError

log = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]

#: Module types whose ``weight`` the .nnz layer table lists (nnzip.codec). Pruning itself no
#: longer selects by module type: it covers every weight :func:`nnzip.core.find_weights` finds.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[Weight]:
    """Every weight pruning may change, in model order, tied tensors once."""
    return find_weights(model)


def prunable_names(model: nn.Module) -> list[str]:
    """Names (``"fc1.weight"``) of every weight pruning may change, tied tensors once."""
    return [weight.name for weight in find_weights(model)]


def weight_lookup(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every name a weight answers to (its own, a tied alias, a raw parameter name) → tensor."""
    lookup = dict(model.named_parameters(remove_duplicate=False))
    for weight in find_weights(model):
        for name in (weight.name, *weight.aliases):
            lookup[name] = weight.param
    return lookup


def canonical_names(model: nn.Module) -> dict[str, str]:
    """Every name and alias of each weight → the name it is keyed by (its first name)."""
    return {name: weight.name for weight in find_weights(model)
            for name in (weight.name, *weight.aliases)}


def canonical(model: nn.Module, names: Sequence[str]) -> list[str]:
    """``names`` with aliases of tied weights replaced by the weight's own name, once each."""
    mapping = canonical_names(model)
    return list(dict.fromkeys(mapping.get(name, name) for name in names))


def select_weights(model: nn.Module, layers: Sequence[str] | None = None,
                   exclude: Sequence[str] = ()) -> list[Weight]:
    """The weights to prune (:func:`nnzip.core.select.select_weights`, the selection every
    method shares)."""
    return core_select_weights(model, layers, exclude, what="weights to prune")


def select_parameters(model: nn.Module, layers: Sequence[str] | None = None,
                      exclude: Sequence[str] = ()) -> list[str]:
    """Names of the weights to prune: ``layers`` (default: every weight) minus ``exclude``.

    See :func:`select_weights`; an unknown name is an error with a did-you-mean.
    """
    return [weight.name for weight in select_weights(model, layers, exclude)]


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


def nm_skip_reason(model: nn.Module, weight: Weight, m: int) -> str | None:
    """Why ``weight`` cannot be pruned N:M with groups of ``m``, or ``None`` when it can.

    N:M is a pattern for sparse matrix-multiply kernels (sparse tensor cores): groups run along
    the reduction (input) dimension of each output row. An embedding table is looked up row by
    row, never multiplied, so the pattern buys nothing there, unless the table is tied to an
    output layer that multiplies by it (a language model's decoder), whose input dimension is the
    table's rows. A transposed convolution stores its weight (in, out/groups, ...): its reduction
    dimension is the first, so groups along a row would not be what a kernel can skip.
    """
    if weight.kind == Kind.EMBEDDING:
        multipliers = [name for name, _ in weight.owners
                       if isinstance(model.get_submodule(name), nn.Linear)]
        if not multipliers:
            return ("embedding table: rows are looked up, not multiplied, so N:M sparse kernels "
                    "cannot speed it up; prune it unstructured instead")
    if weight.kind == Kind.CONV_TRANSPOSE:
        return ("transposed convolution: its weight is stored (in, out/groups, ...), so N:M "
                "groups along a row do not run along the dimension a sparse kernel reduces over")
    if weight.input_length % m:
        return f"{weight.input_length} inputs per output, not a multiple of M={m}"
    return None


def nm_skipped(model: nn.Module, names: Sequence[str], m: int) -> dict[str, str]:
    """The weights among ``names`` N:M (groups of ``m``) cannot prune, each with the reason."""
    wanted = set(canonical(model, names))
    reasons = {weight.name: nm_skip_reason(model, weight, m) for weight in find_weights(model)
               if weight.name in wanted}
    return {name: reason for name, reason in reasons.items() if reason is not None}


def nm_incompatible(model: nn.Module, names: Sequence[str], m: int) -> list[str]:
    """The names among ``names`` N:M with groups of ``m`` skips (see :func:`nm_skip_reason`)."""
    return list(nm_skipped(model, names, m))


def _parameter(lookup: Mapping[str, nn.Parameter], name: str) -> nn.Parameter:
    if name not in lookup:
        raise NnzipError(f"mask for {name!r} matches no parameter of the model: compute "
                         "masks on this model")
    return lookup[name]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero, in place, every weight whose mask is ``False`` (names may be tied aliases)."""
    lookup = weight_lookup(model)
    for name, mask in masks.items():
        param = _parameter(lookup, name)
        param.mul_(mask.to(device=param.device, dtype=param.dtype))


def mask_hook(masks: Mapping[str, torch.Tensor]) -> Callable[[nn.Module, int], None]:
    """A :func:`nnzip.train.fit` step hook that re-applies ``masks`` after every optimizer step.

    The optimizer (momentum, Adam's moments) would otherwise bring pruned weights back.
    """
    resolved: list = []  # [(model, [(parameter, mask), ...])], looked up once per model

    @torch.no_grad()
    def keep_masks(model: nn.Module, step: int) -> None:
        del step
        if not resolved or resolved[0][0] is not model:
            lookup = weight_lookup(model)
            pairs = [(_parameter(lookup, name), mask) for name, mask in masks.items()]
            resolved[:] = [(model, pairs)]
        for param, mask in resolved[0][1]:
            param.mul_(mask.to(device=param.device, dtype=param.dtype))

    return keep_masks


def masks_from_model(model: nn.Module, names: Sequence[str]) -> Masks:
    """Masks that keep exactly the weights of ``names`` that are not zero now."""
    lookup = weight_lookup(model)
    return {name: _parameter(lookup, name).detach() != 0 for name in canonical(model, names)}


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


def _zero_fraction(param: torch.Tensor) -> float:
    return float((param == 0).sum()) / param.numel()


def layer_sparsity(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction of exact zeros in each weight (default: every weight, tied tensors once)."""
    lookup = weight_lookup(model)
    names = prunable_names(model) if names is None else canonical(model, names)
    return {name: _zero_fraction(_parameter(lookup, name).detach()) for name in names}


def sparsity_summary(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """Zeros over the pruned weights, over all weights and over all parameters (each tensor
    counted once, however many names it has)."""
    lookup = weight_lookup(model)
    weights = prunable_names(model)
    names = weights if names is None else canonical(model, names)
    params = dict(model.named_parameters())  # each tensor once

    def zero_fraction(tensors: Sequence[torch.Tensor]) -> float:
        total = sum(tensor.numel() for tensor in tensors)
        zeros = sum(int((tensor == 0).sum()) for tensor in tensors)
        return zeros / total if total else 0.0

    pruned = [_parameter(lookup, name).detach() for name in names]
    every_weight = [lookup[name].detach() for name in weights]
    return {"achieved_sparsity": zero_fraction(pruned),
            "weight_sparsity": zero_fraction(every_weight),
            "param_sparsity": zero_fraction([p.detach() for p in params.values()]),
            "pruned_weights": sum(tensor.numel() for tensor in pruned),
            "weights": sum(tensor.numel() for tensor in every_weight),
            "params": sum(p.numel() for p in params.values())}


def pruning_coverage(model: nn.Module, masks: Mapping[str, torch.Tensor],
                     skipped: Mapping[str, str] | None = None, *, criterion: str = "magnitude",
                     pattern: str = "unstructured", method: str = "prune") -> Coverage:
    """The coverage of a pruning run: every weight with a mask is "pruned to xx.x % zeros
    (criterion, pattern)", every weight in ``skipped`` carries its reason, and every other
    parameter says why pruning did not touch it (not selected, a bias, ...)."""
    lookup = weight_lookup(model)
    changed = {}
    for name in canonical(model, list(masks)):
        zeros = _zero_fraction(_parameter(lookup, name).detach())
        changed[name] = f"pruned to {100 * zeros:.1f} % zeros ({criterion}, {pattern})"
    return build_coverage(model, method, changed, skipped or {})
