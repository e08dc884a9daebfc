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
from typing import Literal

import torch
import torch_pruning as tp
from pydantic import Field, field_validator
from torch import nn
from torch_pruning import ops

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


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Prunable layers whose output channels reach the model's output (e.g. the classifier).

    Removing them would change what the model predicts (fewer classes), so pruning never does.
    """
    customized = {type(module): _Frozen() for name, module in model.named_modules()
                  if name in set(unsupported_layers(model))}
    graph = _build_graph(model, example_inputs, customized)
    names = {module: name for name, module in model.named_modules()}
    found = []
    for group in graph.get_all_groups(root_module_types=list(PRUNABLE_TYPES)):
        # A node nothing consumes, reached through layers that keep the channels (not merely
        # the input side of a consumer such as the classifier, which has no consumer itself).
        if any(not dep.target.outputs and graph.is_out_channel_pruning_fn(dep.handler)
               for dep, _ in group):
            found += [names[dep.target.module] for dep, _ in group
                      if dep.handler in _PRODUCER_HANDLERS and dep.target.module in names]
    return found


def _build_graph(model: nn.Module, example_inputs: torch.Tensor,
                 customized: dict) -> tp.DependencyGraph:
    was_training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs, customized_pruners=customized, verbose=False)
    finally:
        model.train(was_training)


def _check_options(ratio: float, importance: object, round_to: int | None,
                   iterative_steps: int) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise NnzipError(f"ratio must be the fraction of prunable channels to remove, in [0, 1) "
                         f"(e.g. 0.5), got {ratio!r}")
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


def _group_roots(pruner: tp.pruner.BasePruner) -> list[nn.Module]:
    groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                      root_module_types=pruner.root_module_types)
    return [group[0][0].target.module for group in groups]


def _make_pruner(model: nn.Module, example_inputs: torch.Tensor,
                 criterion: tp.importance.Importance, ignored: list[nn.Module],
                 **options) -> tp.pruner.BasePruner:
    """Torch-Pruning's pruner over ``model``, with skipped and output layers left alone."""
    skipped = unsupported_layers(model)
    if skipped:
        log.warning("structured pruning skips layers it cannot shrink (their channels are kept): "
                    "%s", ", ".join(skipped))
    modules = dict(model.named_modules())
    ignored = ignored + [modules[name] for name in skipped]
    ignored += [modules[name] for name in output_layers(model, example_inputs)]
    # Tracing follows autograd, so it must work even when the caller is under torch.no_grad().
    with warnings.catch_warnings(record=True) as caught, torch.enable_grad():
        warnings.simplefilter("always")
        pruner = tp.pruner.BasePruner(
            model, example_inputs, importance=criterion, ignored_layers=ignored,
            pruning_ratio=options.pop("ratio"),
            customized_pruners={type(modules[name]): _Frozen() for name in skipped},
            root_module_types=list(PRUNABLE_TYPES), **options)
    for warning in caught:
        log.info("torch-pruning: %s", str(warning.message).splitlines()[0])
    if not _group_roots(pruner):
        raise NnzipError(f"{type(model).__name__} has no channels structured pruning can remove: "
                         "every conv/linear layer feeds the output, is ignored or is skipped; "
                         "prune a model with hidden conv or linear layers, or ignore fewer layers")
    return pruner


