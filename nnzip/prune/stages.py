"""Recipe stage ``prune``: unstructured or N:M pruning with a schedule and a masked fine-tune.

A thin wrapper over the plain functions of :mod:`nnzip.prune` (STYLE.md): options are validated
when the recipe is read; layer names, which need the model, are checked before any work starts.

```yaml
stages:
  - prune: {sparsity: 0.9, schedule: gradual, finetune_epochs: 12}
  - prune: {pattern: "n:m", n: 2, m: 4, finetune_epochs: 2}
  - prune: {sparsity: 0.5, criterion: sparsegpt, finetune_epochs: 0}   # or wanda
```
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from nnzip.data.splits import calibration_batches
from nnzip.prune.calibrated import METHODS as CALIBRATED
from nnzip.prune.calibrated import calibrated_prune
from nnzip.prune.masks import (
    Masks,
    fold_masks,
    layer_sparsity,
    nm_incompatible,
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
from nnzip.prune.unstructured import nm_prune, prune_unstructured
from nnzip.stage import Context, Stage
from nnzip.train import FinetunedStage, TrainConfig


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


class Prune(FinetunedStage):
    """Zero the least important weights (unstructured, or N of every M), then fine-tune.

    ``sparsity`` is the fraction of the selected weights to remove (unstructured; N:M removes
    1 − N/M). ``scope``: one ``global`` threshold, the same fraction per ``layer``, or per-layer
    fractions from a ``sensitivity`` analysis on the validation split (``tolerance`` = accepted
    val-accuracy drop per layer). ``schedule``: ``oneshot`` (prune, then ``finetune_epochs``),
    ``iterative`` (``steps`` rounds of prune + ``finetune_epochs`` each) or ``gradual`` (Zhu &
    Gupta's cubic ramp over ``ramp_fraction`` of ``finetune_epochs`` in ``steps`` mask updates,
    then recovery). ``finetune_epochs`` defaults to the pipeline's budget. N:M skips layers whose
    input length is not a multiple of M and lists them in the report details.

    ``criterion: wanda`` or ``sparsegpt`` (:mod:`nnzip.prune.calibrated`) prune one-shot from
    ``calibration_batches`` of training inputs, to ``sparsity`` within every output row of each
    layer (scope and schedule do not apply), then fine-tune with the masks kept.
    """

    kind = "prune"

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
    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
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
        names = select_parameters(model, self.layers, self.exclude)  # fail before any work
        config = self.finetune_config(context)
        if self.criterion in CALIBRATED:
            masks = self._prune_calibrated(model, context, names, config)
        elif self.pattern == "n:m":
            masks = self._prune_nm(model, context, names, config)
        else:
            masks = self._prune_unstructured(model, context, names, config)
        fold_masks(model, masks)
        summary = sparsity_summary(model, names)
        context.record("criterion", self.criterion)
        context.record("pattern", self.pattern if self.pattern != "n:m" else f"{self.n}:{self.m}")
        context.record("schedule", self.schedule)
        context.record("target_sparsity", self._target())
        context.record("achieved_sparsity", summary["achieved_sparsity"])
        context.record("weight_sparsity", summary["weight_sparsity"])
        context.record("param_sparsity", summary["param_sparsity"])
        context.record("layer_sparsity", layer_sparsity(model))
        context.record("layer_params", layer_sizes(model))
        context.record("finetune_epochs", config.epochs)
        return model

    def _target(self) -> float:
        return 1.0 - self.n / self.m if self.pattern == "n:m" else float(self.sparsity)

    def _batches(self, context: Context):
        if self.criterion not in ("taylor", "hessian"):
            return None
        return calibration_batches(context.data, self.calibration_batches, seed=context.seed)

    def _prune_calibrated(self, model: nn.Module, context: Context, names: list[str],
                          config: TrainConfig) -> Masks:
        nm = self.pattern == "n:m"
        if nm:
            context.record("skipped_layers", nm_incompatible(model, names, self.m))
        batches = calibration_batches(context.data, self.calibration_batches, seed=context.seed)
        masks = calibrated_prune(model, batches, self.criterion,
                                 None if nm else self.sparsity, n=self.n if nm else None,
                                 m=self.m if nm else None, layers=names)
        finetune_masked(model, context.data, masks, config, progress=context.progress)
        return masks

    def _prune_nm(self, model: nn.Module, context: Context, names: list[str],
                  config: TrainConfig) -> Masks:
        context.record("skipped_layers", nm_incompatible(model, names, self.m))
        masks = nm_prune(model, self.n, self.m, criterion=self.criterion, layers=names,
                         batches=self._batches(context), hessian=self.hessian, seed=context.seed)
        finetune_masked(model, context.data, masks, config, progress=context.progress)
        return masks

    def _prune_unstructured(self, model: nn.Module, context: Context, names: list[str],
                            config: TrainConfig) -> Masks:
        prune = partial(prune_unstructured, criterion=self.criterion, data=context.data,
                        layers=names, hessian=self.hessian,
                        calibration_batch_count=self.calibration_batches, seed=context.seed)
        if self.scope == "sensitivity":
            curves = layer_sensitivity(model, context.data, self.sensitivity_sparsities,
                                       criterion=self.criterion, layers=names,
                                       batches=self._batches(context), hessian=self.hessian,
                                       seed=context.seed)
            context.record("sensitivity", _json_curves(curves))
            sizes = {name: param.numel() for name, param in model.named_parameters()}

            def pruner(net: nn.Module, sparsity: float, keep: Masks | None) -> Masks:
                split = allocate_sparsity(curves, sizes, sparsity, self.tolerance)
                return prune(net, split, scope="layer", keep=keep)

            allocation = allocate_sparsity(curves, sizes, self._target(), self.tolerance)
            context.record("allocated_sparsity", allocation)
        else:
            def pruner(net: nn.Module, sparsity: float, keep: Masks | None) -> Masks:
                return prune(net, sparsity, scope=self.scope, keep=keep)

        if self.schedule == "iterative":
            return iterative_prune(model, context.data, self._target(), config, steps=self.steps,
                                   spacing=self.spacing, pruner=pruner, progress=context.progress)
        if self.schedule == "gradual":
            return gradual_prune(model, context.data, self._target(), config, pruner=pruner,
                                 updates=self.steps, ramp_fraction=self.ramp_fraction,
                                 progress=context.progress)
        return oneshot_prune(model, context.data, self._target(), config, pruner=pruner,
                             progress=context.progress)


def layer_sizes(model: nn.Module) -> dict[str, int]:
    """Element count of every prunable weight (the rows of the report's sparsity table)."""
    params = dict(model.named_parameters())
    return {name: params[name].numel() for name in layer_sparsity(model)}


class Sensitivity(Stage):
    """Analysis only: validation accuracy with each layer pruned alone, drawn in the report.

    The model is returned unchanged. ``sparsities`` is the grid each layer is tried at;
    ``criterion`` ranks the weights as the ``prune`` stage would. ``target`` (optional) also
    records the per-layer split of that global sparsity that ``scope: sensitivity`` would use.
    """

    kind = "sensitivity"

    sparsities: list[float] = Field(default_factory=lambda: list(DEFAULT_SENSITIVITY_SPARSITIES))
    criterion: Literal["magnitude", "l1", "l2", "random", "taylor", "hessian"] = "magnitude"
    hessian: Literal["fisher", "hutchinson"] = "fisher"
    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
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
            sizes = {name: p.numel() for name, p in model.named_parameters()}
            context.record("target", self.target)
            context.record("allocated_sparsity",
                           allocate_sparsity(curves, sizes, self.target, self.tolerance))
        return model


def _json_curves(curves: Curves) -> dict[str, dict[str, float]]:
    """Sensitivity curves with string keys, as JSON needs them."""
    return {name: {f"{sparsity:g}": acc for sparsity, acc in curve.items()}
            for name, curve in curves.items()}
