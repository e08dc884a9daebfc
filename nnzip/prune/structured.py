"""Structured pruning: physically remove channels, so the model really gets smaller and faster.

Unstructured pruning zeroes weights inside tensors that keep their shape; here whole output
channels of convolutions and neurons of linear layers are *removed*, together with everything that
depends on them: the BatchNorm after a conv, the next layer's input channels, the other convs that
add into the same residual sum (which must keep equal widths), depthwise convs (whose groups follow
their channels) and the columns a ``flatten`` feeds into a linear layer. The result is a plain
``nn.Module`` with smaller tensors: fewer parameters, FLOPs and bytes, and lower latency.

What to remove (importance) is kept apart from how to remove it (the surgery), as in
Torch-Pruning (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning"), whose dependency
graph does the surgery here. Channels that must be removed together form a *group*; a group's
channel scores are summed over the layers that produce those channels:

- ``l1`` / ``l2``: the norm of each filter (Li et al. 2017, "Pruning Filters for Efficient
  ConvNets"). An all-zero filter scores exactly 0, so dead channels always go first.
- ``taylor``: ``|w · ∂L/∂w|`` summed over each filter, from a few calibration batches of the
  training split (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning").
- ``random``: a seeded draw, the baseline a criterion must beat.

Layers whose outputs are the model's outputs (the classifier) never lose channels. A layer type
the graph cannot shrink (a module with its own parameters that is not a conv, linear or norm
layer) is skipped with a warning: no channel entering or leaving it is removed.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch_pruning as tp
from pydantic import Field, field_validator
from torch import nn
from torch_pruning import ops

from nnzip.core.coverage import Coverage, MethodResult, build_coverage
from nnzip.core.select import select_names
from nnzip.core.weights import Kind, Weight, find_weights
from nnzip.data.splits import Batch, calibration_batches, probe_batch
from nnzip.errors import NnzipError
from nnzip.prune.importance import channel_scores, taylor_scores
from nnzip.stage import Context
from nnzip.train import FinetunedStage, fit

log = logging.getLogger(__name__)

Criterion = Literal["l1", "l2", "random", "taylor"]
CRITERIA: tuple[str, ...] = ("l1", "l2", "random", "taylor")
#: Layers whose output channels can be removed (each one roots a group of coupled layers).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
#: Handlers that remove a layer's *output* channels: these layers produce a group's channels.
_PRODUCER_HANDLERS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels,
                      tp.prune_linear_out_channels)
#: ``after_step(model, step)``: run between iterative pruning steps (e.g. a short fine-tune).
StepCallback = Callable[[nn.Module, int], None]


def _is_prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES)


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else \
        module.out_features


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, the layers whose output channels can be removed."""
    return [name for name, module in model.named_modules() if _is_prunable(module)]


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (convs) or features (linear layers) of every prunable layer, by name."""
    return {name: _out_channels(module) for name, module in model.named_modules()
            if _is_prunable(module)}


def _supported_types() -> tuple[type, ...]:
    known = {ops.type2class(kind) for kind in tp.pruner.function.PrunerBox}
    return tuple(cls for cls in known if isinstance(cls, type))


def unsupported_layers(model: nn.Module) -> list[str]:
    """Leaf modules with parameters the dependency graph cannot shrink (custom layers).

    Their channels are left alone: pruning skips every group that passes through them.
    """
    supported = _supported_types()
    return [name for name, module in model.named_modules()
            if not isinstance(module, supported) and not list(module.children())
            and list(module.parameters(recurse=False))]


class _Frozen(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning pruner for layers it cannot shrink: it marks them, and never runs.

    ``prune_in_channels is prune_out_channels`` ties a layer's inputs to its outputs, so every
    group that reaches the layer counts it as a producer; with the layer in ``ignored_layers``,
    Torch-Pruning then leaves the whole group alone.
    """

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NnzipError(f"internal error: channels of the skipped layer {type(layer).__name__} "
                         "were to be removed; report this as a bug")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channels(self, layer: nn.Module) -> None:
        return None


