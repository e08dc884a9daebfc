"""Every weight of a model, wherever it lives, with tied weights as one.

Methods work on *weights*, not on module types (STYLE.md): a Linear's or a convolution's
``weight``, attention's ``in_proj_weight`` (and ``out_proj``), an LSTM/GRU's gate matrices, an
embedding table, and bare parameters a user's module passes to ``F.linear``/``F.conv2d`` (or
that the graph of a ``torch.export`` program uses). A tensor
reachable under several names (an output layer tied to its embedding, a module registered twice)
is one :class:`Weight` with its other names in ``aliases``: it is compressed once, stays tied, and
is counted once.

Not weights: 1-D parameters (biases, normalization scales) and parameters whose first dimension
is 1 (class tokens, position embeddings: they are added to activations, not multiplied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from torch import fx, nn
from torch.nn.utils import parametrize


class Kind(StrEnum):
    """What kind of weight a tensor is, by the module that owns it (or how it is used). Methods
    dispatch on it: each says what it does with every kind, or why it skips one."""

    LINEAR = "linear"
    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    EMBEDDING = "embedding"
    ATTENTION_IN = "attention_in_proj"
    ATTENTION_OUT = "attention_out_proj"
    RNN = "rnn"
    FUNCTIONAL = "functional"


@dataclass(frozen=True)
class Weight:
    """One weight tensor: its canonical name, where it lives and what kind of weight it is.

    ``name`` is the name ``model.named_parameters()`` gives it (the first of its names);
    ``owners`` are the ``(module name, attribute)`` pairs holding it (several when tied).
    ``groups`` is a convolution's group count (1 otherwise); ``reader`` names a parent module
    that reads the tensor directly instead of calling its owner (attention's ``out_proj``).
    """

    name: str
    kind: Kind
    shape: tuple[int, ...]
    owners: tuple[tuple[str, str], ...]
    param: nn.Parameter = field(compare=False, repr=False)
    module: nn.Module = field(compare=False, repr=False)
    groups: int = 1
    reader: str | None = None

    @property
    def aliases(self) -> tuple[str, ...]:
        """The tensor's other names (tied weights)."""
        return tuple(_join(owner, attr) for owner, attr in self.owners[1:])

    @property
    def tied(self) -> bool:
        return len(self.owners) > 1

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def module_name(self) -> str:
        return self.owners[0][0]

    @property
    def attr(self) -> str:
        return self.owners[0][1]

    @property
    def input_length(self) -> int:
        """Inputs per output row (in_features, in_channels/groups · kernel, embedding width)."""
        return self.numel // self.shape[0]


def _join(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _owners(model: nn.Module) -> dict[int, list[tuple[str, str, nn.Module]]]:
    """Every (module name, attribute, module) holding each parameter, in model order.

    A parametrized tensor (``torch.nn.utils.parametrize``) is reported under the module and
    attribute it is read as (``fc.weight``), not as ``fc.parametrizations.weight.original``.
    """
    owners: dict[int, list[tuple[str, str, nn.Module]]] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is None:
                continue
            owner_name, owner, owner_attr = module_name, module, attr
            if isinstance(module, parametrize.ParametrizationList) and attr == "original":
                owner_name, _, owner_attr = module_name.rpartition(".parametrizations.")
                owner = modules[owner_name]
            owners.setdefault(id(param), []).append((owner_name, owner_attr, owner))
    return owners


def _parents(model: nn.Module) -> dict[str, nn.Module]:
    return {f"{name}.{child_name}" if name else child_name: module
            for name, module in model.named_modules()
            for child_name, _ in module.named_children()}


def _kind(module: nn.Module, attr: str, parent: nn.Module | None) -> Kind | None:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return Kind.CONV_TRANSPOSE if attr == "weight" else None
    if isinstance(module, nn.modules.conv._ConvNd):
        return Kind.CONV if attr == "weight" else None
    if isinstance(module, nn.Linear):
        if attr != "weight":
            return None
        return Kind.ATTENTION_OUT if isinstance(parent, nn.MultiheadAttention) else Kind.LINEAR
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return Kind.EMBEDDING if attr == "weight" else None
    if isinstance(module, nn.MultiheadAttention):
        return Kind.ATTENTION_IN if attr.endswith("proj_weight") else None
    if isinstance(module, nn.RNNBase):
        return Kind.RNN if attr.startswith("weight_") else None
    if type(module) is nn.Module or isinstance(module, fx.GraphModule):
        # A program from torch.export (a .pt2): plain holders of the original hierarchy, whose
        # tensors the graph uses through aten operators.
        return Kind.FUNCTIONAL
    if type(module).__module__.startswith("torch."):
        return None  # a torch layer whose tensor is not a weight matrix (e.g. PReLU, Bilinear)
    return Kind.FUNCTIONAL


def find_weights(model: nn.Module) -> list[Weight]:
    """Every weight of ``model`` in model order, each tensor once (see the module docstring)."""
    parents = _parents(model)
    weights = []
    for holders in _owners(model).values():
        module_name, attr, module = holders[0]
        param = getattr(module, attr)
        if param.dim() < 2 or param.shape[0] == 1:
            continue
        kind = _kind(module, attr, parents.get(module_name))
        if kind is None:
            continue
        reader = None
        if kind == Kind.ATTENTION_OUT:
            reader = module_name.rpartition(".")[0]
        weights.append(Weight(
            name=_join(module_name, attr), kind=kind, shape=tuple(param.shape),
            owners=tuple((name, owner_attr) for name, owner_attr, _ in holders),
            param=param, module=module, groups=int(getattr(module, "groups", 1)),
            reader=reader))
    return weights


def unique_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Each parameter once, under its first name (tied tensors are not counted twice)."""
    return dict(model.named_parameters())


def not_a_weight_reason(param: nn.Parameter) -> str:
    """Why :func:`find_weights` does not list ``param``."""
    if param.dim() < 2:
        return "1-D parameter (bias or normalization scale)"
    if param.shape[0] == 1:
        return "leading dimension 1 (a token or position parameter added to activations)"
    return "not a weight matrix of a layer nnzip knows"
