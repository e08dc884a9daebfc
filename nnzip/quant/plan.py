"""What a quantization method can change in a model, and how: one plan, from the model's weights.

Every weight :func:`nnzip.core.find_weights` lists becomes a :class:`Target` or a skip reason:

- a Linear or Conv1d/2d/3d weight (attention projections included, once
  :func:`nnzip.quant.attention.unfuse_attention` made them Linears): the layer is wrapped in a
  :class:`~nnzip.quant.modules.QuantizedLayer`, weights *and* input activations quantized;
- an embedding table, when ``embedding_bits`` is set: wrapped, weight-only (its input is ids);
- a weight nothing can wrap: LSTM/GRU gate matrices (one fused kernel), parameters a module
  passes to ``F.linear``/``F.conv2d``, a tensor tied between several layers (an output layer
  sharing the embedding), the projections of an attention left fused: quantized weight-only by a
  :class:`~nnzip.quant.parametrized.WeightQuantizer`, once, read by every user;
- anything else (transposed convolutions, float embeddings) is skipped with the reason.

Targets are named by module (``fc1``) for wrapped layers and by parameter (``rnn.weight_ih_l0``,
or a tied tensor's first name) for weight-only ones; ``layers`` / ``exclude`` / ``layer_bits`` take
those names, module prefixes or glob patterns (:func:`nnzip.core.select_names`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from nnzip.core.select import matches, select_names
from nnzip.core.weights import Kind, Weight, find_weights
from nnzip.errors import NnzipError

#: How a target is quantized.
LAYER, EMBEDDING_LAYER, TENSOR = "layer", "embedding", "tensor"


@dataclass(frozen=True)
class Target:
    """One thing to quantize: a module to wrap, or one tensor to quantize weight-only."""

    name: str
    how: str
    weight: Weight
    #: Why a TENSOR target's activations stay float.
    reason: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the selection patterns may use for it."""
        if self.how == TENSOR:
            return (self.name, *self.weight.aliases)
        return (self.name, f"{self.name}.weight")


@dataclass
class Plan:
    """The targets of one model, the selected ones, and why every other weight is left."""

    targets: list[Target]
    selected: list[Target] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [target.name for target in self.selected]


def _owner_modules(model: nn.Module, weight: Weight) -> list[nn.Module]:
    return [model.get_submodule(name) for name, _ in weight.owners]


def _tied_target(model: nn.Module, weight: Weight, layer_types: tuple[type[nn.Module], ...],
                 embedding_bits: int | None) -> Target | None:
    """A tensor held by several layers: quantized once, weight-only, if any holder asks for it
    (a Linear/Conv of ``layer_types``, a functional use, or an embedding with embedding_bits)."""
    modules = _owner_modules(model, weight)
    wanted = any(isinstance(module, layer_types) for module in modules) or (
        embedding_bits is not None and any(isinstance(m, nn.Embedding) for m in modules)) \
        or weight.kind == Kind.FUNCTIONAL
    if not wanted:
        return None
    users = ", ".join(weight.aliases)
    return Target(weight.name, TENSOR, weight,
                  f"activations float: the tensor is tied to {users}, so it is quantized once "
                  "and every user reads the same integers")


