"""A search space: the recipe stages to consider, the ranges of their options, the budget.

```yaml
name: search-lenet5
finetune_epochs: 2              # the default fine-tune budget of every stage (compress's)
fidelity: {short_fraction: 0.25, slack_points: 1.0}   # optional: two rungs (see runner)
stages:                         # in this order; each entry is a recipe stage ...
  - prune:
      sparsity: {low: 0.80, high: 0.97}     # a float range (log: true, step: 0.01 allowed)
      schedule: gradual                     # a fixed value, as in a recipe
      finetune_epochs: {choices: [2, 4]}    # a choice
  - one_of:                     # ... or a choice between stages at this place
      - cluster: {linear_bits: {low: 3, high: 6}, conv_bits: 8}
      - quantize: {weight_bits: {low: 4, high: 8}, activation_bits: null}
  - encode: {optional: true}    # optional: the search decides whether to include it
```

A trial is a sampled :class:`nnzip.recipe.Recipe`, built by :func:`nnzip.recipe.parse_recipe`
exactly as a user's recipe is, so every option is validated by the stage's own config object
and every order the recipe refuses is refused here too. :func:`load_space` checks a space before
any work: its own keys (pydantic), every option name of every stage, and the order of every
combination of stages the space allows (each built with its options' first values).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nnzip.errors import NnzipError
from nnzip.recipe import (
    MAX_RECIPE_BYTES,
    STAGES,
    Recipe,
    _NoAliasLoader,
    _suggest,
    parse_recipe,
    stages_list,
)

_RANGE_KEYS = frozenset({"low", "high", "log", "step"})


class Range(BaseModel):
    """A number drawn from [low, high]: an int when both ends are ints, else a float."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float | int
    high: float | int
    log: bool = False
    step: float | int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"needs finite low <= high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give either log or step, not both (Optuna samples one or the other)")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(value, int) and not isinstance(value, bool)
                   for value in (self.low, self.high, self.step or 1))

    def sample(self, trial, name: str) -> float | int:
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step,
                                   log=self.log)

    def first(self) -> float | int:
        return int(self.low) if self.is_int else float(self.low)


class Choice(BaseModel):
    """One of a list of values (numbers, text, booleans or null)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: list[Any] = Field(min_length=1)

    def sample(self, trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def first(self) -> Any:
        return self.choices[0]


class StageSpace(BaseModel):
    """One stage of the space: its kind, fixed options and searched options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    fixed: dict[str, Any] = Field(default_factory=dict)
    searched: dict[str, Range | Choice] = Field(default_factory=dict)
    optional: bool = False

    def options(self, trial, prefix: str) -> dict[str, Any]:
        return {**self.fixed, **{field: spec.sample(trial, f"{prefix}.{field}")
                                 for field, spec in self.searched.items()}}

    def first_options(self) -> dict[str, Any]:
        return {**self.fixed, **{field: spec.first() for field, spec in self.searched.items()}}


class Slot(BaseModel):
    """A place in the recipe: one stage, or a choice between stages (``one_of``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alternatives: list[StageSpace] = Field(min_length=1)
    optional: bool = False

    @property
    def name(self) -> str:
        return "|".join(stage.kind for stage in self.alternatives)


class Fidelity(BaseModel):
    """The short first rung: ``short_fraction`` of every fine-tune budget; a trial goes on to the
    full budget unless it misses an accuracy constraint by more than ``slack_points``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    short_fraction: float = Field(0.25, gt=0, le=1)
    slack_points: float = Field(1.0, ge=0, allow_inf_nan=False)


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "search"
    description: str = ""
    finetune_epochs: int = Field(3, ge=0, le=100_000)
    fidelity: Fidelity | None = None
    slots: list[Slot] = Field(min_length=1)
    source: str = "<space>"

    def sample(self, trial) -> Recipe:
        """The recipe of ``trial``: Optuna parameters named ``slot<i>.<kind>.<option>``."""
        stages = []
        for index, slot in enumerate(self.slots, start=1):
            kinds = [stage.kind for stage in slot.alternatives]
            choices = kinds + (["none"] if slot.optional else [])
            chosen = (choices[0] if len(choices) == 1
                      else trial.suggest_categorical(f"slot{index}", choices))
            if chosen == "none":
                continue
            stage = slot.alternatives[kinds.index(chosen)]
            stages.append({stage.kind: stage.options(trial, f"slot{index}.{stage.kind}")})
        if not stages:
            raise NnzipError(f"search space {self.source}: this trial chose no stage at all "
                             "(every slot is optional): make one stage required")
        return parse_recipe({"name": f"{self.name}-trial", "description": self.description,
                             "stages": stages}, source=f"{self.source} (sampled)")

    def combinations(self) -> list[list[StageSpace]]:
        """Every sequence of stages the space allows (one alternative or none per slot)."""
        per_slot = [list(slot.alternatives) + ([None] if slot.optional else [])
                    for slot in self.slots]
        return [[stage for stage in combo if stage is not None]
                for combo in itertools.product(*per_slot)]

    def check(self) -> SearchSpace:
        """Build every combination of stages with its options' first values, so a misspelt
        option, an out-of-range fixed value or an order the recipe refuses fails before any
        work, with the recipe's own message."""
        for combo in self.combinations()[:256]:  # a space of many optional slots: the first 256
            if combo:
                parse_recipe({"stages": [{s.kind: s.first_options()} for s in combo]},
                             source=f"search space {self.source}")
        return self


