"""Attention as four Linear layers, so that quantization reaches every projection.

``nn.MultiheadAttention`` keeps its query/key/value projections in one bare parameter
(``in_proj_weight``) and reads ``out_proj.weight`` directly inside
``F.multi_head_attention_forward``, so a method that swaps Linear modules either misses the
projections or breaks the layer; ``nn.TransformerEncoderLayer`` in eval mode even bypasses the
module and hands the raw tensors to a fused kernel. :class:`UnfusedMultiheadAttention` is the
same function written as four ``nn.Linear`` (q, k, v, out) around
``F.scaled_dot_product_attention`` (the design of ``torch.ao.nn.quantizable.
MultiheadAttention``): every projection is then an ordinary Linear that gets weight and
activation quantization, GPTQ, QAT and QDQ export like any other.

:func:`unfuse_attention` swaps every ``nn.MultiheadAttention`` of a model for one (outputs equal
within float round-off, same call signature and return value), :func:`fuse_attention` swaps back
those whose projections are plain Linears again (e.g. after :func:`nnzip.runtime.onnx_export.
float_view`), so a float model leaves with the structure it came with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models.surgery import set_module

#: Projections in the order ``in_proj_weight`` stacks them.
PROJECTIONS = ("q", "k", "v")


@dataclass(frozen=True)
class Unfused:
    """What :func:`unfuse_attention` did: the weights of the new Linears, by the name of the
    original parameter they came from (``in_proj_weight`` rows, or a separate projection)."""

    #: new weight name ("blocks.0.attn.q_proj.weight") -> (original name, part: "q"/"k"/"v"/"out")
    origins: dict[str, tuple[str, str]]
    #: attention modules left fused, and why
    refused: dict[str, str]


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = may not attend, nn.MultiheadAttention's convention) as the
    additive float mask SDPA and the explicit softmax both take; float masks pass through."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


class UnfusedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (without ``add_bias_kv`` / ``add_zero_attn``) on four Linears.

    Build it with :meth:`from_float`. ``forward`` takes and returns what
    ``nn.MultiheadAttention.forward`` does (batched or unbatched, ``batch_first`` either way,
    boolean or float masks, ``need_weights`` with per-head or averaged weights, ``is_causal``).
    """

    # nn.TransformerEncoder(Layer) reads these before choosing its fused fast path, which would
    # hand raw tensors to a kernel and bypass the Linears: in_proj_bias None sends it down the
    # slow path, which calls this module.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0,
                 bias: bool = True, kdim: int | None = None, vdim: int | None = None,
                 batch_first: bool = False, packed: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        # Whether the original stacked q, k, v in one in_proj_weight (to rebuild it the same).
        self.packed = packed
        options = {"bias": bias, "device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, **options)
        self.k_proj = nn.Linear(self.kdim, embed_dim, **options)
        self.v_proj = nn.Linear(self.vdim, embed_dim, **options)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **options)

    @classmethod
    def from_float(cls, attention: nn.MultiheadAttention,
                   memo: dict[int, tuple[nn.Parameter, ...]] | None = None
                   ) -> UnfusedMultiheadAttention:
        """The same attention on four Linears. ``out_proj`` keeps the original parameters;
        q/k/v get copies of their rows of ``in_proj_weight`` (the same copies for another
        attention sharing that tensor, through ``memo``, so tied weights stay tied)."""
        bias = attention.in_proj_bias is not None
        reference = (attention.in_proj_weight if attention._qkv_same_embed_dim
                     else attention.q_proj_weight)
        unfused = cls(attention.embed_dim, attention.num_heads, dropout=attention.dropout,
                      bias=bias, kdim=attention.kdim, vdim=attention.vdim,
                      batch_first=attention.batch_first, packed=attention._qkv_same_embed_dim,
                      device=reference.device, dtype=reference.dtype)
        memo = {} if memo is None else memo
        key = id(attention.in_proj_weight if attention._qkv_same_embed_dim
                 else attention.q_proj_weight)
        if key not in memo:
            memo[key] = _split_projections(attention)
        params = memo[key]
        for index, part in enumerate(PROJECTIONS):
            linear = getattr(unfused, f"{part}_proj")
            linear.weight = params[index]
            if bias:
                linear.bias = params[3 + index]
        unfused.out_proj.weight = attention.out_proj.weight
        unfused.out_proj.bias = attention.out_proj.bias
        unfused.train(attention.training)
        return unfused

    def to_float(self) -> nn.MultiheadAttention:
        """Back to ``nn.MultiheadAttention`` (the projections must be plain Linears)."""
        for part in (*PROJECTIONS, "out"):
            linear = getattr(self, f"{part}_proj")
            if type(linear) is not nn.Linear:
                raise TypeError(f"{part}_proj is a {type(linear).__name__}, not nn.Linear")
        weight = self.q_proj.weight
        bias = self.q_proj.bias is not None
        attention = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout, bias=bias,
            kdim=None if self.packed else self.kdim, vdim=None if self.packed else self.vdim,
            batch_first=self.batch_first, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            if self.packed:
                attention.in_proj_weight.copy_(torch.cat(
                    [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            else:
                for part in PROJECTIONS:
                    getattr(attention, f"{part}_proj_weight").copy_(
                        getattr(self, f"{part}_proj").weight)
            if bias:
                attention.in_proj_bias.copy_(torch.cat(
                    [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
        attention.out_proj.weight = self.out_proj.weight
        attention.out_proj.bias = self.out_proj.bias
        attention.train(self.training)
        return attention

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, E) -> (N, heads, L, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _mask(self, key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
              is_causal: bool, batch: int, target: int, source: int, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor | None:
        """One additive mask broadcastable to (N, heads, L, S), as MHA merges them."""
        if is_causal and attn_mask is None:
            # nn.MultiheadAttention wants the causal mask passed as well; build it instead.
            attn_mask = torch.ones(target, source, dtype=torch.bool, device=device).triu(1)
        mask = _additive(attn_mask, dtype)
        if mask is not None and mask.dim() == 3:  # (N * heads, L, S)
            mask = mask.view(batch, self.num_heads, target, source)
        padding = _additive(key_padding_mask, dtype)
        if padding is not None:
            padding = padding.view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, target, _ = query.shape
        source = key.shape[1]
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        mask = self._mask(key_padding_mask, attn_mask, is_causal, batch, target, source, q.dtype,
                          q.device)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # the weights are returned: compute them explicitly, as MHA does
            scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = F.softmax(scores, dim=-1)
            if dropout > 0.0:
                weights = F.dropout(weights, p=dropout)
            attended = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                      dropout_p=dropout)
        output = self.out_proj(attended.transpose(1, 2).reshape(batch, target, self.embed_dim))
        if not batched:
            output = output.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            output = output.transpose(0, 1)
        return output, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")


def _split_projections(attention: nn.MultiheadAttention) -> tuple[nn.Parameter | None, ...]:
    """(q, k, v weights, q, k, v biases) as new parameters."""
    with torch.no_grad():
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.chunk(3)
            grad = attention.in_proj_weight.requires_grad
        else:
            weights = tuple(getattr(attention, f"{part}_proj_weight") for part in PROJECTIONS)
            grad = attention.q_proj_weight.requires_grad
        biases = ((None,) * 3 if attention.in_proj_bias is None
                  else attention.in_proj_bias.chunk(3))
        return (*(nn.Parameter(w.detach().clone(), requires_grad=grad) for w in weights),
                *(None if b is None else nn.Parameter(b.detach().clone(), requires_grad=grad)
                  for b in biases))


def _refusal(attention: nn.MultiheadAttention) -> str | None:
    if attention.bias_k is not None or attention.add_zero_attn:
        return ("attention with add_bias_kv or add_zero_attn is not unfused into Linears: its "
                "projections stay float")
    return None


def unfuse_attention(model: nn.Module) -> Unfused:
    """Replace every ``nn.MultiheadAttention`` of ``model`` (in place) by its
    :class:`UnfusedMultiheadAttention`; a module registered under several names is replaced
    by one new module under all of them. Says where each new weight came from."""
    if isinstance(model, nn.MultiheadAttention):
        raise NnzipError("unfuse_attention replaces the attention inside a model, not the model "
                         "itself: wrap the nn.MultiheadAttention in a module")
    origins: dict[str, tuple[str, str]] = {}
    refused: dict[str, str] = {}
    replaced: dict[int, UnfusedMultiheadAttention] = {}
    memo: dict[int, tuple[nn.Parameter, ...]] = {}
    found = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
             if type(module) is nn.MultiheadAttention]
    for name, attention in found:
        reason = _refusal(attention)
        if reason is not None:
            refused[name] = reason
            continue
        if id(attention) not in replaced:
            replaced[id(attention)] = UnfusedMultiheadAttention.from_float(attention, memo)
            prefix = f"{name}." if name else ""
            for part in PROJECTIONS:
                original = (f"{prefix}in_proj_weight" if attention._qkv_same_embed_dim
                            else f"{prefix}{part}_proj_weight")
                origins[f"{prefix}{part}_proj.weight"] = (original, part)
            origins[f"{prefix}out_proj.weight"] = (f"{prefix}out_proj.weight", "out")
        set_module(model, name, replaced[id(attention)])
    return Unfused(origins=origins, refused=refused)


def fuse_attention(model: nn.Module) -> nn.Module:
    """Swap every :class:`UnfusedMultiheadAttention` whose projections are plain Linears back
    to ``nn.MultiheadAttention``, in place; others (quantized projections) stay as they are."""
    replaced: dict[int, nn.MultiheadAttention] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not isinstance(module, UnfusedMultiheadAttention) or not name:
            continue
        if id(module) not in replaced:
            try:
                replaced[id(module)] = module.to_float()
            except TypeError:
                continue
        set_module(model, name, replaced[id(module)])
    return model