class ChannelImportance(tp.importance.Importance):
    """Scores a group's channels by summing a per-layer score over the layers producing them.

    ``layer_scores`` maps a conv/linear module to one score per output channel; in a residual
    group the scores of every conv adding into the sum are added. ``normalize`` divides a group's
    scores by their mean, so that groups of different layers compare in global pruning.
    """

    def __init__(self, layer_scores: Callable[[nn.Module], torch.Tensor],
                 normalize: bool = True) -> None:
        self.layer_scores = layer_scores
        self.normalize = normalize

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total = torch.zeros(len(group[0][1]), dtype=torch.float64)
        found = False
        for index, (dep, idxs) in enumerate(group):
            root_idxs = group[index].root_idxs
            if dep.handler not in _PRODUCER_HANDLERS or any(i is None for i in root_idxs):
                continue
            scores = self.layer_scores(dep.target.module).detach().cpu().to(torch.float64)
            total.index_add_(0, torch.as_tensor(root_idxs), scores[idxs])
            found = True
        if not found:
            return None
        if self.normalize and total.mean() > 0:
            total = total / total.mean()
        return total.float()


class _RandomImportance(tp.importance.Importance):
    """Seeded uniform channel scores (Torch-Pruning's own draws from the global generator)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group) -> torch.Tensor:
        return torch.rand(len(group[0][1]), generator=self.generator)


def _filter_weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    # Transposed convs store (in, out / groups, ...): put output channels first.
    return weight.transpose(0, 1) if getattr(module, "transposed", False) else weight


def _magnitude_importance(reduce: Literal["l1", "l2"]) -> ChannelImportance:
    return ChannelImportance(lambda module: channel_scores(_filter_weight(module), reduce))


def _taylor_layer_scores(model: nn.Module, batches: Sequence[Batch],
                         loss_fn: Callable | None) -> dict[nn.Module, torch.Tensor]:
    names = {module: name for name, module in model.named_modules() if _is_prunable(module)}
    parameter_names = [f"{name}.weight" for name in names.values()]
    scores = taylor_scores(model, batches, parameter_names, loss_fn=loss_fn)
    per_layer = {}
    for module, name in names.items():
        score = scores[f"{name}.weight"]
        if getattr(module, "transposed", False):
            score = score.transpose(0, 1)
        per_layer[module] = channel_scores(score, "sum")
    return per_layer


def _resolve_ignored(model: nn.Module, ignored_layers: Iterable[str | nn.Module] | None
                     ) -> list[nn.Module]:
    modules = dict(model.named_modules())
    resolved = []
    for layer in ignored_layers or ():
        if isinstance(layer, nn.Module):
            resolved.append(layer)
        elif layer in modules and layer:
            resolved.append(modules[layer])
        else:
            raise NnzipError(f"ignored layer {layer!r} is not in the model: valid names are "
                             f"{', '.join(prunable_layers(model))}")
    return resolved


def _selected_out(model: nn.Module, layers: Sequence[str] | None, exclude: Sequence[str]
                  ) -> list[nn.Module]:
    """Prunable layers that ``layers`` / ``exclude`` keep whole (their output channels stay)."""
    if layers is None and not exclude:
        return []
    candidates = prunable_layers(model)
    others = [name for name, _ in model.named_modules() if name and name not in candidates]
    chosen = set(select_names(candidates, layers, exclude, others=others,
                              what="conv/linear layers"))
    modules = dict(model.named_modules())
    return [modules[name] for name in candidates if name not in chosen]


def _frozen_layers(model: nn.Module) -> list[str]:
    """Layers whose channels are never removed: custom layers and RNNs.

    Torch-Pruning's LSTM pruner handles one-layer LSTMs only (and prunes the gate rows of
    ``weight_ih`` along the wrong dimension), and it has none for GRU, so recurrent layers keep
    their widths and every channel entering or leaving them is kept.
    """
    rnns = [name for name, module in model.named_modules() if isinstance(module, nn.RNNBase)]
    return sorted(set(unsupported_layers(model)) | set(rnns),
                  key=[name for name, _ in model.named_modules()].index)


def _customized(model: nn.Module) -> dict[type, _Frozen]:
    modules = dict(model.named_modules())
    return {type(modules[name]): _Frozen() for name in _frozen_layers(model)}


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Prunable layers whose output channels reach the model's output (e.g. the classifier).

    Removing them would change what the model predicts (fewer classes), so pruning never does.
    """
    graph = _build_graph(model, example_inputs, _customized(model))
    names = {module: name for name, module in model.named_modules()}
    found = []
    for group in graph.get_all_groups(root_module_types=list(PRUNABLE_TYPES)):
        if _feeds_output(graph, group):
            found += [names[dep.target.module] for dep, _ in group
                      if dep.handler in _PRODUCER_HANDLERS and dep.target.module in names]
    return found


def _feeds_output(graph: tp.DependencyGraph, group) -> bool:
    # A node nothing consumes, reached through layers that keep the channels (not merely the
    # input side of a consumer such as the classifier, which has no consumer itself).
    return any(not dep.target.outputs and graph.is_out_channel_pruning_fn(dep.handler)
               for dep, _ in group)