def prune_channels(model: nn.Module, ratio: float, example_inputs: torch.Tensor,
                   importance: Criterion | tp.importance.Importance = "l1", *,
                   global_pruning: bool = False,
                   ignored_layers: Iterable[str | nn.Module] | None = None,
                   round_to: int | None = None, iterative_steps: int = 1,
                   calibration: Iterable[Batch] | None = None,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   after_step: StepCallback | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of its prunable channels physically removed.

    ``model`` itself is left unchanged (so a failure never leaves it half-pruned); the returned
    model is a normal ``nn.Module`` with smaller layers. ``example_inputs`` (a batch the model
    accepts) is traced to find which layers must shrink together.

    - ``ratio``: fraction of each group's channels to remove (of all prunable channels with
      ``global_pruning``, where the scores decide which layers lose more), in [0, 1).
    - ``importance``: ``"l1"``, ``"l2"``, ``"random"``, ``"taylor"`` (needs ``calibration``, an
      iterable of ``(inputs, targets)`` batches from the training split, and optionally
      ``loss_fn(outputs, targets)``; default cross-entropy), or any Torch-Pruning ``Importance``.
    - ``ignored_layers``: layer names (or modules) whose output channels are kept; the layers
      feeding the model's outputs are always kept.
    - ``round_to``: keep channel counts multiples of this (e.g. 8, for vectorised kernels).
    - ``iterative_steps``: reach ``ratio`` in this many steps, re-scoring before each; with
      ``after_step(model, step)`` called after every step but the last (e.g. to fine-tune).
    """
    _check_options(ratio, importance, round_to, iterative_steps)
    if importance == "taylor" and calibration is None:
        raise NnzipError("the taylor criterion needs calibration batches: pass calibration= "
                         "(e.g. nnzip.data.calibration_batches(data, 8)) or use l1")
    batches = list(calibration) if calibration is not None else []
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        expected = pruned.eval()(example_inputs)
    taylor: dict[nn.Module, torch.Tensor] = {}
    pruner = _make_pruner(pruned, example_inputs, _importance(importance, seed, taylor),
                          _resolve_ignored(pruned, ignored_layers), ratio=ratio,
                          global_pruning=global_pruning, round_to=round_to,
                          iterative_steps=iterative_steps)
    for step in range(iterative_steps):
        if importance == "taylor":
            taylor.clear()
            with torch.enable_grad():
                taylor.update(_taylor_layer_scores(pruned, batches, loss_fn))
        pruner.step()
        if after_step is not None and step < iterative_steps - 1:
            after_step(pruned, step)
    _check_still_works(pruned, example_inputs, expected, unsupported_layers(pruned))
    pruned.train(model.training)
    return pruned


def _check_still_works(model: nn.Module, example_inputs: torch.Tensor, expected: torch.Tensor,
                       skipped: list[str]) -> None:
    try:
        with torch.no_grad():
            outputs = model.eval()(example_inputs)
    except Exception as error:  # say which layers were suspect instead of a shape traceback
        hint = f" (suspect layers: {', '.join(skipped)})" if skipped else ""
        raise NnzipError(f"the pruned model no longer runs ({type(error).__name__}: "
                         f"{str(error).splitlines()[0]}){hint}: pass the layers around the "
                         "failing op in ignored_layers") from error
    if outputs.shape != expected.shape:
        raise NnzipError(f"pruning changed the output shape from {tuple(expected.shape)} to "
                         f"{tuple(outputs.shape)}: pass the output layer in ignored_layers")


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

    ``ratio`` is the fraction of prunable channels removed; ``criterion`` ranks them (``taylor``
    uses ``calibration_batches`` of the training split). With ``iterative_steps`` > 1 the
    fine-tune budget is spread over the steps. ``ignored_layers`` names layers that keep their
    output channels; ``finetune_epochs`` defaults to the pipeline's budget.

    ```yaml
    stages:
      - prune_channels: {ratio: 0.5, criterion: l1, round_to: 8, finetune_epochs: 6, lr: 2.0e-3}
    ```
    """

    kind = "prune_channels"

    ratio: float = 0.5
    criterion: Criterion = "l1"
    global_pruning: bool = False
    round_to: int | None = Field(None, ge=1)
    iterative_steps: int = Field(1, ge=1)
    ignored_layers: list[str] = Field(default_factory=list)
    calibration_batches: int = Field(8, ge=1)

    @field_validator("ratio")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"ratio must be a fraction of channels to remove in [0, 1), e.g. "
                             f"0.5, got {value}")
        return value

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
        pruned = prune_channels(
            model, self.ratio, example, self.criterion, global_pruning=self.global_pruning,
            ignored_layers=self.ignored_layers, round_to=self.round_to,
            iterative_steps=self.iterative_steps, calibration=calibration,
            after_step=finetune, seed=context.seed)
        after = channel_counts(pruned)
        final_epochs = epochs - per_step * (self.iterative_steps - 1)
        result = None
        if final_epochs > 0:
            result = fit(pruned, context.data, self.finetune_config(context, final_epochs),
                         progress=context.progress, description="finetune pruned")
        outputs = output_layers(model, example)
        context.record("criterion", self.criterion)
        context.record("ratio", self.ratio)
        context.record("removed_fraction", round(removed_fraction(before, after, outputs), 4))
        context.record("kept_output_layers", outputs)
        context.record("widths_before", before)
        context.record("widths_after", after)
        context.record("params_before", params_before)
        context.record("params_after", sum(p.numel() for p in pruned.parameters()))
        context.record("skipped_layers", unsupported_layers(model))
        context.record("finetune_epochs", epochs)
        if result is not None:
            context.record("finetune_best_val_accuracy", round(result.best_val_accuracy, 4))
        return pruned
