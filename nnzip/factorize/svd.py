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

import logging
import math

import torch
from torch import nn

from nnzip.core.coverage import MethodResult, build_coverage
from nnzip.core.select import select_names
from nnzip.core.weights import Kind, Weight, find_weights
from nnzip.errors import NnzipError
from nnzip.models.surgery import set_module

log = logging.getLogger(__name__)


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
        raise NnzipError(f"keep is the fraction of a layer's weights to keep, in (0, 1), got "
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


def _is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")


def select_layers(model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...],
                  layers: list[str] | None, exclude: list[str] | tuple[str, ...] = ()
                  ) -> list[str]:
    """Names of the ``kind`` modules to factorize: ``layers`` (default: all) less ``exclude``.

    Names, module prefixes and glob patterns (``blocks.*.mlp.0``), as every method selects
    layers (:func:`nnzip.core.select_names`); a pattern that names no ``kind`` layer is an error.
    """
    kinds = kind if isinstance(kind, tuple) else (kind,)
    label = " / ".join(f"nn.{k.__name__}" for k in kinds)
    modules = dict(model.named_modules())
    candidates = [name for name, module in modules.items() if isinstance(module, kinds) and name]
    if not candidates:
        return []
    others = [name for name in modules if name and name not in candidates]
    return select_names(candidates, layers, exclude, others=others, what=f"{label} layers")


def resolve_keep(keep: float | None, ratio: float | None, method: str) -> float | None:
    """``keep`` (the fraction of each layer's weights kept), or ``ratio``, its old name."""
    if ratio is None:
        return keep
    if keep is not None:
        raise NnzipError(f"{method}: give keep (the fraction of weights kept) only; ratio is "
                         "its old name")
    log.warning("%s: 'ratio' is deprecated, call it 'keep' (the fraction of each layer's "
                "weights kept)", method)
    return ratio


def weights_by_name(model: nn.Module) -> dict[str, Weight]:
    """Every weight under each of its names (a tied tensor under all of them)."""
    return {name: weight for weight in find_weights(model)
            for name in (weight.name, *weight.aliases)}


#: PyTorch layers whose forward reads their children's ``.weight`` directly (the fused fast
#: path of the transformer layers): replacing a child by a Sequential breaks them.
_READ_DIRECTLY = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def module_skip_reason(name: str, weights: dict[str, Weight], model: nn.Module | None = None
                       ) -> str | None:
    """Why module ``name`` cannot be replaced by a factorized one (None: it can)."""
    parent_name = name.rpartition(".")[0]
    if model is not None:
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, _READ_DIRECTLY):
            return (f"{parent_name or 'the model'} ({type(parent).__name__}) reads "
                    f"{name}.weight directly (its fused fast path), so a factorized "
                    "replacement would break it")
    weight = weights.get(f"{name}.weight")
    if weight is None:
        return None
    if weight.tied:
        others = [other for other in (weight.name, *weight.aliases) if other != f"{name}.weight"]
        return (f"{name}.weight is tied to {', '.join(others)} (one tensor): factorizing one "
                "user would untie it and the model would grow")
    if weight.reader is not None:
        return (f"{weight.reader} (nn.MultiheadAttention) reads {name}.weight directly, so a "
                "factorized replacement would break it")
    return None


def other_weight_reasons(model: nn.Module, handled: tuple[str, ...]) -> dict[str, str]:
    """Why a factorization (which replaces modules of the ``handled`` weight kinds) leaves the
    model's other weights alone, by weight name."""
    why = {
        Kind.LINEAR: "a Linear layer: svd factorizes those (tucker does convolutions)",
        Kind.CONV: "a convolution: tucker factorizes those (svd does Linear layers)",
        Kind.CONV_TRANSPOSE: "a transposed convolution: not factorized",
        Kind.EMBEDDING: "an embedding table is looked up, not multiplied: not factorized",
        Kind.ATTENTION_IN: "read directly by nn.MultiheadAttention (in_proj_weight): a "
                           "factorized replacement would break it",
        Kind.ATTENTION_OUT: "read directly by nn.MultiheadAttention (out_proj.weight): a "
                            "factorized replacement would break it",
        Kind.RNN: "a recurrent gate matrix read by the RNN's fused kernel: not factorized",
        Kind.FUNCTIONAL: "a bare parameter used through torch.nn.functional: there is no module "
                         "to replace",
    }
    return {weight.name: why[weight.kind] for weight in find_weights(model)
            if weight.kind not in handled}


