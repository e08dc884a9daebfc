"""Recipe stages ``svd`` and ``tucker``: factorize, then (optionally) fine-tune.

```yaml
stages:
  - svd: {keep: 0.3, finetune_epochs: 3}              # Linear layers, 30 % of each one's weights
  - svd: {energy: 0.95, exclude: [fc3]}
  - tucker: {method: vbmf, finetune_epochs: 3}        # k×k convs, ranks by VBMF (Kim et al.)
  - tucker: {keep: 0.4, distill: {temperature: 4, alpha: 0.9}}
```

``keep`` is the fraction of each layer's weights kept (``ratio``, its old name, still works with
a warning). ``finetune_epochs: 0`` skips the fine-tune; ``distill`` makes it a distillation from
the model before compression, as for every fine-tuning stage. The details record the coverage:
which weights were factorized, and why the others were not.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from nnzip.core.coverage import MethodResult
from nnzip.factorize.svd import factorize_linears_result
from nnzip.factorize.tucker import factorize_convs_result
from nnzip.stage import Context
from nnzip.train import FinetunedStage, fit

log = logging.getLogger(__name__)


def _record(context: Context, model: nn.Module, result: MethodResult, rank_key: str,
            params_before: int) -> None:
    done = result.details
    context.record("ranks", {name: entry[rank_key] for name, entry in done.items()
                             if rank_key in entry})
    context.record("skipped", {name: entry["skipped"] for name, entry in done.items()
                               if "skipped" in entry})
    context.record("layer_params", {name: [entry["params_before"],
                                           entry.get("params_after", entry["params_before"])]
                                    for name, entry in done.items()})
    context.record("params_before", params_before)
    context.record("params_after", sum(p.numel() for p in model.parameters()))
    context.record("coverage", result.coverage.to_dict())


class _Factorize(FinetunedStage):
    renamed = {"ratio": "keep"}
    records_coverage = True

    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """The old name of ``keep``."""
        return self.keep

    def keeps_layer_names(self) -> bool:
        return False  # a layer becomes an nn.Sequential: fc1.weight is then fc1.0.weight

    def _finetune(self, model: nn.Module, context: Context) -> None:
        config = self.finetune_config(context)
        context.record("finetune_epochs", config.epochs)
        if config.epochs > 0:
            result = fit(model, context.data, config, progress=context.progress,
                         description=f"finetune {self.kind}")
            context.record("finetune_best_val_accuracy", round(result.best_val_accuracy, 4))


class SVD(_Factorize):
    """Truncated SVD of Linear layers (each becomes two), then a fine-tune.

    The rank of each layer comes from exactly one of ``keep`` (kept fraction of its weights),
    ``energy`` (kept fraction of Σσ²) or ``rank``. Layers where it would not save parameters,
    Linear layers tied to another layer and attention's ``out_proj`` are skipped and listed in
    the details. ``layers`` / ``exclude`` name Linear modules (or glob patterns).
    """

    kind = "svd"

    keep: float | None = Field(None, gt=0, lt=1)
    energy: float | None = Field(None, gt=0, le=1)
    rank: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_rule(self) -> SVD:
        given = [key for key in ("keep", "energy", "rank") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("choose the rank in exactly one way: keep (e.g. 0.3), energy "
                             f"(e.g. 0.95) or rank (e.g. 32); got {given or 'none'}")
        return self

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        before = sum(p.numel() for p in model.parameters())
        result = factorize_linears_result(model, rank=self.rank, energy=self.energy,
                                          keep=self.keep, layers=self.layers,
                                          exclude=self.exclude)
        _record(context, model, result, "rank", before)
        self._finetune(model, context)
        return model


class Tucker(_Factorize):
    """Tucker-2 of k×k Conv1d/2d/3d (each becomes 1×1 → k×k → 1×1), then a fine-tune.

    ``method: vbmf`` chooses each layer's ranks by VBMF (Kim et al. 2016), ``method: ratio`` (the
    default when ``keep`` is given) from ``keep`` (kept fraction of its weights). Grouped and
    1×1 convs, tied weights, and layers where it would not save parameters, are skipped and
    listed in the details.
    """

    kind = "tucker"

    method: Literal["vbmf", "ratio"] | None = None
    keep: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _keep_with_method(self) -> Tucker:
        if self.method == "ratio" and self.keep is None:
            raise ValueError("method 'ratio' needs keep, the fraction of weights to keep, "
                             "e.g. keep: 0.4")
        if self.method == "vbmf" and self.keep is not None:
            raise ValueError("keep is only used by method 'ratio': drop it or set "
                             "method: ratio")
        return self

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        before = sum(p.numel() for p in model.parameters())
        result = factorize_convs_result(model, method=self.method, keep=self.keep,
                                        layers=self.layers, exclude=self.exclude,
                                        seed=context.seed)
        _record(context, model, result, "ranks", before)
        self._finetune(model, context)
        return model
