"""The contract that ties the methods together: a stage turns a model into a model.

A stage is a small pydantic config (its options, validated up front) with one method,
``apply(model, context) -> model``. The methods themselves are plain functions in their family's
module; a stage is the thin recipe-facing wrapper around them (see STYLE.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from nnzip.data.splits import DataSplits


@dataclass
class Context:
    """What a stage may use besides the model.

    ``reference`` is the model before compression; ``teacher`` defaults to it, so distillation can
    be the fine-tune loss of any stage. ``finetune_epochs`` is the default budget a stage spends on
    recovering accuracy when its own options do not say otherwise.
    """

    data: DataSplits
    reference: nn.Module | None = None
    teacher: nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    finetune_epochs: int = 3
    seed: int = 0
    workdir: Path | None = None
    progress: bool = True
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("nnzip"))
    #: What the running stage wants in the report (e.g. per-layer sparsity); the pipeline stores
    #: it under the stage's entry in ``report["stages"]`` and empties it before the next stage.
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.teacher is None:
            self.teacher = self.reference

    def record(self, key: str, value: object) -> None:
        """Keep a JSON-ready ``value`` for the report of the stage that is running."""
        self.details[key] = value


class Stage(BaseModel):
    """Base of every recipe stage: options as validated fields, behaviour in :meth:`apply`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The name this stage has in a recipe (``- finetune: {...}``).
    kind: ClassVar[str] = ""
    #: Old option names still read, with a warning naming the new one: ``{old: new}``.
    renamed: ClassVar[dict[str, str]] = {}
    #: Whether :meth:`apply` records ``context.record("coverage", ...)``; the others get a
    #: coverage by comparing the parameters before and after.
    records_coverage: ClassVar[bool] = False

    #: Options whose values (or, for a mapping, whose keys) name layers or parameters of the
    #: model: :meth:`check` refuses one that matches nothing, before any work.
    layer_options: ClassVar[tuple[str, ...]] = ("layers", "exclude", "layer_bits",
                                                "smoothquant_layers")

    @model_validator(mode="before")
    @classmethod
    def _renamed_options(cls, values: object) -> object:
        """Read an option under its old name (recipes written before it was renamed)."""
        if not isinstance(values, dict):
            return values
        for old, new in cls.renamed.items():
            if old in values:
                if new in values:
                    raise ValueError(f"give {new!r} only: {old!r} is its old name")
                logging.getLogger("nnzip").warning("%s: option %r is now called %r", cls.kind,
                                                   old, new)
                values = {(new if key == old else key): value for key, value in values.items()}
        return values

    def check(self, model: nn.Module) -> None:
        """Refuse, before any work, options that cannot fit ``model`` (the model the recipe
        starts from): a layer name that matches nothing, a stage the architecture does not
        support. A stage with more to check extends this; it must stay cheap (no data, no
        forward pass)."""
        from nnzip.core.select import check_layer_names

        for option in self.layer_options:
            names = getattr(self, option, None)
            if names:
                check_layer_names(model, option, list(names))

    def keeps_layer_names(self) -> bool:
        """Whether the model after this stage has the same layer names (a factorization or a
        new student does not): later stages are checked against the first model only up to
        the first stage that changes them."""
        return True

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        raise NotImplementedError