def _build_graph(model: nn.Module, example_inputs: torch.Tensor,
                 customized: dict) -> tp.DependencyGraph:
    was_training = model.training
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "unwrapped parameters" chatter: groups are checked
            return tp.DependencyGraph().build_dependency(
                model, example_inputs, customized_pruners=customized, verbose=False)
    finally:
        model.train(was_training)


def _check_options(sparsity: float, importance: object, round_to: int | None,
                   iterative_steps: int) -> None:
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) \
            or not 0.0 <= sparsity < 1.0:
        raise NnzipError(f"sparsity must be the fraction of prunable channels to remove, in "
                         f"[0, 1) (e.g. 0.5), got {sparsity!r}")
    if isinstance(importance, str) and importance not in CRITERIA:
        raise NnzipError(f"unknown importance criterion {importance!r}: use one of "
                         f"{', '.join(CRITERIA)}")
    if not isinstance(importance, (str, tp.importance.Importance)):
        raise NnzipError(f"importance must be a criterion name ({', '.join(CRITERIA)}) or a "
                         f"torch_pruning Importance, got {type(importance).__name__}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise NnzipError(f"round_to must be a positive channel multiple (e.g. 8), got "
                         f"{round_to!r}")
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise NnzipError(f"iterative_steps must be a positive int, got {iterative_steps!r}")


def _importance(criterion: str | tp.importance.Importance, seed: int,
                taylor: dict[nn.Module, torch.Tensor]) -> tp.importance.Importance:
    if not isinstance(criterion, str):
        return criterion
    if criterion == "random":
        return _RandomImportance(seed)
    if criterion == "taylor":
        return ChannelImportance(lambda module: taylor[module])
    return _magnitude_importance(criterion)


# --- which groups may be pruned ---------------------------------------------------------------
# A group is pruned only when removing its channels is exactly what zeroing them would do: the
# pruned model then computes what the original computes with those channels dead. Groups that
# pass through a layer mixing channels without weights (a LayerNorm normalizes over them;
# attention splits them into heads and scales scores by the head size) cannot be, and groups
# touching one user of a tied tensor would untie it; both are left whole, with the reason.

OUTPUT_LAYER = "output layer: its output channels are the model's outputs"
#: Layers that mix the channels of a group: removing a channel changes the others.
_CHANNEL_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.MultiheadAttention,
                   *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def _layer_names(graph: tp.DependencyGraph, group, names: dict) -> list[str]:
    found = []
    for dep, _ in group:
        name = names.get(dep.target.module)
        if name is not None and name not in found and dep.target.module is not None \
                and isinstance(dep.target.module, nn.Module) \
                and list(dep.target.module.parameters(recurse=False)):
            found.append(name)
    return found


def _pruned_dim(module: nn.Module, out_channels: bool) -> int | None:
    """The dimension of ``module.weight`` that loses entries (None: not a plain weight owner)."""
    if isinstance(module, nn.Embedding):
        return 1 if out_channels else None
    if isinstance(module, nn.Linear):
        return 0 if out_channels else 1
    if isinstance(module, nn.modules.conv._ConvNd):
        transposed = bool(getattr(module, "transposed", False))
        return int(out_channels == transposed)
    return None


def _tie_reason(graph: tp.DependencyGraph, group, names: dict, tied: list[Weight]
                ) -> str | None:
    """Why ``group`` would untie a tied tensor, or None if every user loses the same entries."""
    touched: dict[int, dict[str, tuple]] = {}
    for dep, idxs in group:
        name = names.get(dep.target.module)
        for index, weight in enumerate(tied):
            users = {owner for owner, attr in weight.owners if attr == "weight"}
            if name in users:
                dim = _pruned_dim(dep.target.module, graph.is_out_channel_pruning_fn(dep.handler))
                touched.setdefault(index, {})[name] = (dim, tuple(idxs))
    for index, seen in touched.items():
        weight = tied[index]
        users = [owner for owner, _ in weight.owners]
        missing = [user for user in users if user not in seen]
        if missing or len(set(seen.values())) > 1 or None in {dim for dim, _ in seen.values()}:
            return (f"{weight.name} is tied to {', '.join(weight.aliases)} (one tensor): these "
                    f"channels would be removed from {', '.join(seen)} only, untying it")
    return None


