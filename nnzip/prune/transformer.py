"""Structured pruning of transformers: attention heads and FFN neurons of BERT- and ViT-style
encoders, and whole layers of any stack of transformer blocks (BERT, ViT, GPT-2, ...).

The Linear layers really shrink, so the encoder gets smaller and faster:

- **heads**: a head's rows of the query, key and value projections and its columns of the
  attention output projection are removed, and the self-attention module's
  ``num_attention_heads`` / ``all_head_size`` follow (the head size stays). transformers 5 no
  longer has ``PreTrainedModel.prune_heads``, so the surgery is done here.
- **FFN neurons**: rows of the intermediate dense layer and the matching columns of the output
  dense layer.
- **layers** (:func:`drop_layers`): whole transformer layers, e.g. every other one, to be
  recovered by distillation (Sanh et al. 2019, DistilBERT, initialise a student from every other
  layer of the teacher). Any model whose blocks are one ``nn.ModuleList`` works: a BERT-style
  encoder, or a stack as long as its config's layer count (GPT-2's ``transformer.h``, which
  ``config.n_layer`` counts); the config is updated to the layers kept.

What to remove is scored on calibration batches, kept apart from the surgery:

- ``activation``: the mean L2 norm, over tokens, of what a head (or neuron) adds to the residual
  stream: its slice of the attention output projection applied to its context vectors (a neuron's
  activation times its output column). Needs no labels.
- ``gradient``: Michel et al. (2019, "Are Sixteen Heads Really Better than One?"): a gate ξ = 1
  multiplies every head's (neuron's) output, and the importance is E|∂L/∂ξ| for a task loss
  ``loss_fn(model, batch)`` (the first-order loss change when the unit is removed).

For heads and neurons a layer is found by its parts, in one of two layouts (:data:`LAYOUTS`):
BERT's (``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``,
``output.dense``: BERT, RoBERTa, MiniLM, ...) or ViT's in transformers 5
(``attention.{q,k,v,o}_proj``, ``mlp.fc1``, ``mlp.fc2``: the zoo's ``vit``). Any other model is
refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from nnzip.core.capture import run_batch
from nnzip.core.modes import eval_mode
from nnzip.data.splits import calibration_batches
from nnzip.errors import NnzipError
from nnzip.stage import Context, Stage

Criterion = Literal["activation", "gradient"]
CRITERIA: tuple[str, ...] = ("activation", "gradient")
#: ``loss_fn(model, batch) -> scalar``: the task loss the ``gradient`` criterion differentiates.
BatchLoss = Callable[[nn.Module, object], torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """Where one transformer layer keeps the parts structured pruning touches: paths of the
    Linear layers inside the layer, the attention module (which holds ``num_attention_heads``)
    and the name of its head-size attribute."""

    name: str
    attention: str
    query: str
    key: str
    value: str
    attention_output: str   # all heads -> hidden
    intermediate: str       # hidden -> FFN neurons
    output: str             # FFN neurons -> hidden
    head_size: str


BERT_LAYOUT = Layout("BERT", "attention.self", "attention.self.query", "attention.self.key",
                     "attention.self.value", "attention.output.dense", "intermediate.dense",
                     "output.dense", "attention_head_size")
VIT_LAYOUT = Layout("ViT", "attention", "attention.q_proj", "attention.k_proj",
                    "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2", "head_dim")
LAYOUTS: tuple[Layout, ...] = (BERT_LAYOUT, VIT_LAYOUT)


@dataclass(frozen=True)
class EncoderLayer:
    """The parts of one transformer layer that structured pruning touches."""

    module: nn.Module
    layout: Layout

    def part(self, path: str) -> nn.Module:
        return self.module.get_submodule(path)

    @property
    def attention(self) -> nn.Module:
        return self.part(self.layout.attention)

    @property
    def attention_output(self) -> nn.Linear:
        return self.part(self.layout.attention_output)

    @property
    def intermediate(self) -> nn.Linear:
        return self.part(self.layout.intermediate)

    @property
    def output(self) -> nn.Linear:
        return self.part(self.layout.output)

    @property
    def heads(self) -> int:
        return int(self.attention.num_attention_heads)

    @property
    def head_size(self) -> int:
        return int(getattr(self.attention, self.layout.head_size))

    @property
    def neurons(self) -> int:
        return self.intermediate.out_features


def _linear(module: nn.Module, path: str) -> nn.Linear | None:
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, nn.Linear) else None


def _fits(module: nn.Module, layout: Layout) -> bool:
    """Every part is there and every projection has heads × head size units (which leaves out
    grouped-query attention, whose keys and values have fewer heads)."""
    parts = [_linear(module, path) for path in (layout.query, layout.key, layout.value,
                                                layout.attention_output, layout.intermediate,
                                                layout.output)]
    if any(part is None for part in parts):
        return False
    attention = module.get_submodule(layout.attention)
    heads = getattr(attention, "num_attention_heads", None)
    head_size = getattr(attention, layout.head_size, None)
    if not isinstance(heads, int) or not isinstance(head_size, int):
        return False
    width = heads * head_size
    query, key, value, attention_output = parts[:4]
    return (query.out_features == key.out_features == value.out_features == width
            and attention_output.in_features == width)


def _as_layer(module: nn.Module) -> EncoderLayer | None:
    for layout in LAYOUTS:
        if _fits(module, layout):
            return EncoderLayer(module, layout)
    return None


def _layer_list(model: nn.Module) -> nn.ModuleList:
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and \
                all(_as_layer(child) is not None for child in module):
            return module
    raise NnzipError(f"{type(model).__name__} is not a BERT- or ViT-style encoder (no list of "
                     "layers with attention.self.query/key/value, attention.output.dense, "
                     "intermediate.dense and output.dense, nor with attention.q/k/v/o_proj, "
                     "mlp.fc1 and mlp.fc2): head, neuron and layer pruning need one; use "
                     "prune_channels for other models")


def _layer_count(module: nn.Module) -> int | None:
    config = getattr(module, "config", None)
    count = getattr(config, "num_hidden_layers", None)  # GPT-2's config maps it to n_layer
    return count if isinstance(count, int) else None


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer layers of ``model``: a BERT-style encoder's, or else the
    ``nn.ModuleList`` of same-type blocks holding Linear layers whose length is the layer count
    of a config in the model (GPT-2's ``transformer.h``)."""
    try:
        return _layer_list(model)
    except NnzipError:
        pass
    counts = {count for module in model.modules() if (count := _layer_count(module))}
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) in counts \
                and len({type(child) for child in module}) == 1 \
                and any(isinstance(m, nn.Linear) for m in module[0].modules()):
            return module
    raise NnzipError(f"{type(model).__name__} is not a BERT- or ViT-style encoder nor a stack of "
                     "transformer blocks nnzip can find (an nn.ModuleList of blocks as long as "
                     "its config's num_hidden_layers / n_layer): layer dropping needs one")


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    """The encoder's layers in order; a model that is not a BERT- or ViT-style encoder is an
    error."""
    return [_as_layer(module) for module in _layer_list(model)]


