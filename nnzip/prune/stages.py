"""Recipe stage ``prune`` and the one call shape :func:`prune`: unstructured or N:M pruning
with a schedule and a masked fine-tune, returning the model, its coverage and the details.

A thin wrapper over the plain functions of :mod:`nnzip.prune` (STYLE.md): options are validated
when the recipe is read; layer names, which need the model, are checked before any work starts.
The config object *is* the recipe stage, so the same object works from Python:

```yaml
stages:
  - prune: {sparsity: 0.9, schedule: gradual, finetune_epochs: 12}
  - prune: {pattern: "n:m", n: 2, m: 4, finetune_epochs: 2}
  - prune: {sparsity: 0.5, criterion: sparsegpt, finetune_epochs: 0}   # or wanda
```

```python
result = prune(model, Prune(sparsity=0.5, criterion="wanda"), calibration=batches)
result.coverage.to_dict()   # per parameter: "pruned to 50.0 % zeros (wanda, unstructured)"
```
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from nnzip.core import Coverage, LayerSelection, MethodResult
from nnzip.core.modes import set_eval
from nnzip.data.splits import DataSplits, calibration_batches
from nnzip.errors import NnzipError
from nnzip.prune.calibrated import METHODS as CALIBRATED
from nnzip.prune.calibrated import calibrated_prune_with_skips
from nnzip.prune.masks import (
    Masks,
    fold_masks,
    layer_sparsity,
    prunable_weights,
    pruning_coverage,
    select_parameters,
    sparsity_summary,
)
from nnzip.prune.schedules import finetune_masked, gradual_prune, iterative_prune, oneshot_prune
from nnzip.prune.sensitivity import (
    DEFAULT_SENSITIVITY_SPARSITIES,
    Curves,
    allocate_sparsity,
    layer_sensitivity,
)
from nnzip.prune.unstructured import nm_prune_with_skips, prune_unstructured
from nnzip.stage import Context, Stage
from nnzip.train import FinetunedStage, TrainConfig

log = logging.getLogger(__name__)


def _check_fraction(value: float, what: str) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a fraction of weights to remove in [0, 1), e.g. 0.9, "
                         f"got {value}")
    return value


def _check_grid(values: list[float]) -> list[float]:
    """A sensitivity grid: every point a fraction to remove in [0, 1)."""
    for value in values:
        _check_fraction(value, "every sensitivity sparsity")
    return values


class Prune(FinetunedStage, LayerSelection):
    """Zero the least important weights (unstructured, or N of every M), then fine-tune.

    ``sparsity`` is the fraction of the selected weights to remove (unstructured; N:M removes
    1 − N/M). ``scope``: one ``global`` threshold, the same fraction per ``layer``, or per-layer
    fractions from a ``sensitivity`` analysis on the validation split (``tolerance`` = accepted
    val-accuracy drop per layer). ``schedule``: ``oneshot`` (prune, then ``finetune_epochs``),
    ``iterative`` (``steps`` rounds of prune + ``finetune_epochs`` each) or ``gradual`` (Zhu &
    Gupta's cubic ramp over ``ramp_fraction`` of ``finetune_epochs`` in ``steps`` mask updates,
    then recovery). ``finetune_epochs`` defaults to the pipeline's budget. Every weight is a
    candidate (attention, RNN gates, embeddings, functional parameters; tied tensors once); N:M
    and the calibrated criteria skip the weights they cannot handle, and the report details get
    the ``coverage`` (per parameter: what was done, or why not) and ``skipped_layers``.

    ``criterion: wanda`` or ``sparsegpt`` (:mod:`nnzip.prune.calibrated`) prune one-shot from
    ``calibration_batches`` of training inputs, to ``sparsity`` within every output row of each
    layer (scope and schedule do not apply), then fine-tune with the masks kept.
    """

    kind = "prune"
    records_coverage = True

    sparsity: float | None = None
    criterion: Literal["magnitude", "l1", "l2", "random", "taylor", "hessian", "wanda",
                       "sparsegpt"] = "magnitude"
    hessian: Literal["fisher", "hutchinson"] = "fisher"
    scope: Literal["global", "layer", "sensitivity"] = "global"
    pattern: Literal["unstructured", "n:m"] = "unstructured"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=1)
    schedule: Literal["oneshot", "iterative", "gradual"] = "oneshot"
    steps: int = Field(5, ge=1, description="iterative rounds, or gradual mask updates")
    spacing: Literal["geometric", "linear"] = "geometric"
    ramp_fraction: float = Field(0.5, gt=0, le=1)
    calibration_batches: int = Field(8, ge=1)
    tolerance: float = Field(0.01, ge=0, le=1)
    sensitivity_sparsities: list[float] = Field(
        default_factory=lambda: list(DEFAULT_SENSITIVITY_SPARSITIES))

    @field_validator("sparsity")
    @classmethod
    def _sparsity_in_range(cls, value: float | None) -> float | None:
        return None if value is None else _check_fraction(value, "sparsity")

    _grid_in_range = field_validator("sensitivity_sparsities")(classmethod(
        lambda cls, values: _check_grid(values)))

    @model_validator(mode="after")
    def _consistent(self) -> Prune:
        if self.n > self.m:
            raise ValueError(f"N:M sparsity keeps N of every M weights, so N must not exceed M; "
                             f"got n={self.n}, m={self.m} (e.g. n: 2, m: 4)")
        if self.pattern == "n:m":
            if self.sparsity is not None:
                raise ValueError("pattern 'n:m' removes 1 - N/M of the weights: drop 'sparsity' "
                                 "or use pattern 'unstructured'")
            if self.schedule != "oneshot":
                raise ValueError("pattern 'n:m' reaches its sparsity in one step: use schedule "
                                 "'oneshot' (with finetune_epochs)")
        elif self.sparsity is None:
            raise ValueError("pattern 'unstructured' needs 'sparsity', the fraction of weights "
                             "to remove, e.g. sparsity: 0.9")
        if self.criterion in CALIBRATED:
            if self.schedule != "oneshot":
                raise ValueError(f"criterion {self.criterion!r} prunes in one shot: use "
                                 "schedule 'oneshot' (with finetune_epochs)")
            if self.scope != "global":
                raise ValueError(f"criterion {self.criterion!r} compares weights within each "
                                 "output row: drop 'scope'")
        return self

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        select_parameters(model, self.layers, self.exclude)  # fail before any work
        result = _run(model, self, context, calibration=None,
                      finetune=self.finetune_config(context))
        for key, value in result.details.items():
            context.record(key, value)
        context.record("coverage", result.coverage.to_dict())
        result.coverage.log_skipped(context.logger)
        return result.model

    def target(self) -> float:
        """The fraction of the covered weights this stage removes (N:M: 1 − N/M)."""
        return 1.0 - self.n / self.m if self.pattern == "n:m" else float(self.sparsity)

    @property
    def pattern_name(self) -> str:
        return f"{self.n}:{self.m}" if self.pattern == "n:m" else "unstructured"


def prune(model: nn.Module, config: Prune, calibration: Sequence | None = None, *,
          data: DataSplits | None = None, seed: int = 0, progress: bool = False
          ) -> MethodResult:
    """Prune ``model`` in place as ``config`` (the ``prune`` recipe stage) says; the model comes
    back in eval mode inside a :class:`~nnzip.core.MethodResult` with its coverage (every weight:
    "pruned to xx.x % zeros (criterion, pattern)" or why it was skipped) and the details a
    recipe's report shows.

    ``calibration``: batches for the criteria that need data (taylor and hessian: (inputs,
    labels) pairs; wanda and sparsegpt: inputs, pairs or keyword mappings); drawn from ``data``
    (``config.calibration_batches`` of them) when not given. ``data`` is also what a fine-tune
    (``finetune_epochs`` > 0; outside a pipeline ``None`` means 0), a gradual schedule or
    ``scope: sensitivity`` need.
    """
    if not isinstance(config, Prune):
        raise NnzipError(f"prune() takes a Prune config (the recipe stage), got "
                         f"{type(config).__name__}: e.g. Prune(sparsity=0.5)")
    epochs = config.finetune_epochs or 0
    needs_data = {"a fine-tune (finetune_epochs > 0)": epochs > 0,
                  f"schedule {config.schedule!r}": config.schedule == "gradual",
                  "scope 'sensitivity'": config.scope == "sensitivity"}
    for what, needed in needs_data.items():
        if needed and data is None:
            raise NnzipError(f"{what} needs data: pass data= (a DataSplits) to prune()")
    select_parameters(model, config.layers, config.exclude)  # fail before any work
    context = Context(data=data, finetune_epochs=0, seed=seed, progress=progress)
    finetune = config.finetune_config(context) if epochs else None
    result = _run(model, config, context, calibration=calibration, finetune=finetune)
    result.coverage.log_skipped(log)
    return result


def _run(model: nn.Module, config: Prune, context: Context, *, calibration: Sequence | None,
         finetune: TrainConfig | None) -> MethodResult:
    """Prune, fine-tune, fold the masks; the details and coverage of the run."""
    names = select_parameters(model, config.layers, config.exclude)
    details: dict = {}
    skipped: dict[str, str] = {}
    if config.criterion in CALIBRATED:
        masks, skipped = _prune_calibrated(model, config, context, names, calibration)
        finetune_masked(model, context.data, masks, finetune, progress=context.progress)
    elif config.pattern == "n:m":
        masks, skipped = nm_prune_with_skips(
            model, config.n, config.m, criterion=config.criterion, layers=names,
            batches=_gradient_batches(config, context, calibration), hessian=config.hessian,
            seed=context.seed)
        finetune_masked(model, context.data, masks, finetune, progress=context.progress)
    else:
        masks = _prune_unstructured(model, config, context, names, finetune, calibration,
                                    details)
    fold_masks(model, masks)
    set_eval(model)
    pruned = [name for name in names if name in masks]
    summary = sparsity_summary(model, pruned or names)
    if skipped or config.pattern == "n:m":
        details["skipped_layers"] = list(skipped)
    details.update({
        "criterion": config.criterion, "pattern": config.pattern_name,
        "schedule": config.schedule, "target_sparsity": config.target(),
        "achieved_sparsity": summary["achieved_sparsity"],
        "weight_sparsity": summary["weight_sparsity"],
        "param_sparsity": summary["param_sparsity"],
        "layer_sparsity": layer_sparsity(model), "layer_params": layer_sizes(model),
        "finetune_epochs": finetune.epochs if finetune is not None else 0})
    coverage: Coverage = pruning_coverage(model, masks, skipped, criterion=config.criterion,
                                          pattern=config.pattern_name)
    return MethodResult(model=model, coverage=coverage, details=details)


def _gradient_batches(config: Prune, context: Context, calibration: Sequence | None):
    """Calibration batches for taylor / hessian (None for the criteria that need none)."""
    if config.criterion not in ("taylor", "hessian"):
        return None
    if calibration is not None:
        return list(calibration)
    if context.data is None:
        raise NnzipError(f"criterion {config.criterion!r} needs calibration data: pass "
                         "calibration= ((inputs, labels) batches) or data=, or use criterion "
                         "'magnitude'")
    return calibration_batches(context.data, config.calibration_batches, seed=context.seed)


def _prune_calibrated(model: nn.Module, config: Prune, context: Context, names: list[str],
                      calibration: Sequence | None) -> tuple[Masks, dict[str, str]]:
    nm = config.pattern == "n:m"
    if calibration is None:
        if context.data is None:
            raise NnzipError(f"criterion {config.criterion!r} needs calibration inputs: pass "
                             "calibration= (batches of inputs) or data=")
        calibration = calibration_batches(context.data, config.calibration_batches,
                                          seed=context.seed)
    return calibrated_prune_with_skips(model, calibration, config.criterion,
                                       None if nm else config.sparsity,
                                       n=config.n if nm else None, m=config.m if nm else None,
                                       layers=names)


def _prune_unstructured(model: nn.Module, config: Prune, context: Context, names: list[str],
                        finetune: TrainConfig | None, calibration: Sequence | None,
                        details: dict) -> Masks:
    batches = _gradient_batches(config, context, calibration)
    prune_to = partial(prune_unstructured, criterion=config.criterion, batches=batches,
                       layers=names, hessian=config.hessian, seed=context.seed)
    if config.scope == "sensitivity":
        curves = layer_sensitivity(model, context.data, config.sensitivity_sparsities,
                                   criterion=config.criterion, layers=names, batches=batches,
                                   hessian=config.hessian, seed=context.seed)
        details["sensitivity"] = _json_curves(curves)
        sizes = layer_sizes(model)

        def pruner(net: nn.Module, sparsity: float, keep: Masks | None) -> Masks:
            split = allocate_sparsity(curves, sizes, sparsity, config.tolerance)
            return prune_to(net, split, scope="layer", keep=keep)

        details["allocated_sparsity"] = allocate_sparsity(curves, sizes, config.target(),
                                                          config.tolerance)
    else:
        def pruner(net: nn.Module, sparsity: float, keep: Masks | None) -> Masks:
            return prune_to(net, sparsity, scope=config.scope, keep=keep)

    if config.schedule == "iterative":
        return iterative_prune(model, context.data, config.target(), finetune,
                               steps=config.steps, spacing=config.spacing, pruner=pruner,
                               progress=context.progress)
    if config.schedule == "gradual":
        if finetune is None:
            raise NnzipError("schedule 'gradual' prunes during training: set finetune_epochs "
                             "to at least 1 and pass data=")
        return gradual_prune(model, context.data, config.target(), finetune, pruner=pruner,
                             updates=config.steps, ramp_fraction=config.ramp_fraction,
                             progress=context.progress)
    return oneshot_prune(model, context.data, config.target(), finetune, pruner=pruner,
                         progress=context.progress)


def layer_sizes(model: nn.Module) -> dict[str, int]:
    """Element count of every weight (the rows of the report's sparsity table), tied once."""
    return {weight.name: weight.numel for weight in prunable_weights(model)}


class Sensitivity(Stage, LayerSelection):
    """Analysis only: validation accuracy with each layer pruned alone, drawn in the report.

    The model is returned unchanged. ``sparsities`` is the grid each layer is tried at;
    ``criterion`` ranks the weights as the ``prune`` stage would. ``target`` (optional) also
    records the per-layer split of that global sparsity that ``scope: sensitivity`` would use.
    """

    kind = "sensitivity"

    sparsities: list[float] = Field(default_factory=lambda: list(DEFAULT_SENSITIVITY_SPARSITIES))
    criterion: Literal["magnitude", "l1", "l2", "random", "taylor", "hessian"] = "magnitude"
    hessian: Literal["fisher", "hutchinson"] = "fisher"
    calibration_batches: int = Field(8, ge=1)
    target: float | None = None
    tolerance: float = Field(0.01, ge=0, le=1)

    _grid_in_range = field_validator("sparsities")(classmethod(
        lambda cls, values: _check_grid(values)))

    @field_validator("target")
    @classmethod
    def _target_in_range(cls, value: float | None) -> float | None:
        return None if value is None else _check_fraction(value, "target")

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        names = select_parameters(model, self.layers, self.exclude)
        batches = (calibration_batches(context.data, self.calibration_batches, seed=context.seed)
                   if self.criterion in ("taylor", "hessian") else None)
        curves = layer_sensitivity(model, context.data, self.sparsities,
                                   criterion=self.criterion, layers=names, batches=batches,
                                   hessian=self.hessian, seed=context.seed)
        context.record("criterion", self.criterion)
        context.record("sensitivity", _json_curves(curves))
        if self.target is not None:
            sizes = layer_sizes(model)
            context.record("target", self.target)
            context.record("allocated_sparsity",
                           allocate_sparsity(curves, sizes, self.target, self.tolerance))
        return model


def _json_curves(curves: Curves) -> dict[str, dict[str, float]]:
    """Sensitivity curves with string keys, as JSON needs them."""
    return {name: {f"{sparsity:g}": acc for sparsity, acc in curve.items()}
            for name, curve in curves.items()}