def _group_reason(graph: tp.DependencyGraph, group, names: dict, frozen: set[nn.Module],
                  excluded: set[nn.Module], functional: set[int], tied: list[Weight]
                  ) -> str | None:
    """Why ``group``'s channels are kept (None: they may be removed)."""
    if _feeds_output(graph, group):
        return OUTPUT_LAYER
    for dep, _ in group:
        module = dep.target.module
        if module in frozen:
            return (f"its channels pass through {names.get(module) or 'the model'} "
                    f"({type(module).__name__}), which channel pruning cannot shrink")
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, _CHANNEL_MIXING):
            what = ("splits them into attention heads and scales scores by the head size"
                    if isinstance(module, nn.MultiheadAttention) else "normalizes over them")
            return (f"its channels reach {names.get(module)} ({type(module).__name__}), which "
                    f"{what}: removing channels is not the same as zeroing them")
        if dep.target.type == ops.OPTYPE.PARAMETER and id(module) in functional:
            return (f"its channels reach the bare parameter {names.get(module)} (used through "
                    "torch.nn.functional), which channel pruning cannot follow")
    for dep, _ in group:
        if dep.target.module in excluded and graph.is_out_channel_pruning_fn(dep.handler):
            return "excluded (exclude / ignored_layers / layers)"
    return _tie_reason(graph, group, names, tied)


def _blocked_groups(model: nn.Module, example_inputs: torch.Tensor, excluded: list[nn.Module],
                    known_bad: dict[str, str]) -> tuple[list[nn.Module], dict[str, str], bool]:
    """(modules to pass as ignored, {layer: why kept}, whether any group may be pruned)."""
    graph = _build_graph(model, example_inputs, _customized(model))
    names = {module: name for name, module in model.named_modules()}
    names.update({param: name for name, param in model.named_parameters()})
    modules = dict(model.named_modules())
    frozen = {modules[name] for name in _frozen_layers(model)}
    weights = find_weights(model)
    functional = {id(weight.param) for weight in weights if weight.kind == Kind.FUNCTIONAL}
    tied = [weight for weight in weights if weight.tied]
    ignored, reasons, prunable = [], {}, False
    for group in graph.get_all_groups(root_module_types=list(PRUNABLE_TYPES)):
        members = _layer_names(graph, group, names)
        reason = _group_reason(graph, group, names, frozen, set(excluded), functional, tied)
        if reason is None:
            bad = [known_bad[name] for name in _producers(graph, group, names)
                   if name in known_bad]
            reason = bad[0] if bad else None
        if reason is None:
            prunable = True
            continue
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler) \
                    and isinstance(dep.target.module, nn.Module):
                ignored.append(dep.target.module)
        for name in members:
            reasons.setdefault(name, reason)
    for name in _frozen_layers(model):
        reasons.setdefault(name, _frozen_reason(modules[name]))
    return ignored, reasons, prunable


def _frozen_reason(module: nn.Module) -> str:
    if isinstance(module, nn.RNNBase):
        return (f"{type(module).__name__}: Torch-Pruning cannot shrink recurrent layers "
                "correctly (its LSTM pruner handles one layer only, and there is none for GRU); "
                "its channels and those of the layers around it are kept")
    params = ", ".join(name for name, _ in module.named_parameters(recurse=False))
    return (f"{type(module).__name__} uses its own parameters ({params}) directly (e.g. "
            "through torch.nn.functional): channel pruning cannot shrink it; its channels and "
            "those of the layers around it are kept")


# --- the check that removal equals zeroing -------------------------------------------------------

@dataclass
class _GroupRecord:
    """One pruned group: its root and root indices, and the input columns its consumers lose."""

    root: str
    handler: Callable
    root_idxs: list[int]
    members: list[str]
    producers: list[str]
    consumers: list[tuple[str, list[int]]]


def _record(graph: tp.DependencyGraph, group, names: dict) -> _GroupRecord:
    consumers = []
    for dep, idxs in group:
        module = dep.target.module
        if graph.is_in_channel_pruning_fn(dep.handler) and isinstance(
                module, nn.Linear | nn.modules.conv._ConvNd) and module in names:
            if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed \
                    and module.groups == module.in_channels == module.out_channels:
                continue  # depthwise: its outputs are in the group and checked downstream
            consumers.append((names[module], [int(i) for i in idxs]))
    root_dep, root_idxs = group[0]
    return _GroupRecord(names.get(root_dep.target.module, "?"), root_dep.handler,
                        [int(i) for i in root_idxs], _layer_names(graph, group, names),
                        _producers(graph, group, names), consumers)


def _producers(graph: tp.DependencyGraph, group, names: dict) -> list[str]:
    """The layers whose output channels the group removes (they identify the group)."""
    return [names[dep.target.module] for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names
            and isinstance(dep.target.module, nn.Module)]