def _is_range(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and (
        set(value) <= _RANGE_KEYS and {"low", "high"} <= set(value) or set(value) == {"choices"})


def _stage_space(kind: object, options: object, where: str) -> StageSpace:
    kind = str(kind)
    if kind not in STAGES:
        raise NnzipError(f"{where}: unknown stage {kind!r}{_suggest(kind, list(STAGES))}; known "
                         f"stages: {', '.join(sorted(STAGES))}")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise NnzipError(f"{where} ({kind}): options must be a mapping, got "
                         f"{type(options).__name__}; write '- {kind}: {{option: value}}'")
    options = dict(options)
    optional = options.pop("optional", False)
    if not isinstance(optional, bool):
        raise NnzipError(f"{where} ({kind}): 'optional' must be true or false, got {optional!r}")
    fixed, searched = {}, {}
    for field, value in options.items():
        if not _is_range(value):
            fixed[field] = value
            continue
        try:
            searched[field] = Choice(**value) if "choices" in value else Range(**value)
        except ValidationError as error:
            problem = "; ".join(item["msg"].removeprefix("Value error, ")
                                for item in error.errors())
            raise NnzipError(f"{where} ({kind}), option {field!r}: {problem}") from None
    return StageSpace(kind=kind, fixed=fixed, searched=searched, optional=optional)


def _slot(entry: object, index: int, source: str) -> Slot:
    where = f"search space {source}, stage {index}"
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise NnzipError(f"{where}: write each entry as '- KIND: {{options}}' or "
                         "'- one_of: [...]', with exactly one key per list item")
    (kind, options), = entry.items()
    if kind != "one_of":
        stage = _stage_space(kind, options, where)
        return Slot(alternatives=[stage], optional=stage.optional)
    if not isinstance(options, list) or len(options) < 2:
        raise NnzipError(f"{where} (one_of): give a list of at least two stages to choose from")
    alternatives = []
    for position, alternative in enumerate(options, start=1):
        if isinstance(alternative, str):
            alternative = {alternative: {}}
        if not isinstance(alternative, dict) or len(alternative) != 1:
            raise NnzipError(f"{where} (one_of), choice {position}: write '- KIND: {{options}}'")
        (alt_kind, alt_options), = alternative.items()
        alternatives.append(_stage_space(alt_kind, alt_options, f"{where} (one_of)"))
    return Slot(alternatives=alternatives,
                optional=any(stage.optional for stage in alternatives))


_TOP_LEVEL = ("name", "description", "finetune_epochs", "fidelity", "stages")


def parse_space(data: object, source: str = "<space>") -> SearchSpace:
    """Validate a search space given as plain data (what YAML gives)."""
    stages = stages_list(data, "search space", source, _TOP_LEVEL,
                         "'stages: [{prune: {sparsity: {low: 0.5, high: 0.9}}}]'")
    slots = [_slot(entry, index, source) for index, entry in enumerate(stages, start=1)]
    fields = {key: data[key] for key in ("name", "description", "finetune_epochs", "fidelity")
              if key in data}
    fields.setdefault("name", Path(source).stem)
    try:
        space = SearchSpace(slots=slots, source=source, **fields)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"])
            got = "" if isinstance(item.get("input"), dict) else f", got {item.get('input')!r}"
            problems.append(f"{field!r}: {item['msg']}{got}")
        raise NnzipError(f"search space {source}: " + "; ".join(problems)) from None
    return space.check()


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a YAML search space (the recipe loader's safety: a size cap, no YAML
    anchors or aliases)."""
    path = Path(path)
    if not path.is_file():
        raise NnzipError(f"search space file {path} not found: pass a YAML file (examples: "
                         "recipes/search-*.yaml)")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise NnzipError(f"search space {path} is {size:,} bytes, more than the "
                         f"{MAX_RECIPE_BYTES:,} allowed: pass the right file")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_NoAliasLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise NnzipError(f"search space {path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise NnzipError(f"search space {path} is not a UTF-8 text file") from None
    return parse_space(data, source=str(path))


#: What a trial's budget fields are called: ``finetune_epochs`` on every fine-tuned stage,
#: ``epochs`` on the finetune stage.
BUDGET_FIELDS = {"finetune_epochs": None, "epochs": "finetune"}


def short_budget(recipe: Recipe, fraction: float) -> Recipe:
    """``recipe`` with every explicit fine-tune budget cut to ``fraction`` (at least one epoch
    where it was positive): the first rung of a trial."""
    stages = []
    for step in recipe.steps:
        options = step.stage.model_dump(exclude_defaults=True)
        for field, kind in BUDGET_FIELDS.items():
            value = options.get(field)
            if (kind is None or step.stage.kind == kind) and isinstance(value, int) and value > 0:
                options[field] = max(1, math.ceil(value * fraction))
        stages.append({step.stage.kind: {"label": step.label, **options}})
    return parse_recipe({"name": recipe.name, "description": recipe.description,
                         "stages": stages}, source=recipe.source)


def short_epochs(epochs: int, fraction: float) -> int:
    return max(1, math.ceil(epochs * fraction)) if epochs > 0 else 0


def recipe_yaml(recipe: Recipe, header: str = "") -> str:
    """``recipe`` as a YAML recipe file that :func:`nnzip.recipe.load_recipe` reads back to the
    same stages (options that differ from the defaults only)."""
    stages = []
    for step in recipe.steps:
        options = step.stage.model_dump(mode="json", exclude_defaults=True)
        if step.label != step.stage.kind and "#" not in step.label:
            options = {"label": step.label, **options}
        stages.append({step.stage.kind: options})
    body = yaml.safe_dump({"name": recipe.name, "description": recipe.description,
                           "stages": stages}, sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + body


__all__ = ["Choice", "Fidelity", "Range", "SearchSpace", "Slot", "StageSpace",
           "load_space", "parse_space", "recipe_yaml", "short_budget", "short_epochs"]