def _single_target(weight: Weight, layer_types: tuple[type[nn.Module], ...],
                   embedding_bits: int | None, refused: Mapping[str, str]
                   ) -> Target | str:
    """The target of an untied weight, or why it is not quantized."""
    module, kind = weight.module, weight.kind
    if kind in (Kind.LINEAR, Kind.CONV):
        if isinstance(module, layer_types):
            return Target(weight.module_name, LAYER, weight)
        kinds = ", ".join(t.__name__ for t in layer_types)
        return (f"{type(module).__name__} is not among the layer types quantized here "
                f"({kinds})")
    if kind == Kind.EMBEDDING:
        if embedding_bits is None or not isinstance(module, nn.Embedding):
            return ("embedding table left float (set embedding_bits to quantize it "
                    "weight-only, one scale per row)")
        return Target(weight.module_name, EMBEDDING_LAYER, weight)
    if kind == Kind.RNN:
        return Target(weight.name, TENSOR, weight,
                      f"activations float: the {type(module).__name__} kernel is fused")
    if kind == Kind.FUNCTIONAL:
        return Target(weight.name, TENSOR, weight,
                      f"activations float: {type(module).__name__} uses the parameter through "
                      "a functional call (F.linear/F.conv2d) nnzip cannot wrap")
    if kind in (Kind.ATTENTION_IN, Kind.ATTENTION_OUT):
        attention = weight.reader or weight.module_name
        why = refused.get(attention, "the attention module is fused")
        return Target(weight.name, TENSOR, weight, f"activations float: {why}")
    if kind == Kind.CONV_TRANSPOSE:
        return ("transposed convolutions have no quantized layer in nnzip: left float (exclude "
                "it to silence this)")
    return f"{kind} weights are not quantized"


def plan_targets(model: nn.Module, layer_types: tuple[type[nn.Module], ...],
                 embedding_bits: int | None = None, refused: Mapping[str, str] | None = None
                 ) -> Plan:
    """Every quantizable target of ``model`` (see the module docstring), none selected yet."""
    targets, skipped = [], {}
    for weight in find_weights(model):
        if weight.tied:
            target = _tied_target(model, weight, layer_types, embedding_bits)
            if target is None:
                skipped[weight.name] = ("tied weight whose users are not quantized here: "
                                        "left float")
                continue
        else:
            target = _single_target(weight, layer_types, embedding_bits, refused or {})
        if isinstance(target, str):
            skipped[weight.name] = target
        else:
            targets.append(target)
    return Plan(targets=targets, skipped=skipped)


def select(plan: Plan, layers: Sequence[str] | None, exclude: Sequence[str],
           layer_bits: Mapping[str, int], model_name: str = "the model") -> Plan:
    """Keep the targets ``layers`` names (all by default) and ``exclude`` does not; embeddings
    follow ``embedding_bits`` and ``exclude`` only. Unknown names are errors that list the names."""
    selectable = [t for t in plan.targets if t.how != EMBEDDING_LAYER]
    if not plan.targets:
        raise NnzipError(f"{model_name} has no quantizable layer or weight (Linear, "
                         "Conv1d/2d/3d, attention, LSTM/GRU or functional weights): nothing to "
                         "quantize")
    candidates = [name for target in plan.targets for name in target.names]
    for option, patterns in (("layers", layers or ()), ("exclude", exclude),
                             ("layer_bits", list(layer_bits))):
        if isinstance(patterns, str):
            raise NnzipError(f"{option} must be a list of names, got the string {patterns!r}")
        for pattern in patterns:
            try:
                select_names(candidates, [pattern], what="quantizable layers")
            except NnzipError as error:  # say which option named it
                raise NnzipError(option + str(error).removeprefix("layers")) from None
    chosen = [t for t in selectable if layers is None
              or any(matches(n, p) for n in t.names for p in layers)]
    chosen += [t for t in plan.targets if t.how == EMBEDDING_LAYER]
    plan.selected = [t for t in chosen
                     if not any(matches(n, p) for n in t.names for p in exclude)]
    if not plan.selected:
        raise NnzipError("no layer left to quantize: 'layers' and 'exclude' remove every one; keep "
                         "at least one")
    return plan


def bits_for(target: Target, layer_bits: Mapping[str, int]) -> int | None:
    """The ``layer_bits`` entry naming ``target`` (exact name first, then patterns), or None."""
    for name in target.names:
        if name in layer_bits:
            return layer_bits[name]
    for pattern, bits in layer_bits.items():
        if any(matches(name, pattern) for name in target.names):
            return bits
    return None
