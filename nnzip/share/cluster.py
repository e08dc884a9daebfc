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

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.prune.masks import select_parameters
from nnzip.share.kmeans import Init, check_bits, gmm_1d, kmeans_1d, kmeans_vectors
from nnzip.share.modules import SharedWeight, share_weight

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


def _module_of(model: nn.Module, parameter_name: str) -> nn.Module:
    module_name, _, _ = parameter_name.rpartition(".")
    return model.get_submodule(module_name) if module_name else model


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


def layer_bits(model: nn.Module, names: Sequence[str], bits: int | None, conv_bits: int | None,
               linear_bits: int | None, per_layer: Mapping[str, int] | None = None
               ) -> dict[str, int]:
    """Bits of every selected weight: ``per_layer`` > conv_bits / linear_bits > ``bits``."""
    chosen = {}
    per_layer = {k if k.endswith(".weight") else f"{k}.weight": v
                 for k, v in (per_layer or {}).items()}
    for name in names:
        module = _module_of(model, name)
        by_type = conv_bits if isinstance(module, nn.modules.conv._ConvNd) else linear_bits
        value = per_layer.get(name, by_type if by_type is not None else bits)
        if value is None:
            raise NnzipError(f"no bit width for {name}: set bits (or conv_bits / linear_bits)")
        chosen[name] = check_bits(value)
    return chosen


@torch.no_grad()
def cluster_weights(model: nn.Module, bits: int | None = None, *, conv_bits: int | None = None,
                    linear_bits: int | None = None, layer_bits_map: Mapping[str, int] | None = None,
                    layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                    method: Method = "kmeans", init: Init = "linear", seed: int = 0
                    ) -> dict[str, LayerSharing]:
    """Share the weights of every selected Conv/Linear layer in place; per-layer summary back."""
    names = select_parameters(model, layers, exclude)
    widths = layer_bits(model, names, bits, conv_bits, linear_bits, layer_bits_map)
    params = dict(model.named_parameters())
    summary = {}
    for name in names:
        weight = params[name].detach()
        shared = cluster_tensor(weight, widths[name], method=method, init=init, seed=seed,
                                name=name)
        module = _module_of(model, name)
        share_weight(module, shared, name.rpartition(".")[2])
        summary[name] = LayerSharing(
            weights=weight.numel(), kept=int((weight != 0).sum()), bits=widths[name],
            clusters=shared.table_size, zero_code=shared.zero_code,
            relative_error=_relative_error(weight, shared(weight)))
    return summary


def product_quantize_tensor(weight: torch.Tensor, dim: int, bits: int, *, lbg: bool = False,
                            iterations: int = 30, seed: int = 0, name: str = "the weight"
                            ) -> SharedWeight:
    """A :class:`SharedWeight` whose codes index ``2^bits`` codewords of ``dim`` weights."""
    check_bits(bits)
    if weight.numel() == 0:
        raise NnzipError(f"{name} is empty: there are no weights to quantize; exclude the layer")
    rows = weight.shape[0] if weight.dim() > 1 else 1
    columns = weight.numel() // rows
    if dim < 1 or columns % dim:
        raise NnzipError(f"{name} has {columns} weights per row, not divisible by dim={dim}: "
                         "pick a dim that divides it or exclude the layer")
    vectors = weight.detach().float().cpu().reshape(rows * columns // dim, dim)
    codebook, codes = kmeans_vectors(vectors, 2**bits, iterations=iterations, lbg=lbg,
                                     seed=seed, what=name)
    return SharedWeight(codebook.to(weight.dtype), codes.reshape(rows, columns // dim),
                        tuple(weight.shape), bits)


@torch.no_grad()
def product_quantize(model: nn.Module, dim: int = 4, bits: int = 8, *,
                     layers: Sequence[str] | None = None, exclude: Sequence[str] = (),
                     lbg: bool = False, iterations: int = 30, seed: int = 0
                     ) -> dict[str, LayerSharing]:
    """Product-quantize every selected Conv/Linear weight in place; per-layer summary back."""
    names = select_parameters(model, layers, exclude)
    params = dict(model.named_parameters())
    summary = {}
    for name in names:
        weight = params[name].detach()
        shared = product_quantize_tensor(weight, dim, bits, lbg=lbg, iterations=iterations,
                                         seed=seed, name=name)
        share_weight(_module_of(model, name), shared, name.rpartition(".")[2])
        summary[name] = LayerSharing(
            weights=weight.numel(), kept=int((weight != 0).sum()), bits=bits,
            clusters=shared.table_size, zero_code=False,
            relative_error=_relative_error(weight, shared(weight)))
    return summary


def summary_json(summary: Mapping[str, LayerSharing]) -> dict[str, dict]:
    return {name: asdict(layer) for name, layer in summary.items()}