def factorize_linears_result(model: nn.Module, *, rank: int | None = None,
                             energy: float | None = None, keep: float | None = None,
                             layers: list[str] | None = None,
                             exclude: list[str] | tuple[str, ...] = (),
                             ratio: float | None = None) -> MethodResult:
    """:func:`factorize_linears` with its coverage (details: what happened per layer)."""
    keep = resolve_keep(keep, ratio, "svd")
    if sum(option is not None for option in (rank, energy, keep)) != 1:
        raise NnzipError("choose the rank in exactly one way: rank=, energy= (e.g. 0.9) or "
                         "keep= (e.g. 0.3)")
    if rank is not None and (not isinstance(rank, int) or rank <= 0):
        raise NnzipError(f"the rank must be a positive integer, got {rank!r}")
    weights = weights_by_name(model)
    done: dict[str, dict] = {}
    plan: dict[str, nn.Sequential] = {}
    for name in select_layers(model, nn.Linear, layers, exclude):
        layer = model.get_submodule(name)
        out_features, in_features = layer.weight.shape
        bias = layer.bias is not None
        before = linear_params(in_features, out_features, bias=bias)
        reason = module_skip_reason(name, weights, model)
        if reason is not None:
            done[name] = {"skipped": reason, "params_before": before}
            continue
        if rank is not None:
            chosen = min(rank, in_features, out_features)
        elif keep is not None:
            chosen = rank_for_ratio(in_features, out_features, keep)
        else:
            singular_values = torch.linalg.svdvals(layer.weight.detach().double())
            chosen = rank_for_energy(singular_values, energy)
        if not saves_parameters(in_features, out_features, chosen):
            done[name] = {"skipped": f"rank {chosen} would not save parameters "
                                     f"({linear_params(in_features, out_features, chosen, bias)}"
                                     f" vs {before})", "params_before": before}
            continue
        plan[name] = svd_linear(layer, chosen)
        done[name] = {"rank": chosen, "params_before": before,
                      "params_after": linear_params(in_features, out_features, chosen, bias)}
    return apply_plan(model, "svd", plan, done, (Kind.LINEAR, Kind.ATTENTION_OUT))


def apply_plan(model: nn.Module, method: str, plan: dict[str, nn.Module], done: dict[str, dict],
           handled: tuple[str, ...]) -> MethodResult:
    """Swap in the factorized layers; the coverage is taken first, under the original names."""
    changed = {f"{name}.weight": _what(entry) for name, entry in done.items()
               if "skipped" not in entry}
    skipped = other_weight_reasons(model, handled)
    skipped.update({f"{name}.weight": entry["skipped"] for name, entry in done.items()
                    if "skipped" in entry})
    coverage = build_coverage(model, method, changed, skipped)
    for name, replacement in plan.items():
        set_module(model, name, replacement)
    coverage.log_skipped(log)
    return MethodResult(model, coverage, done)


def _what(entry: dict) -> str:
    rank = entry.get("rank", entry.get("ranks"))
    return (f"rank {rank}: {entry['params_before']} -> {entry['params_after']} parameters")


def factorize_linears(model: nn.Module, *, rank: int | None = None, energy: float | None = None,
                      keep: float | None = None, layers: list[str] | None = None,
                      exclude: list[str] | tuple[str, ...] = (),
                      ratio: float | None = None) -> dict[str, dict]:
    """Replace Linear layers of ``model`` in place by their truncated SVD; returns what happened.

    Exactly one of ``rank`` (the same for every layer, capped at each layer's full rank),
    ``energy`` (kept fraction of Σσ²) or ``keep`` (kept fraction of each layer's weights;
    ``ratio`` is its old name) chooses the rank. A layer whose factorization would not hold
    fewer weights, a Linear tied to another layer (factorizing one user of a tied tensor unties
    it and grows the model) and attention's ``out_proj`` (read directly by its
    ``nn.MultiheadAttention``) are left as they are and reported with ``"skipped"``; the others
    report ``rank`` and ``params_before`` / ``params_after``. :func:`factorize_linears_result`
    also returns the coverage.
    """
    return factorize_linears_result(model, rank=rank, energy=energy, keep=keep, layers=layers,
                                    exclude=exclude, ratio=ratio).details
