"""A small GPT-2-style causal language model built from a ``transformers`` config (no hub).

:class:`CausalLM` wraps a ``transformers.GPT2LMHeadModel`` (``.transformer``) made from a
``GPT2Config``: learned positions, pre-LayerNorm blocks, eager attention (the same arithmetic
everywhere, traceable by torch.export) and the LM head *tied* to the token embedding (one tensor,
as in GPT-2). ``forward(input_ids)`` returns the logits ``(batch, positions, vocabulary)``, the
layout every nnzip loss and metric reads (:mod:`nnzip.core.outputs`).

GPT-2 keeps its projections in ``transformers``' ``Conv1D``: a Linear whose weight is stored
transposed, ``(in, out)``. nnzip's methods find weights by the module that owns them
(:mod:`nnzip.core.weights`) and would see a ``Conv1D`` weight as an opaque functional parameter,
with its rows being *inputs*: per-channel scales, group-wise scales, N:M groups, GPTQ, Wanda and
SparseGPT would all run along the wrong axis or not at all. :func:`conv1d_to_linear` therefore
turns every ``Conv1D`` into the ``nn.Linear`` that computes the same function (weight
transposed once, bias kept), which every method handles; the zoo model is built that way, and
any GPT-2-family model from ``transformers`` can be converted the same way before compressing it.

In the zoo as ``gpt``: ``create_model("gpt", input_shape=(L,), num_classes=V)`` takes the block
length L as ``n_positions`` and the vocabulary V from the data (``stsb-lm``: MiniLM's 30 522
WordPiece ids).
"""

from __future__ import annotations

import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models.surgery import set_module

DEFAULT_LAYERS = 4


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is an optional extra; without it there is no Conv1D
        return None
    return Conv1D


@torch.no_grad()
def linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what a ``transformers`` ``Conv1D`` computes (x @ W + b with W
    stored (in, out)): weight transposed, bias kept, same device and dtype."""
    inputs, outputs = conv.weight.shape
    linear = nn.Linear(inputs, outputs, bias=conv.bias is not None, device=conv.weight.device,
                       dtype=conv.weight.dtype)
    linear.weight.copy_(conv.weight.T)
    if conv.bias is not None:
        linear.bias.copy_(conv.bias)
    return linear


def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every ``transformers`` ``Conv1D`` of ``model`` by the equal ``nn.Linear``, in
    place; returns the names replaced. A Conv1D whose weight is shared with another module
    would be untied by the transpose: that is refused."""
    conv1d = _conv1d_type()
    if conv1d is None:
        return []
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, conv1d)]
    shared = {id(p) for name, module in model.named_modules()
              if not isinstance(module, conv1d) for p in module.parameters(recurse=False)}
    for name, module in found:
        if id(module.weight) in shared:
            raise NnzipError(f"{name}'s weight is shared with another layer, and turning its "
                             "Conv1D into a Linear would untie it: convert the model by hand")
        set_module(model, name, linear_from_conv1d(module))
    return [name for name, _ in found]


class CausalLM(nn.Module):
    """GPT-2-style decoder: token ids ``(batch, positions)`` → logits ``(batch, positions, V)``.

    ``num_classes`` is the vocabulary size V and ``n_positions`` the longest input. The
    defaults (128 wide, 4 layers of 4 heads, FFN 512) train on the STS-B sentences in about
    10–15 minutes on two CPU cores; every Linear has 128 or 512 inputs, so int4 with groups
    of 128 fits all of them. ``dropout`` is GPT-2's residual, embedding and attention dropout.
    """

    def __init__(self, n_positions: int, num_classes: int, n_embd: int = 128,
                 n_layer: int = DEFAULT_LAYERS, n_head: int = 4, n_inner: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        try:
            from transformers import GPT2Config, GPT2LMHeadModel
        except ImportError as exc:
            from nnzip.models.hf import INSTALL_HINT

            raise NnzipError(f"the gpt zoo model is built with transformers: {INSTALL_HINT}") \
                from exc
        if n_embd % n_head:
            raise NnzipError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head}): every "
                             "head gets n_embd / n_head channels")
        if not 0.0 <= dropout < 1.0:
            raise NnzipError(f"dropout must be in [0, 1), got {dropout}")
        config = GPT2Config(vocab_size=num_classes, n_positions=n_positions, n_embd=n_embd,
                            n_layer=n_layer, n_head=n_head, n_inner=n_inner,
                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                            bos_token_id=None, eos_token_id=None, pad_token_id=None,
                            tie_word_embeddings=True, use_cache=False)
        config._attn_implementation = "eager"
        self.transformer = GPT2LMHeadModel(config)
        conv1d_to_linear(self.transformer)
        self.n_positions = n_positions

    @property
    def config(self):
        return self.transformer.config

    @property
    def nnzip_spec(self) -> dict | None:
        """How the zoo made the model, with ``n_layer`` as it is now: a model whose layers were
        dropped (:func:`nnzip.prune.drop_layers`) saves and loads as what it has become."""
        spec = self.__dict__.get("_nnzip_spec")
        if spec is None or self.config.n_layer == spec["kwargs"].get("n_layer", DEFAULT_LAYERS):
            return spec
        return {**spec, "kwargs": {**spec["kwargs"], "n_layer": int(self.config.n_layer)}}

    @nnzip_spec.setter
    def nnzip_spec(self, spec: dict) -> None:
        self.__dict__["_nnzip_spec"] = spec

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.is_floating_point():
            raise NnzipError(f"a causal LM takes token ids shaped (batch, positions) as integers, "
                             f"got shape {tuple(input_ids.shape)}, dtype "
                             f"{str(input_ids.dtype).removeprefix('torch.')}")
        if input_ids.shape[1] > self.n_positions:
            raise NnzipError(f"{input_ids.shape[1]} tokens exceed the model's {self.n_positions} "
                             "positions: pass shorter blocks")
        return self.transformer(input_ids=input_ids, use_cache=False).logits


def tied_head(model: nn.Module) -> bool:
    """Whether the LM head and the token embedding of a :class:`CausalLM` are one tensor (read
    through a quantizer's parametrization too: its float original is what is shared)."""
    lm = model.transformer if isinstance(model, CausalLM) else model
    head, embedding = lm.lm_head, lm.get_input_embeddings()

    def stored(module: nn.Module) -> torch.Tensor:
        plists = getattr(module, "parametrizations", None)
        if plists is not None and "weight" in plists:
            return plists["weight"].original
        return module.weight

    return stored(head) is stored(embedding)
