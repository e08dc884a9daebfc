"""Low-rank factorization of fully connected layers by truncated SVD.

W (out × in) ≈ U_r Σ_r V_rᵀ, so ``Linear(in, out)`` becomes ``Linear(in, r) → Linear(r, out)``
with r(in + out) weights instead of in·out (Denton et al. 2014, "Exploiting Linear Structure
Within Convolutional Networks for Efficient Evaluation", §3; Xue, Li & Gong 2013 for DNN
acoustic models). By Eckart–Young the truncation is the best rank-r approximation in Frobenius
norm. Σ_r^½ goes into each factor, so both layers have weights of the same scale, which suits the
fine-tune that usually follows. The replacement is a plain ``nn.Sequential`` of two
``nn.Linear``, so quantization, pruning and export treat it like any other layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models.surgery import set_module


def linear_params(in_features: int, out_features: int, rank: int | None = None,
                  bias: bool = True) -> int:
    """Parameters of a Linear layer, or of its rank-``rank`` factorization."""
    weights = in_features * out_features if rank is None else rank * (in_features + out_features)
    return weights + (out_features if bias else 0)


def saves_parameters(in_features: int, out_features: int, rank: int) -> bool:
    """Whether two layers of rank ``rank`` hold fewer weights than the original one."""
    return rank * (in_features + out_features) < in_features * out_features


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of Σσ² (the squared norm)."""
    if not 0.0 < energy <= 1.0:
        raise NnzipError(f"energy is the fraction of Σσ² to keep, in (0, 1], got {energy}: "
                         "e.g. 0.9")
    squared = singular_values.double().pow(2)
    kept = torch.cumsum(squared, 0) / squared.sum().clamp_min(1e-300)
    # The small tolerance keeps energy=1 from asking for one more value than exists.
    return min(int((kept < energy - 1e-12).sum().item()) + 1, len(singular_values))


def rank_for_ratio(in_features: int, out_features: int, ratio: float) -> int:
    """The largest rank whose factorized weights are at most ``ratio`` × the original's."""
    if not 0.0 < ratio < 1.0:
        raise NnzipError(f"ratio is the fraction of a layer's weights to keep, in (0, 1), got "
                         f"{ratio}: e.g. 0.3")
    return max(1, math.floor(ratio * in_features * out_features / (in_features + out_features)))


def check_rank(rank: int, in_features: int, out_features: int, name: str = "layer") -> int:
    full = min(in_features, out_features)
    if not isinstance(rank, int) or rank <= 0:
        raise NnzipError(f"{name}: the rank must be a positive integer, got {rank!r}: e.g. 32 "
                         "(or choose it by energy or ratio)")
    if rank > full:
        raise NnzipError(f"{name}: rank {rank} exceeds the full rank {full} of a "
                         f"{out_features}×{in_features} weight: use at most {full}")
    return rank


@torch.no_grad()
def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``layer`` as ``Linear(in, rank, bias=False) → Linear(rank, out)``; exact at full rank."""
    out_features, in_features = layer.weight.shape
    check_rank(rank, in_features, out_features)
    weight = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(in_features, rank, bias=False)
    second = nn.Linear(rank, out_features, bias=layer.bias is not None)
    first.weight.copy_(root[:, None] * vh[:rank])
    second.weight.copy_(u[:, :rank] * root[None, :])
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(device=layer.weight.device, dtype=layer.weight.dtype)


def select_layers(model: nn.Module, kind: type[nn.Module], layers: list[str] | None,
                  exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Names of the ``kind`` modules to factorize: ``layers`` (checked) or all, less ``exclude``."""
    modules = dict(model.named_modules())
    candidates = [name for name, module in modules.items() if type(module) is kind]
    for name in [*(layers or []), *exclude]:
        if name not in modules:
            raise NnzipError(f"the model has no layer {name!r}: name one of "
                             f"{', '.join(candidates) or '(none)'}")
        if type(modules[name]) is not kind:
            raise NnzipError(f"layer {name!r} is a {type(modules[name]).__name__}, not an "
                             f"nn.{kind.__name__}: name one of {', '.join(candidates)}")
    chosen = list(layers) if layers is not None else candidates
    return [name for name in chosen if name not in set(exclude)]


def factorize_linears(model: nn.Module, *, rank: int | None = None, energy: float | None = None,
                      ratio: float | None = None, layers: list[str] | None = None,
                      exclude: list[str] | tuple[str, ...] = ()) -> dict[str, dict]:
    """Replace Linear layers of ``model`` in place by their truncated SVD; returns what happened.

    Exactly one of ``rank`` (the same for every layer, capped at each layer's full rank),
    ``energy`` (kept fraction of Σσ²) or ``ratio`` (kept fraction of weights) chooses the rank.
    A layer whose factorization would not hold fewer weights is left as it is and reported with
    ``"skipped"``; the others report ``rank`` and ``params_before`` / ``params_after``.
    """
    if sum(option is not None for option in (rank, energy, ratio)) != 1:
        raise NnzipError("choose the rank in exactly one way: rank=, energy= (e.g. 0.9) or "
                         "ratio= (e.g. 0.3)")
    if rank is not None and (not isinstance(rank, int) or rank <= 0):
        raise NnzipError(f"the rank must be a positive integer, got {rank!r}")
    done: dict[str, dict] = {}
    for name in select_layers(model, nn.Linear, layers, exclude):
        layer = model.get_submodule(name)
        out_features, in_features = layer.weight.shape
        if rank is not None:
            chosen = min(rank, in_features, out_features)
        elif ratio is not None:
            chosen = rank_for_ratio(in_features, out_features, ratio)
        else:
            singular_values = torch.linalg.svdvals(layer.weight.detach().double())
            chosen = rank_for_energy(singular_values, energy)
        bias = layer.bias is not None
        before = linear_params(in_features, out_features, bias=bias)
        if not saves_parameters(in_features, out_features, chosen):
            done[name] = {"skipped": f"rank {chosen} would not save parameters "
                                     f"({linear_params(in_features, out_features, chosen, bias)}"
                                     f" vs {before})", "params_before": before}
            continue
        set_module(model, name, svd_linear(layer, chosen))
        done[name] = {"rank": chosen, "params_before": before,
                      "params_after": linear_params(in_features, out_features, chosen, bias)}
    return done