@torch.no_grad()
def _zero_inputs(module: nn.Module, idxs: list[int]) -> None:
    """Make ``module`` ignore its input channels ``idxs`` (what removing them amounts to)."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        weight[:, idxs] = 0.0
    elif module.transposed:
        weight[idxs] = 0.0
    else:
        per_group_in = module.in_channels // module.groups
        per_group_out = module.out_channels // module.groups
        for channel in idxs:
            group = channel // per_group_in
            weight[group * per_group_out:(group + 1) * per_group_out,
                   channel % per_group_in] = 0.0


def _zeroed(reference: nn.Module, records: Sequence[_GroupRecord]) -> nn.Module:
    zeroed = copy.deepcopy(reference)
    for record in records:
        for name, idxs in record.consumers:
            _zero_inputs(zeroed.get_submodule(name), idxs)
    return zeroed


def _run(model: nn.Module, example_inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(example_inputs)


def _mismatch(outputs: torch.Tensor, expected: torch.Tensor) -> float | None:
    """Relative max error when ``outputs`` differ from ``expected`` beyond float rounding."""
    if outputs.shape != expected.shape:
        return float("inf")
    scale = float(expected.abs().max().clamp_min(1e-12))
    error = float((outputs - expected).abs().max()) / scale
    return error if error > 1e-5 else None


def _retie(model: nn.Module, tied: Sequence[Weight]) -> None:
    """Make every user of a tied tensor hold one parameter again (Torch-Pruning prunes each
    user's copy on its own; the group check made sure they lost the same entries)."""
    for weight in tied:
        params = [model.get_submodule(owner).__getattr__(attr) for owner, attr in weight.owners]
        first = params[0]
        for (owner, attr), param in zip(weight.owners[1:], params[1:], strict=True):
            if param is first:
                continue
            if param.shape != first.shape or not torch.equal(param, first):
                raise NnzipError(f"internal error: the tied {weight.name} and {owner}.{attr} "
                                 "were pruned differently; report this as a bug")
            setattr(model.get_submodule(owner), attr, first)


class _GroupsWrong(Exception):
    """Some groups' pruned outputs differ from zeroing their channels: {layer: reason}."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__(reasons)
        self.reasons = reasons


def _diagnose(reference: nn.Module, example_inputs: torch.Tensor,
              records: Sequence[_GroupRecord], tied: Sequence[Weight]) -> dict[str, str]:
    """Prune each group alone on a copy of ``reference``: which ones are not exact."""
    reasons = {}
    for record in records:
        trial = copy.deepcopy(reference)
        graph = _build_graph(trial, example_inputs, _customized(trial))
        root = trial.get_submodule(record.root)
        graph.get_pruning_group(root, record.handler, record.root_idxs).prune()
        _retie(trial, tied)
        try:
            outputs = _run(trial, example_inputs)
        except Exception as error:  # shapes no longer fit: the same verdict, said differently
            outputs, note = None, f"{type(error).__name__}: {str(error).splitlines()[0]}"
        expected = _run(_zeroed(reference, [record]), example_inputs)
        error = float("inf") if outputs is None else _mismatch(outputs, expected)
        if error is None:
            continue
        detail = note if outputs is None else f"relative error {error:.2g}"
        reason = (f"removing these channels is not the same as zeroing them ({detail}): the "
                  f"group {', '.join(record.members)} passes through an op Torch-Pruning maps "
                  "wrongly (e.g. a channel shuffle: view/transpose/reshape across channels); "
                  f"its channels are kept (exclude: [{record.root!r}] keeps them without "
                  "this check)")
        for name in record.producers:
            reasons.setdefault(name, reason)
    if not reasons:
        raise NnzipError("internal error: the pruned model differs from the zeroed one but no "
                         "single group does; report this as a bug")
    return reasons


def _make_pruner(model: nn.Module, example_inputs: torch.Tensor,
                 criterion: tp.importance.Importance, ignored: list[nn.Module],
                 **options) -> tp.pruner.BasePruner:
    """Torch-Pruning's pruner over ``model``, with the kept groups (``ignored``) left alone."""
    modules = dict(model.named_modules())
    frozen = _frozen_layers(model)
    if frozen:
        log.warning("structured pruning skips layers it cannot shrink (their channels are kept): "
                    "%s", ", ".join(frozen))
    # Tracing follows autograd, so it must work even when the caller is under torch.no_grad().
    with warnings.catch_warnings(record=True) as caught, torch.enable_grad():
        warnings.simplefilter("always")
        pruner = tp.pruner.BasePruner(
            model, example_inputs, importance=criterion,
            ignored_layers=ignored + [modules[name] for name in frozen],
            pruning_ratio=options.pop("sparsity"), customized_pruners=_customized(model),
            root_module_types=list(PRUNABLE_TYPES), **options)
    for warning in caught:
        log.debug("torch-pruning: %s", str(warning.message).splitlines()[0])
    return pruner


def _nothing_to_prune(model: nn.Module, reasons: dict[str, str]) -> NnzipError:
    listed = "; ".join(f"{name or type(model).__name__}: {why}" for name, why in reasons.items())
    return NnzipError(f"{type(model).__name__} has no channels structured pruning can remove "
                      f"({listed or 'no conv or linear layer'}); prune a model with hidden conv "
                      "or linear layers, or exclude fewer layers")


def _resolve_sparsity(sparsity: float | None, ratio: float | None) -> float:
    if ratio is not None:
        if sparsity is not None:
            raise NnzipError("give sparsity (the fraction of channels removed) only; ratio is "
                             "its old name")
        log.warning("prune_channels: 'ratio' is deprecated, call it 'sparsity' (the fraction of "
                    "channels removed)")
        return ratio
    if sparsity is None:
        raise NnzipError("prune_channels needs sparsity, the fraction of channels to remove "
                         "(e.g. 0.5)")
    return sparsity


def prune_channels_result(
        model: nn.Module, sparsity: float | None = None,
        example_inputs: torch.Tensor | None = None,
        importance: Criterion | tp.importance.Importance = "l1", *,
        global_pruning: bool = False, layers: Sequence[str] | None = None,
        exclude: Sequence[str] = (), ignored_layers: Iterable[str | nn.Module] | None = None,
        round_to: int | None = None, iterative_steps: int = 1,
        calibration: Iterable[Batch] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        after_step: StepCallback | None = None, seed: int = 0,
        ratio: float | None = None) -> MethodResult:
    """:func:`prune_channels` with its coverage: which weights shrank, and why the rest did not.

    ``details`` holds ``widths_before`` / ``widths_after`` and ``kept`` ({layer: why its
    channels were kept}).
    """
    sparsity = _resolve_sparsity(sparsity, ratio)
    if example_inputs is None:
        raise NnzipError("prune_channels needs example_inputs, a batch the model accepts, to "
                         "trace which layers shrink together")
    _check_options(sparsity, importance, round_to, iterative_steps)
    if importance == "taylor" and calibration is None:
        raise NnzipError("the taylor criterion needs calibration batches: pass calibration= "
                         "(e.g. nnzip.data.calibration_batches(data, 8)) or use l1")
    batches = list(calibration) if calibration is not None else []
    options = {"sparsity": sparsity, "global_pruning": global_pruning, "round_to": round_to,
               "iterative_steps": iterative_steps}
    known_bad: dict[str, str] = {}
    for _ in range(len(prunable_layers(model)) + 1):  # each retry keeps at least one more group
        try:
            pruned, kept = _prune_checked(model, example_inputs, importance, layers, exclude,
                                          ignored_layers, batches, loss_fn, after_step, seed,
                                          options, known_bad)
            break
        except _GroupsWrong as wrong:
            known_bad.update(wrong.reasons)
    else:  # pragma: no cover - every retry blocks a new group, so the loop ends first
        raise NnzipError("internal error: structured pruning kept failing its own check")
    for name, reason in kept.items():
        # The output layers are always kept, by design: not worth a warning.
        level = logging.DEBUG if reason == OUTPUT_LAYER else logging.WARNING
        log.log(level, "prune_channels keeps %s: %s", name or type(model).__name__, reason)
    pruned.train(model.training)
    coverage = _coverage(model, pruned, kept)
    details = {"widths_before": channel_counts(model), "widths_after": channel_counts(pruned),
               "kept": kept}
    return MethodResult(pruned, coverage, details)


def _prune_checked(model, example_inputs, importance, layers, exclude, ignored_layers, batches,
                   loss_fn, after_step, seed, options, known_bad
                   ) -> tuple[nn.Module, dict[str, str]]:
    pruned = copy.deepcopy(model).eval()
    excluded = _resolve_ignored(pruned, ignored_layers) + _selected_out(pruned, layers, exclude)
    ignored, kept, prunable = _blocked_groups(pruned, example_inputs, excluded, known_bad)
    if not prunable:
        raise _nothing_to_prune(model, kept)
    tied = [weight for weight in find_weights(pruned) if weight.tied]
    taylor: dict[nn.Module, torch.Tensor] = {}
    pruner = _make_pruner(pruned, example_inputs, _importance(importance, seed, taylor),
                          excluded + ignored, **options)
    names = {module: name for name, module in pruned.named_modules()}
    for step in range(options["iterative_steps"]):
        if importance == "taylor":
            taylor.clear()
            with torch.enable_grad():
                taylor.update(_taylor_layer_scores(pruned, batches, loss_fn))
        reference = copy.deepcopy(pruned)
        records = []
        for group in pruner.step(interactive=True):
            records.append(_record(pruner.DG, group, names))
            group.prune()
        _retie(pruned, tied)
        _check_step(pruned, reference, example_inputs, records, tied)
        if after_step is not None and step < options["iterative_steps"] - 1:
            after_step(pruned, step)
    return pruned, kept


def _check_step(pruned: nn.Module, reference: nn.Module, example_inputs: torch.Tensor,
                records: Sequence[_GroupRecord], tied: Sequence[Weight]) -> None:
    """The pruned model must compute what ``reference`` does with the removed channels zeroed."""
    if not records:
        return
    try:
        outputs = _run(pruned, example_inputs)
    except Exception:  # shapes no longer fit: find the group that did it
        outputs = None
    expected = _run(_zeroed(reference, records), example_inputs)
    if outputs is None or _mismatch(outputs, expected) is not None:
        raise _GroupsWrong(_diagnose(reference, example_inputs, records, tied))


def _coverage(model: nn.Module, pruned: nn.Module, kept: dict[str, str]) -> Coverage:
    before = {weight.name: weight.shape for weight in find_weights(model)}
    changed, skipped = {}, {}
    for weight in find_weights(pruned):
        old = before.get(weight.name)
        if old is None:
            continue
        if old != weight.shape:
            parts = []
            if old[0] != weight.shape[0]:
                parts.append(f"{_axis_name(weight, 0)} {old[0]} -> {weight.shape[0]}")
            if len(old) > 1 and old[1] != weight.shape[1]:
                parts.append(f"{_axis_name(weight, 1)} {old[1]} -> {weight.shape[1]}")
            changed[weight.name] = ", ".join(parts)
        else:
            reason = kept.get(weight.module_name)
            skipped[weight.name] = reason or "no channel of this layer was removed"
    return build_coverage(pruned, "prune_channels", changed, skipped)


def _axis_name(weight: Weight, dim: int) -> str:
    if weight.kind == "embedding":
        return "rows" if dim == 0 else "width"
    transposed = weight.kind == "conv_transpose"
    return "out channels" if (dim == 0) != transposed else "in channels"


def prune_channels(model: nn.Module, sparsity: float | None = None,
                   example_inputs: torch.Tensor | None = None,
                   importance: Criterion | tp.importance.Importance = "l1", *,
                   global_pruning: bool = False, layers: Sequence[str] | None = None,
                   exclude: Sequence[str] = (),
                   ignored_layers: Iterable[str | nn.Module] | None = None,
                   round_to: int | None = None, iterative_steps: int = 1,
                   calibration: Iterable[Batch] | None = None,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   after_step: StepCallback | None = None, seed: int = 0,
                   ratio: float | None = None) -> nn.Module:
    """A copy of ``model`` with ``sparsity`` of its prunable channels physically removed.

    ``model`` itself is left unchanged (so a failure never leaves it half-pruned); the returned
    model is a normal ``nn.Module`` with smaller layers. ``example_inputs`` (a batch the model
    accepts) is traced to find which layers must shrink together, and used to check the result:
    the pruned model must compute exactly what the model computes with the removed channels
    zeroed. A group of coupled layers where it would not (a channel shuffle Torch-Pruning maps
    wrongly, a LayerNorm or attention over the channels, one user of a tied tensor) keeps its
    channels, and :func:`prune_channels_result` says why, per weight.

    - ``sparsity``: fraction of each group's channels to remove (of all prunable channels with
      ``global_pruning``, where the scores decide which layers lose more), in [0, 1).
      ``ratio`` is its old name (still accepted, with a warning).
    - ``importance``: ``"l1"``, ``"l2"``, ``"random"``, ``"taylor"`` (needs ``calibration``, an
      iterable of ``(inputs, targets)`` batches from the training split, and optionally
      ``loss_fn(outputs, targets)``; default cross-entropy), or any Torch-Pruning ``Importance``.
    - ``layers`` / ``exclude``: names or glob patterns of the conv/linear layers whose output
      channels may be removed / are kept; ``ignored_layers`` (names or modules) is the older
      spelling of ``exclude``. The layers feeding the model's outputs are always kept.
    - ``round_to``: keep channel counts multiples of this (e.g. 8, for vectorised kernels).
    - ``iterative_steps``: reach ``sparsity`` in this many steps, re-scoring before each; with
      ``after_step(model, step)`` called after every step but the last (e.g. to fine-tune).
    """
    return prune_channels_result(
        model, sparsity, example_inputs, importance, global_pruning=global_pruning,
        layers=layers, exclude=exclude, ignored_layers=ignored_layers, round_to=round_to,
        iterative_steps=iterative_steps, calibration=calibration, loss_fn=loss_fn,
        after_step=after_step, seed=seed, ratio=ratio).model


def removed_fraction(before: dict[str, int], after: dict[str, int],
                     exclude: Iterable[str] = ()) -> float:
    """Fraction of the conv/linear output channels in ``before`` that are gone in ``after``.

    ``exclude`` names layers left out of the count (the output layers, which are never pruned).
    """
    names = [name for name in before if name not in set(exclude)]
    total = sum(before[name] for name in names)
    return 0.0 if total == 0 else 1.0 - sum(after.get(name, 0) for name in names) / total


class PruneChannels(FinetunedStage):
    """Recipe stage ``prune_channels``: remove channels structurally, then fine-tune.

    ``sparsity`` is the fraction of prunable channels removed (``ratio``, its old name, still
    works with a warning); ``criterion`` ranks them (``taylor`` uses ``calibration_batches`` of
    the training split). With ``iterative_steps`` > 1 the fine-tune budget is spread over the
    steps. ``layers`` / ``exclude`` (names or globs; ``ignored_layers`` is the older spelling of
    ``exclude``) say which layers may lose output channels; ``finetune_epochs`` defaults to the
    pipeline's budget. The details record the per-weight coverage and why groups were kept.

    ```yaml
    stages:
      - prune_channels: {sparsity: 0.5, criterion: l1, round_to: 8, finetune_epochs: 6, lr: 2.0e-3}
    ```
    """

    kind = "prune_channels"
    renamed = {"ratio": "sparsity", "ignored_layers": "exclude"}
    records_coverage = True

    sparsity: float = 0.5
    criterion: Criterion = "l1"
    global_pruning: bool = False
    round_to: int | None = Field(None, ge=1)
    iterative_steps: int = Field(1, ge=1)
    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    calibration_batches: int = Field(8, ge=1)

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"sparsity must be a fraction of channels to remove in [0, 1), "
                             f"e.g. 0.5, got {value}")
        return value

    @property
    def ratio(self) -> float:
        """The old name of :attr:`sparsity`."""
        return self.sparsity

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        epochs = self.finetune_budget(context)
        per_step = epochs // self.iterative_steps
        device = next(model.parameters()).device
        example = probe_batch(context.data, 2, split="train").to(device)
        calibration = (calibration_batches(context.data, self.calibration_batches,
                                           seed=context.seed)
                       if self.criterion == "taylor" else None)

        def finetune(pruned: nn.Module, step: int) -> None:
            if per_step > 0:
                fit(pruned, context.data, self.finetune_config(context, per_step),
                    progress=context.progress, description=f"finetune step {step + 1}")

        before = channel_counts(model)
        params_before = sum(p.numel() for p in model.parameters())
        result = prune_channels_result(
            model, self.sparsity, example, self.criterion, global_pruning=self.global_pruning,
            layers=self.layers, exclude=self.exclude,
            round_to=self.round_to, iterative_steps=self.iterative_steps,
            calibration=calibration, after_step=finetune, seed=context.seed)
        pruned = result.model
        after = channel_counts(pruned)
        final_epochs = epochs - per_step * (self.iterative_steps - 1)
        trained = None
        if final_epochs > 0:
            trained = fit(pruned, context.data, self.finetune_config(context, final_epochs),
                          progress=context.progress, description="finetune pruned")
        outputs = output_layers(model, example)
        context.record("criterion", self.criterion)
        context.record("sparsity", self.sparsity)
        context.record("removed_fraction", round(removed_fraction(before, after, outputs), 4))
        context.record("kept_output_layers", outputs)
        context.record("widths_before", before)
        context.record("widths_after", after)
        context.record("params_before", params_before)
        context.record("params_after", sum(p.numel() for p in pruned.parameters()))
        context.record("skipped_layers", unsupported_layers(model))
        context.record("kept_groups", result.details["kept"])
        context.record("coverage", result.coverage.to_dict())
        context.record("finetune_epochs", epochs)
        if trained is not None:
            context.record("finetune_best_val_accuracy", round(trained.best_val_accuracy, 4))
        return pruned