def encoder_linear_weights(model: nn.Module) -> list[str]:
    """Names of every Linear weight inside the transformer layers (not the embeddings, a
    pooler the sentence embedding does not use, nor a language model's head): what Wanda /
    SparseGPT prune in a transformer (encoder or decoder, :func:`transformer_blocks`)."""
    layers = {id(module) for module in transformer_blocks(model)}
    return [f"{name}.{sub}.weight" for name, module in model.named_modules()
            if id(module) in layers
            for sub, child in module.named_modules() if isinstance(child, nn.Linear)]


def _check_ratio(ratio: float, what: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
        raise NnzipError(f"{what} must be a fraction to remove in [0, 1), e.g. 0.3, got "
                         f"{ratio!r}")
    return float(ratio)


def _kept(layer_index: int, total: int, removed: Sequence[int], unit: str) -> list[int]:
    removed = [int(i) for i in removed]
    bad = [i for i in removed if not 0 <= i < total]
    if bad:
        raise NnzipError(f"layer {layer_index} has {unit}s 0..{total - 1}, cannot remove {bad}")
    if len(set(removed)) != len(removed):
        raise NnzipError(f"layer {layer_index}: {unit}s to remove are listed twice: {removed}")
    if len(removed) >= total:
        raise NnzipError(f"removing all {total} {unit}s of layer {layer_index} would disconnect "
                         f"it: keep at least one (or drop the whole layer with drop_layers)")
    return [i for i in range(total) if i not in set(removed)]


@torch.no_grad()
def _shrunk(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping entries ``index`` of ``layer`` along dim 0 (outputs) or 1 (inputs)."""
    weight = layer.weight.index_select(dim, index.to(layer.weight.device))
    bias = layer.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index.to(bias.device))
    shrunk = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    shrunk.weight.copy_(weight)
    if bias is not None:
        shrunk.bias.copy_(bias)
    shrunk.train(layer.training)
    return shrunk


def _plan(model: nn.Module, removals: Mapping[int, Sequence[int]],
          unit: str) -> list[tuple[EncoderLayer, list[int]]]:
    """(layer, units it keeps) for every layer that loses a unit; checked before any change."""
    layers = encoder_layers(model)
    bad = [index for index in removals if not 0 <= int(index) < len(layers)]
    if bad:
        raise NnzipError(f"the encoder has layers 0..{len(layers) - 1}, got layer {bad[0]}")
    plan = []
    for index, removed in removals.items():
        layer = layers[int(index)]
        total = layer.heads if unit == "head" else layer.neurons
        keep = _kept(int(index), total, removed, unit)
        if len(keep) < total:
            plan.append((layer, keep))
    return plan


def prune_heads(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> None:
    """Remove attention heads in place: ``heads`` maps a layer index to the heads to remove.

    Every check runs before any layer changes; removing every head of a layer is an error.
    """
    for layer, keep in _plan(model, heads, "head"):
        size, layout = layer.head_size, layer.layout
        columns = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
        for path in (layout.query, layout.key, layout.value):
            layer.module.set_submodule(path, _shrunk(layer.part(path), columns, 0))
        layer.module.set_submodule(layout.attention_output,
                                   _shrunk(layer.attention_output, columns, 1))
        layer.attention.num_attention_heads = len(keep)
        if hasattr(layer.attention, "all_head_size"):  # BERT's; ViT's width follows the Linears
            layer.attention.all_head_size = len(keep) * size


def prune_neurons(model: nn.Module, neurons: Mapping[int, Sequence[int]]) -> None:
    """Remove FFN neurons in place: ``neurons`` maps a layer index to the neurons to remove."""
    for layer, keep in _plan(model, neurons, "FFN neuron"):
        index = torch.tensor(keep)
        layer.module.set_submodule(layer.layout.intermediate, _shrunk(layer.intermediate, index, 0))
        layer.module.set_submodule(layer.layout.output, _shrunk(layer.output, index, 1))


def drop_layers(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the transformer layers ``keep`` (in that order), in place; the config's layer
    count follows (``num_hidden_layers``, which is GPT-2's ``n_layer``)."""
    container = transformer_blocks(model)
    keep = [int(i) for i in keep]
    if not keep:
        raise NnzipError("keep at least one encoder layer")
    bad = [i for i in keep if not 0 <= i < len(container)]
    if bad or len(set(keep)) != len(keep):
        raise NnzipError(f"layers to keep must be distinct indices in 0..{len(container) - 1}, "
                         f"got {keep}")
    kept = [container[i] for i in keep]
    if any(getattr(getattr(m, "config", None), "scale_attn_by_inverse_layer_idx", False)
           for m in model.modules()):
        raise NnzipError("this model scales attention by 1 / (layer index + 1) "
                         "(scale_attn_by_inverse_layer_idx), so renumbering the layers kept "
                         "would change what they compute: layer dropping is not supported here")
    for position, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position  # the index a key/value cache would use
    for index in range(len(container) - 1, -1, -1):  # the container object stays the same
        del container[index]
    container.extend(kept)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(kept)


def every_other_layer(count: int) -> list[int]:
    """Indices 1, 3, 5, ... of ``count`` layers: half the depth, the top layer kept."""
    return list(range(1, count, 2)) if count > 1 else [0]


class _Gates:
    """Forward pre-hooks on every attention output projection and FFN output layer that see
    (and, with ``gates``, scale) each head's / neuron's output."""

    def __init__(self, layers: list[EncoderLayer], with_gates: bool) -> None:
        self.layers = layers
        self.head_gates = [torch.ones(layer.heads, requires_grad=with_gates) for layer in layers]
        self.neuron_gates = [torch.ones(layer.neurons, requires_grad=with_gates)
                             for layer in layers]
        self.head_norms = [torch.zeros(layer.heads) for layer in layers]
        self.neuron_norms = [torch.zeros(layer.neurons) for layer in layers]
        self.tokens = 0
        self.handles = []

    def __enter__(self) -> _Gates:
        for index, layer in enumerate(self.layers):
            self.handles.append(layer.attention_output.register_forward_pre_hook(
                self._head_hook(index)))
            self.handles.append(layer.output.register_forward_pre_hook(
                self._neuron_hook(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _head_hook(self, index: int):
        layer, gate = self.layers[index], self.head_gates[index]

        def hook(module: nn.Module, args: tuple) -> tuple:
            context = args[0]
            per_head = context.reshape(*context.shape[:-1], layer.heads, layer.head_size)
            if not gate.requires_grad:
                with torch.no_grad():
                    # What each head adds: its context (…, d) through its (hidden, d) block of W_O.
                    blocks = module.weight.reshape(module.out_features, layer.heads,
                                                   layer.head_size)
                    added = torch.einsum("...hd,ohd->...ho", per_head, blocks)
                    flat = added.norm(dim=-1).reshape(-1, layer.heads)
                    self.head_norms[index] += flat.sum(dim=0)
                    if index == 0:
                        self.tokens += flat.shape[0]
                return args
            gated = per_head * gate.reshape(layer.heads, 1)
            return (gated.reshape(context.shape), *args[1:])

        return hook

    def _neuron_hook(self, index: int):
        gate = self.neuron_gates[index]

        def hook(module: nn.Module, args: tuple) -> tuple:
            activation = args[0]
            if not gate.requires_grad:
                with torch.no_grad():
                    flat = activation.reshape(-1, activation.shape[-1]).abs()
                    self.neuron_norms[index] += flat.sum(dim=0) * module.weight.norm(dim=0)
                return args
            return (activation * gate, *args[1:])

        return hook


@dataclass
class UnitScores:
    """One importance per head and per FFN neuron of every layer (higher: more important)."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]


def unit_importance(model: nn.Module, batches: Iterable, criterion: Criterion = "activation",
                    loss_fn: BatchLoss | None = None) -> UnitScores:
    """Importance of every attention head and FFN neuron on calibration ``batches``.

    ``activation``: mean L2 norm of each unit's contribution to the residual stream (batches are
    the model's inputs: token-id tensors or keyword mappings). ``gradient`` (Michel et al. 2019):
    mean |∂L/∂ξ| of a gate on each unit, with L = ``loss_fn(model, batch)``.
    """
    if criterion not in CRITERIA:
        raise NnzipError(f"unknown head/neuron criterion {criterion!r}: use 'activation' or "
                         "'gradient'")
    if criterion == "gradient" and loss_fn is None:
        raise NnzipError("the gradient criterion needs loss_fn(model, batch) -> scalar (a task "
                         "loss); or use criterion 'activation', which needs no labels")
    layers = encoder_layers(model)
    batches = list(batches)
    if not batches:
        raise NnzipError("scoring heads and neurons needs calibration data: pass at least one "
                         "batch of training inputs")
    with _Gates(layers, with_gates=criterion == "gradient") as gates, eval_mode(model):
        if criterion == "activation":
            with torch.no_grad():
                for batch in batches:
                    run_batch(model, batch)
            return UnitScores([norm / gates.tokens for norm in gates.head_norms],
                              [norm / gates.tokens for norm in gates.neuron_norms])
        head_totals = [torch.zeros(layer.heads) for layer in layers]
        neuron_totals = [torch.zeros(layer.neurons) for layer in layers]
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, gates.head_gates + gates.neuron_gates)
            for total, grad in zip(head_totals + neuron_totals, grads, strict=True):
                total += grad.abs()
        return UnitScores([t / len(batches) for t in head_totals],
                          [t / len(batches) for t in neuron_totals])


def _lowest(scores: torch.Tensor, ratio: float) -> list[int]:
    count = round(ratio * len(scores))
    return sorted(scores.topk(count, largest=False).indices.tolist()) if count else []


def prune_heads_and_neurons(model: nn.Module, batches: Iterable, head_ratio: float = 0.3,
                            neuron_ratio: float = 0.3, *, criterion: Criterion = "activation",
                            loss_fn: BatchLoss | None = None) -> dict[str, dict[int, list[int]]]:
    """Remove ``round(head_ratio · heads)`` heads and ``round(neuron_ratio · neurons)`` FFN
    neurons of every layer, the least important on ``batches``, in place.

    Every layer loses the same share, so the encoder stays uniform (and its latency
    predictable). Returns the removed heads and neurons by layer index.
    """
    head_ratio = _check_ratio(head_ratio, "head_ratio")
    neuron_ratio = _check_ratio(neuron_ratio, "neuron_ratio")
    scores = unit_importance(model, batches, criterion, loss_fn)
    heads = {i: _lowest(s, head_ratio) for i, s in enumerate(scores.heads)}
    neurons = {i: _lowest(s, neuron_ratio) for i, s in enumerate(scores.neurons)}
    _plan(model, heads, "head")  # every check before any surgery
    prune_heads(model, heads)
    prune_neurons(model, neurons)
    return {"heads": heads, "neurons": neurons}


def encoder_shape(model: nn.Module) -> list[dict[str, int]]:
    """Heads, head size and FFN neurons of every layer (what the surgery changed)."""
    return [{"heads": layer.heads, "head_size": layer.head_size, "neurons": layer.neurons}
            for layer in encoder_layers(model)]


def _calibration_batches(model: nn.Module, context: Context, source: str, count: int,
                         sentences: int) -> list:
    if source == "data":
        return calibration_batches(context.data, count, seed=context.seed)
    if not hasattr(model, "tokenize"):
        raise NnzipError(f"calibration 'sts' needs a sentence encoder that can tokenize "
                         f"(nnzip.models.hf.load_hf), not a {type(model).__name__}: use "
                         "calibration 'data'")
    from nnzip.data.sts import calibration_sentences
    from nnzip.evaluate.embedding import token_batches

    batches, _ = token_batches(model, calibration_sentences(sentences, seed=context.seed),
                               batch_size=max(1, -(-sentences // count)))
    return batches


class PruneHeads(Stage):
    """Recipe stage ``prune_heads``: remove a share of every layer's attention heads and FFN
    neurons of a BERT- or ViT-style encoder, scored by their activation on calibration inputs.

    ``calibration: sts`` draws ``calibration_sentences`` STS-B training sentences and tokenizes
    them with the model's tokenizer (a :class:`~nnzip.models.hf.SentenceEncoder`); ``data`` takes
    ``calibration_batches`` batches of the pipeline's training split.

    ```yaml
    stages:
      - prune_heads: {head_ratio: 0.3, neuron_ratio: 0.3}
      - drop_layers: {keep: [1, 3, 5]}
    ```
    """

    kind = "prune_heads"

    head_ratio: float = Field(0.3, ge=0, lt=1)
    neuron_ratio: float = Field(0.3, ge=0, lt=1)
    criterion: Literal["activation"] = "activation"
    calibration: Literal["sts", "data"] = "sts"
    calibration_batches: int = Field(8, ge=1)
    calibration_sentences: int = Field(256, ge=1)

    def check(self, model: nn.Module) -> None:
        """An encoder (its layer layout found), and a tokenizer for ``calibration: sts``."""
        super().check(model)
        encoder_layers(model)
        if self.calibration == "sts" and not hasattr(model, "tokenize"):
            raise NnzipError(f"calibration 'sts' needs a sentence encoder that can tokenize "
                             f"(nnzip.models.hf.load_hf), not a {type(model).__name__}: use "
                             "calibration 'data'")

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        before = encoder_shape(model)  # fails early on a model that is not an encoder
        params_before = sum(p.numel() for p in model.parameters())
        batches = _calibration_batches(model, context, self.calibration,
                                       self.calibration_batches, self.calibration_sentences)
        removed = prune_heads_and_neurons(model, batches, self.head_ratio, self.neuron_ratio,
                                          criterion=self.criterion)
        context.record("removed_heads", {str(k): v for k, v in removed["heads"].items()})
        context.record("removed_neurons", {str(k): len(v) for k, v in removed["neurons"].items()})
        context.record("shape_before", before)
        context.record("shape_after", encoder_shape(model))
        context.record("params_before", params_before)
        context.record("params_after", sum(p.numel() for p in model.parameters()))
        return model


class DropLayers(Stage):
    """Recipe stage ``drop_layers``: keep only the transformer layers ``keep`` (default: every
    other one, 1, 3, 5, ...) of a BERT-style encoder or a GPT-2-style decoder; follow it with
    distillation to recover."""

    kind = "drop_layers"

    keep: list[int] | None = None

    def check(self, model: nn.Module) -> None:
        """A stack of transformer blocks, and ``keep`` distinct indices into it."""
        super().check(model)
        count = len(transformer_blocks(model))
        keep = self.keep if self.keep is not None else every_other_layer(count)
        if not keep or len(set(keep)) != len(keep) or not all(0 <= i < count for i in keep):
            raise NnzipError(f"keep must list distinct layer indices in 0..{count - 1} (the "
                             f"{type(model).__name__} has {count} layers), got {keep}")

    def keeps_layer_names(self) -> bool:
        return False  # the kept layers are renumbered

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        count = len(transformer_blocks(model))
        keep = self.keep if self.keep is not None else every_other_layer(count)
        params_before = sum(p.numel() for p in model.parameters())
        drop_layers(model, keep)
        context.record("kept_layers", list(keep))
        context.record("layers_before", count)
        context.record("params_before", params_before)
        context.record("params_after", sum(p.numel() for p in model.parameters()))
        return model
