"""Shared weights as a parametrization: ``weight = table[codes]`` with trainable centroids.

:class:`SharedWeight` is registered on a layer's ``weight`` with
:func:`torch.nn.utils.parametrize.register_parametrization`, so the layer stays a normal
``nn.Linear`` / ``nn.Conv2d`` whose ``weight`` is computed on access. It holds the centroids
(``nn.Parameter``) and the codes (a buffer). The assignments are fixed; because the weight is an
index into the centroids, autograd's backward of the indexing sums the gradients of all weights
that share a centroid — exactly the centroid update of Deep Compression (Han et al. 2016, §3.3,
Fig. 3). A pruned layer keeps code 0 for an exact zero that is not a parameter, so pruned
weights stay zero while the centroids train.

Product quantization uses the same module with vector centroids (k, d): the codes index rows of
d consecutive weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnzip.errors import NnzipError


class SharedWeight(nn.Module):
    """``weight = cat([0], centroids)[codes]`` (with ``zero_code``) or ``centroids[codes]``."""

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor, shape: tuple[int, ...],
                 bits: int, zero_code: bool = False) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids.detach().clone())
        self.register_buffer("codes", codes.detach().to(torch.int64).clone())
        self.shape = tuple(shape)
        self.bits = bits
        self.zero_code = zero_code
        entries = self.table_size
        if entries > 2**bits:
            raise NnzipError(f"{entries} shared values do not fit in {bits} bits")
        vector = math.prod(centroids.shape[1:])
        if self.codes.numel() * vector != math.prod(self.shape):
            raise NnzipError(f"{self.codes.numel()} codes of {vector} weights do not fill a "
                             f"weight of shape {self.shape}")

    @property
    def table_size(self) -> int:
        return self.centroids.shape[0] + int(self.zero_code)

    def table(self) -> torch.Tensor:
        """The shared values every code indexes (row 0 is the fixed zero with ``zero_code``)."""
        if not self.zero_code:
            return self.centroids
        zero = torch.zeros_like(self.centroids[:1])
        return torch.cat([zero, self.centroids])

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        del original  # the shared values replace the dense weight entirely
        return self.table()[self.codes].reshape(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        # Nothing of the dense weight is kept: the parametrization's "original" is empty.
        return torch.empty(0, dtype=weight.dtype, device=weight.device)

    def extra_repr(self) -> str:
        kind = f"{self.centroids.shape[0]} centroids"
        if self.centroids.dim() > 1:
            kind = f"{self.centroids.shape[0]} codewords of {self.centroids.shape[1]}"
        return f"{kind}, {self.bits} bits" + (", fixed zero" if self.zero_code else "")


def share_weight(layer: nn.Module, shared: SharedWeight, name: str = "weight") -> None:
    """Replace ``layer.<name>`` by ``shared`` (the dense tensor is dropped)."""
    if parametrize.is_parametrized(layer, name):
        raise NnzipError(f"{type(layer).__name__}.{name} is already shared or parametrized: "
                         "cluster each layer once")
    parametrize.register_parametrization(layer, name, shared, unsafe=True)
    original = layer.parametrizations[name].original
    original.requires_grad_(False)


def shared_weights(model: nn.Module) -> dict[str, SharedWeight]:
    """Every :class:`SharedWeight` of ``model``, by the name of the weight it replaces.

    A tied weight is shared once, through one :class:`SharedWeight` registered under each of
    its names, so it appears once per name with the same object.
    """
    found = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, chain in module.parametrizations.items():
            shared = [p for p in chain if isinstance(p, SharedWeight)]
            if shared:
                found[f"{module_name}.{tensor_name}" if module_name else tensor_name] = shared[0]
    return found


@torch.no_grad()
def round_codebooks(model: nn.Module, dtype: torch.dtype = torch.float16) -> None:
    """Round every shared value to ``dtype`` (kept in the model's dtype), so the .nnz file can
    store the codebooks in ``dtype`` without changing a single output bit."""
    for shared in shared_weights(model).values():
        shared.centroids.copy_(shared.centroids.to(dtype).to(shared.centroids.dtype))


def unshare(model: nn.Module) -> nn.Module:
    """Turn every shared weight back into a plain parameter holding its current values.

    The names of a tied weight get one parameter again, so the tie survives.
    """
    plain: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(module.parametrizations):
            chain = module.parametrizations[tensor_name]
            shared = [p for p in chain if isinstance(p, SharedWeight)]
            if not shared:
                continue
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
            if id(shared[0]) in plain:
                setattr(module, tensor_name, plain[id(shared[0])])
            else:
                plain[id(shared[0])] = getattr(module, tensor_name)
    return model
