"""Weight sharing by clustering, layer by layer, and product quantization of weight rows.

``cluster_weights(model, bits)`` is Deep Compression's quantization step (Han et al. 2016, §3):
every selected Conv/Linear weight is replaced by ``2^bits`` shared values found by k-means (or a
Gaussian mixture). A pruned layer (one holding exact zeros) keeps one code for a fixed zero, so
its pruned weights stay pruned and its ``2^bits − 1`` other codes cluster the surviving weights.

``product_quantize(model, dim, bits)`` is vector quantization of the rows (Gong et al. 2014,
"Compressing Deep Convolutional Networks using Vector Quantization"; Jégou et al. 2011): each row
is cut into sub-vectors of ``dim`` consecutive weights, and one codebook of ``2^bits`` codewords
per layer, learned by k-means (optionally LBG splitting), replaces them.

Both leave trainable codebooks behind (:class:`~nnzip.share.modules.SharedWeight`); a fine-tune
with the ordinary loop then trains the centroids with the assignments fixed.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from nnzip.core.coverage import MethodResult, build_coverage
from nnzip.core.select import select_weights as core_select_weights
from nnzip.core.weights import Kind, Weight, find_weights
from nnzip.errors import NnzipError
from nnzip.share.kmeans import Init, check_bits, gmm_1d, kmeans_1d, kmeans_vectors
from nnzip.share.modules import SharedWeight, share_weight

log = logging.getLogger(__name__)

Method = Literal["kmeans", "gmm"]


@dataclass(frozen=True)
class LayerSharing:
    """What clustering did to one layer (JSON-ready with :func:`dataclasses.asdict`)."""

    weights: int
    kept: int
    bits: int
    clusters: int
    zero_code: bool
    relative_error: float


def cluster_tensor(weight: torch.Tensor, bits: int, *, method: Method = "kmeans",
                   init: Init = "linear", keep_zero: bool | None = None, seed: int = 0,
                   name: str = "the weight") -> SharedWeight:
    """A :class:`SharedWeight` for ``weight`` with at most ``2^bits`` shared values.

    ``keep_zero`` (default: whether the weight holds any exact zero) reserves code 0 for a fixed
    zero and clusters only the non-zero weights.
    """
    check_bits(bits)
    values = weight.detach().float().cpu().reshape(-1)
    if values.numel() == 0:
        raise NnzipError(f"{name} is empty: there are no weights to cluster; exclude the layer")
    keep_zero = bool((values == 0).any()) if keep_zero is None else keep_zero
    clusters = 2**bits - int(keep_zero)
    if keep_zero and clusters < 1:
        raise NnzipError(f"{name}: 1 bit leaves no code besides the pruned zero")
    live = values != 0 if keep_zero else torch.ones_like(values, dtype=torch.bool)
    codes = torch.zeros(values.numel(), dtype=torch.int64)
    if not live.any():
        raise NnzipError(f"{name} is entirely pruned: nothing to cluster; exclude the layer")
    if clusters == 1:
        centroids = np.array([float(values[live].mean())])
        live_codes = np.zeros(int(live.sum()), dtype=np.int64)
    else:
        cluster = gmm_1d if method == "gmm" else kmeans_1d
        if method not in ("kmeans", "gmm"):
            raise NnzipError(f"unknown clustering method {method!r}: use kmeans or gmm")
        centroids, live_codes = cluster(values[live], clusters, init, seed=seed, what=name)
    codes[live] = torch.from_numpy(live_codes) + int(keep_zero)
    return SharedWeight(torch.from_numpy(centroids).to(weight.dtype), codes,
                        tuple(weight.shape), bits, zero_code=keep_zero)


def _relative_error(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).pow(2).sum() / before.pow(2).sum().clamp_min(1e-12))


def select_weights(model: nn.Module, layers: Sequence[str] | None = None,
                   exclude: Sequence[str] = ()) -> list[Weight]:
    """The weights to share: every weight :func:`find_weights` lists (Linear, conv, attention
    projections, RNN gates, embeddings, bare parameters) that ``layers`` / ``exclude`` select
    (:func:`nnzip.core.select.select_weights`, the selection every method shares)."""
    return core_select_weights(model, layers, exclude, what="weights to share")


def _is_conv(weight: Weight) -> bool:
    return weight.kind in (Kind.CONV, Kind.CONV_TRANSPOSE) or (weight.kind == Kind.FUNCTIONAL
                                                     and len(weight.shape) > 2)


def layer_bits(model: nn.Module, weights: Sequence[Weight | str], bits: int | None,
               conv_bits: int | None, linear_bits: int | None,
               per_layer: Mapping[str, int] | None = None) -> dict[str, int]:
    """Bits of every selected weight: ``per_layer`` > conv_bits / linear_bits > ``bits``.

    ``per_layer`` keys may name the weight (``fc1.weight``, any name of a tied tensor) or its
    module (``fc1``); conv_bits covers convolutions (and 4-D bare parameters), linear_bits every
    other weight (Linear, attention, RNN, embedding).
    """
    if any(isinstance(weight, str) for weight in weights):
        known = {weight.name: weight for weight in find_weights(model)}
        weights = [known[weight] if isinstance(weight, str) else weight for weight in weights]
    chosen = {}
    for weight in weights:
        names = (weight.name, *weight.aliases)
        keys = [key for key in (per_layer or {}) if key in names
                or f"{key}.weight" in names]
        by_type = conv_bits if _is_conv(weight) else linear_bits
        value = per_layer[keys[0]] if keys else (by_type if by_type is not None else bits)
        if value is None:
            raise NnzipError(f"no bit width for {weight.name}: set bits (or conv_bits / "
                             "linear_bits)")
        chosen[weight.name] = check_bits(value)
    _check_layer_bits_used(per_layer or {}, weights)
    return chosen


def _check_layer_bits_used(per_layer: Mapping[str, int], weights: Sequence[Weight]) -> None:
    """A ``layer_bits`` key that names no clustered weight is an error (it was once silently
    ignored), with a did-you-mean among the weights' and their modules' names."""
    names = [name for weight in weights for name in (weight.name, *weight.aliases)]
    accepted = set(names) | {name.removesuffix(".weight") for name in names
                             if name.endswith(".weight")}
    for key in per_layer:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = sorted(accepted)
            listed = ", ".join(shown[:12]) + (", ..." if len(shown) > 12 else "")
            raise NnzipError(f"layer_bits: {key!r} names no weight being clustered{hint}; name "
                             f"a weight or its layer: {listed}")


def _share_everywhere(model: nn.Module, weight: Weight, shared: SharedWeight) -> None:
    """Parametrize every name of ``weight`` with the one ``shared`` module: it stays tied.

    The owning module keeps reading ``.weight`` (or ``in_proj_weight``, ``weight_ih_l0``, a bare
    parameter), now computed from the shared values, so attention, RNNs and functional code
    keep working without swapping any module.
    """
    for owner, attr in weight.owners:
        module = model.get_submodule(owner) if owner else model
        share_weight(module, shared, attr)


def _summary(weight: torch.Tensor, shared: SharedWeight, bits: int, zero_code: bool
             ) -> LayerSharing:
    return LayerSharing(weights=weight.numel(), kept=int((weight != 0).sum()), bits=bits,
                        clusters=shared.table_size, zero_code=zero_code,
                        relative_error=_relative_error(weight, shared(weight)))


def _finish(model: nn.Module, method: str, plan: dict[str, tuple[Weight, SharedWeight]],
            summary: dict[str, LayerSharing], skipped: dict[str, str]) -> MethodResult:
    if not plan:
        listed = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise NnzipError(f"{method}: no weight left to share ({listed}); select other layers "
                         "or change the options")
    changed = {name: f"{layer.clusters} shared values ({layer.bits} bits), relative error "
                     f"{layer.relative_error:.2g}" for name, layer in summary.items()}
    coverage = build_coverage(model, method, changed, skipped)  # names before parametrizing
    for weight, shared in plan.values():
        _share_everywhere(model, weight, shared)
    coverage.log_skipped(log)
    return MethodResult(model, coverage, dict(summary))


@torch.no_grad()
def cluster_weights_result(model: nn.Module, bits: int | None = None, *,
                           conv_bits: int | None = None, linear_bits: int | None = None,
                           layer_bits_map: Mapping[str, int] | None = None,
                           layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                           method: Method = "kmeans", init: Init = "linear", seed: int = 0
                           ) -> MethodResult:
    """:func:`cluster_weights` with its coverage (details: the per-weight summary)."""
    weights = select_weights(model, layers, exclude)
    widths = layer_bits(model, weights, bits, conv_bits, linear_bits, layer_bits_map)
    plan, summary = {}, {}
    for weight in weights:
        values = weight.param.detach()
        shared = cluster_tensor(values, widths[weight.name], method=method, init=init,
                                seed=seed, name=weight.name)
        plan[weight.name] = (weight, shared)
        summary[weight.name] = _summary(values, shared, widths[weight.name], shared.zero_code)
    return _finish(model, "cluster", plan, summary, {})


def cluster_weights(model: nn.Module, bits: int | None = None, *, conv_bits: int | None = None,
                    linear_bits: int | None = None, layer_bits_map: Mapping[str, int] | None = None,
                    layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                    method: Method = "kmeans", init: Init = "linear", seed: int = 0
                    ) -> dict[str, LayerSharing]:
    """Share every selected weight in place (any weight :func:`select_weights` lists; a tied
    tensor is clustered once and stays tied); per-weight summary back.

    :func:`cluster_weights_result` also returns the coverage.
    """
    return cluster_weights_result(
        model, bits, conv_bits=conv_bits, linear_bits=linear_bits,
        layer_bits_map=layer_bits_map, layers=layers, exclude=exclude, method=method, init=init,
        seed=seed).details


def _row_length(weight: torch.Tensor) -> tuple[int, int]:
    rows = weight.shape[0] if weight.dim() > 1 else 1
    return rows, weight.numel() // rows


def product_quantize_tensor(weight: torch.Tensor, dim: int, bits: int, *, lbg: bool = False,
                            iterations: int = 30, seed: int = 0, name: str = "the weight"
                            ) -> SharedWeight:
    """A :class:`SharedWeight` whose codes index ``2^bits`` codewords of ``dim`` weights."""
    check_bits(bits)
    if weight.numel() == 0:
        raise NnzipError(f"{name} is empty: there are no weights to quantize; exclude the layer")
    rows, columns = _row_length(weight)
    if dim < 1 or columns % dim:
        raise NnzipError(f"{name} has {columns} weights per row, not divisible by dim={dim}: "
                         "pick a dim that divides it or exclude the layer")
    vectors = weight.detach().float().cpu().reshape(rows * columns // dim, dim)
    codebook, codes = kmeans_vectors(vectors, 2**bits, iterations=iterations, lbg=lbg,
                                     seed=seed, what=name)
    return SharedWeight(codebook.to(weight.dtype), codes.reshape(rows, columns // dim),
                        tuple(weight.shape), bits)


def _pq_skip_reason(weight: Weight, dim: int, bits: int) -> str | None:
    _, columns = _row_length(weight.param)
    if dim < 1 or columns % dim:
        return (f"{columns} weights per row, not divisible by dim={dim}: pick a dim that "
                "divides it, or exclude it")
    rows = weight.numel // dim
    if 2**bits * dim >= weight.numel:
        return (f"a codebook of {2**bits} codewords of {dim} weights is as large as the weight "
                f"itself ({weight.numel} weights, {rows} sub-vectors): it would grow")
    return None


@torch.no_grad()
def product_quantize_result(model: nn.Module, dim: int = 4, bits: int = 8, *,
                            layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                            lbg: bool = False, iterations: int = 30, seed: int = 0
                            ) -> MethodResult:
    """:func:`product_quantize` with its coverage (details: the per-weight summary).

    A weight whose rows do not split into ``dim``-weight sub-vectors, or which is smaller than
    its codebook, is left as it is and listed in the coverage with the reason.
    """
    check_bits(bits)
    plan, summary, skipped = {}, {}, {}
    for weight in select_weights(model, layers, exclude):
        reason = _pq_skip_reason(weight, dim, bits)
        if reason is not None:
            skipped[weight.name] = reason
            continue
        values = weight.param.detach()
        shared = product_quantize_tensor(values, dim, bits, lbg=lbg, iterations=iterations,
                                         seed=seed, name=weight.name)
        plan[weight.name] = (weight, shared)
        summary[weight.name] = _summary(values, shared, bits, False)
    return _finish(model, "product_quantize", plan, summary, skipped)


def product_quantize(model: nn.Module, dim: int = 4, bits: int = 8, *,
                     layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                     lbg: bool = False, iterations: int = 30, seed: int = 0
                     ) -> dict[str, LayerSharing]:
    """Product-quantize every selected weight in place (a tied tensor once); per-weight summary.

    :func:`product_quantize_result` also returns the coverage, with the weights it skipped.
    """
    return product_quantize_result(model, dim, bits, layers=layers, exclude=exclude, lbg=lbg,
                                   iterations=iterations, seed=seed).details


def summary_json(summary: Mapping[str, LayerSharing]) -> dict[str, dict]:
    return {name: asdict(layer) for name, layer in summary.items()}
