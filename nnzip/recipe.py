"""A recipe is data: an ordered list of named stages, read from YAML and validated up front.

```yaml
name: polish
description: two short fine-tunes
stages:
  - finetune: {epochs: 2, lr: 1.0e-3}
  - finetune:
      label: polish      # optional: the row name in the report (default: the stage kind)
      lr: 1.0e-4
```

Every problem (bad YAML, unknown stage, unknown or ill-typed option) is found before any work
starts, and the error names the recipe, the stage and the option.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from nnzip.distill.stages import Distill
from nnzip.errors import NnzipError
from nnzip.evaluate.score import ScoreWeights, score_weights
from nnzip.factorize.stages import SVD, Tucker
from nnzip.models.fold import FoldBatchNorm
from nnzip.prune.stages import Prune, Sensitivity
from nnzip.prune.structured import PruneChannels
from nnzip.prune.transformer import DropLayers, PruneHeads
from nnzip.quant.stages import QAT, MixedPrecision, Quantize
from nnzip.share.stages import Cluster, Encode, ProductQuantize
from nnzip.stage import Stage
from nnzip.train import Finetune

#: Every stage a recipe may name, by its kind. Method families add theirs here.
STAGES: dict[str, type[Stage]] = {cls.kind: cls for cls in (
    Finetune, Prune, PruneChannels, Sensitivity, FoldBatchNorm, Quantize, QAT, MixedPrecision,
    Distill, SVD, Tucker, Cluster, ProductQuantize, Encode, PruneHeads, DropLayers)}

_TOP_LEVEL_KEYS = ("name", "description", "stages", "score")
#: Largest recipe file read: built-in recipes are under 2 KB.
MAX_RECIPE_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a 447-byte recipe whose aliases nest
    nine levels deep expands to a billion strings (the "billion laughs"), and PyYAML has no
    expansion limit. A recipe never needs them (write each stage out)."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors and aliases (&name, *name) are not allowed in a "
                "recipe: write each value out", event.start_mark)
        return super().compose_node(parent, index)


@dataclass(frozen=True)
class RecipeStep:
    label: str
    stage: Stage


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[RecipeStep, ...]
    description: str = ""
    source: str = "<recipe>"
    #: The report's composite-score weights (top-level ``score:``); None: the defaults.
    score: ScoreWeights | None = None

    def check_task(self, task) -> Recipe:
        """Refuse, before any work, a stage that does not fit ``task`` (:mod:`nnzip.tasks`),
        naming the recipe, the stage and the task; returns the recipe."""
        for index, step in enumerate(self.steps, start=1):
            why = task.refusal(step.stage)
            if why is not None:
                shown = step.stage.kind if step.label == step.stage.kind else \
                    f"{step.label}, {step.stage.kind}"
                raise NnzipError(f"recipe {self.source}, stage {index} ({shown}) does not fit the "
                                 f"{task.name} task ({task.description}): {why}")
        return self

    def check_model(self, model) -> Recipe:
        """Refuse, before any work, a stage whose options cannot fit ``model`` (a layer name
        that matches nothing, a stage the architecture does not support), naming the recipe
        and the stage; returns the recipe. Stages after one that renames layers (a
        factorization, a new student) are checked when they run."""
        for index, step in enumerate(self.steps, start=1):
            try:
                step.stage.check(model)
            except NnzipError as error:
                raise NnzipError(f"recipe {self.source}, stage {index} "
                                 f"({self._shown(step)}): {error}") from None
            if not step.stage.keeps_layer_names():
                break
        return self

    @staticmethod
    def _shown(step: RecipeStep) -> str:
        return step.stage.kind if step.label == step.stage.kind else \
            f"{step.label}, {step.stage.kind}"

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "stages": [{"label": s.label, "kind": s.stage.kind,
                            "options": s.stage.model_dump()} for s in self.steps],
                **({"score": self.score.model_dump()} if self.score is not None else {})}


#: Stage families whose order matters (each order refused below was measured to fail: a
#: traceback or a refusal after the baseline and the earlier stages had run).
QUANTIZING = frozenset({"quantize", "qat", "mixed_precision"})
SHARING = frozenset({"cluster", "product_quantize"})
RESHAPING = frozenset({"prune_channels", "svd", "tucker", "prune_heads"})


def _quantizes_activations(stage: Stage) -> bool:
    return stage.kind in QUANTIZING and getattr(stage, "activation_bits", None) is not None


def _order_problem(earlier: list[Stage], stage: Stage) -> str | None:
    """Why ``stage`` cannot follow the ``earlier`` stages of a recipe, else None."""
    def first(kinds: frozenset) -> str | None:
        found = [(index, s.kind) for index, s in enumerate(earlier, 1) if s.kind in kinds]
        return f"stage {found[0][0]} ({found[0][1]})" if found else None

    if stage.kind in QUANTIZING and (done := first(QUANTIZING)):
        return (f"{done} already quantized the model: quantize once (one stage with all the "
                "options; qat fine-tunes a float model)")
    if stage.kind in QUANTIZING and (done := first(SHARING)):
        return (f"{done} already shares the weights through codebooks: quantize instead of "
                "sharing, or share alone (its codebook indices are the small integers)")
    if stage.kind in SHARING and (done := first(QUANTIZING)):
        return f"{done} already quantized the weights: share weights before quantizing, or instead"
    if stage.kind == "prune" and (done := first(QUANTIZING)):
        # Measured: quantize then prune 0.9 (LeNet-300-100, digits) zeroed the float weights,
        # reported 89 % fewer non-zeros, and left accuracy and bytes bit-identical, since the
        # quantized layers run from the integer weights they stored: a silent no-op.
        return (f"{done} already stored the integer weights the model runs on, so pruning's "
                "masks would not reach them: prune before quantizing (as Deep Compression does)")
    if stage.kind in RESHAPING and (done := first(QUANTIZING | SHARING)):
        return (f"it changes layer shapes, which {done} has already quantized or shared: put "
                f"{stage.kind} before it")
    stored = [s for s in earlier if s.kind in SHARING | {"encode"}]
    quantized = [s for s in earlier if _quantizes_activations(s)]
    if (stored and _quantizes_activations(stage)) or (quantized and stage.kind in
                                                      SHARING | {"encode"}):
        return ("the .nnz file that weight sharing and encode write stores integer weights, not "
                "quantized activations: quantize with activation_bits: null (weights only), or "
                "drop the sharing / encode stage and deploy the quantized model as ONNX")
    return None


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _nested_options(model_cls: type[BaseModel], path: tuple) -> list[str]:
    """The option names valid at ``path`` inside a stage (e.g. ``distill`` -> its fields)."""
    for part in path:
        field = model_cls.model_fields.get(str(part))
        nested = [arg for arg in typing.get_args(field.annotation) + (field.annotation,)
                  if isinstance(arg, type) and issubclass(arg, BaseModel)] if field else []
        if not nested:
            return []
        model_cls = nested[0]
    return sorted(model_cls.model_fields)


def _stage_error(source: str, index: int, kind: str, error: ValidationError) -> NnzipError:
    stage_cls = STAGES[kind]
    problems = []
    for item in error.errors():
        option = ".".join(str(part) for part in item["loc"]) or "(options)"
        if item["type"] == "extra_forbidden":
            valid = _nested_options(stage_cls, item["loc"][:-1])
            name = str(item["loc"][-1]) if item["loc"] else option
            problems.append(f"unknown option {option!r}{_suggest(name, valid)}; "
                            f"valid options: {', '.join(valid)}")
        else:
            got = "" if item["type"] == "value_error" or "input" not in item \
                or isinstance(item["input"], dict) else f", got {item['input']!r:.60}"
            problems.append(f"option {option!r}: {item['msg']}{got}")
    return NnzipError(f"recipe {source}, stage {index} ({kind}): " + "; ".join(problems))


def stages_list(data: object, what: str, source: str, keys: tuple[str, ...] | list[str],
                example: str) -> list:
    """The 'stages' list of a YAML document (a recipe, a search space), after refusing a
    document that is empty, not a mapping, has a key outside ``keys`` (with did-you-mean) or no
    stages — each in one line naming ``what`` and ``source`` and showing ``example``."""
    if data is None:
        raise NnzipError(f"{what} {source} is empty: write a 'stages' list, e.g. {example}")
    if isinstance(data, list):
        raise NnzipError(f"{what} {source} is a bare list but must be a mapping: put the "
                         f"stages under a 'stages' key, e.g. {example}")
    if not isinstance(data, dict):
        raise NnzipError(f"{what} {source} must be a mapping with a 'stages' list, "
                         f"got {type(data).__name__}")
    unknown = [str(key) for key in data if key not in keys]
    if unknown:
        raise NnzipError(f"{what} {source}: unknown key {unknown[0]!r}"
                         f"{_suggest(unknown[0], list(keys))}; valid keys: {', '.join(keys)}")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise NnzipError(f"{what} {source} needs a non-empty 'stages' list, e.g. {example}")
    return stages


def parse_recipe(data: object, source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as plain data (what YAML gives) and build its stages."""
    stages = stages_list(data, "recipe", source, _TOP_LEVEL_KEYS,
                         "'stages: [{finetune: {epochs: 2}}]'")
    steps: list[RecipeStep] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(stages, start=1):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise NnzipError(f"recipe {source}, stage {index}: write each stage as "
                             "'- KIND: {options}', with exactly one kind per list item")
        (kind, options), = entry.items()
        kind = str(kind)
        if kind not in STAGES:
            raise NnzipError(f"recipe {source}, stage {index}: unknown stage {kind!r}"
                             f"{_suggest(kind, list(STAGES))}; known stages: "
                             f"{', '.join(sorted(STAGES))}")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise NnzipError(f"recipe {source}, stage {index} ({kind}): options must be a "
                             f"mapping of names to values, got {type(options).__name__} "
                             f"{options!r:.60}; write '- {kind}: {{option: value}}' (or "
                             f"'- {kind}' for its defaults)")
        options = dict(options)
        if not all(isinstance(key, str) for key in options):
            raise NnzipError(f"recipe {source}, stage {index} ({kind}): options must be a "
                             "mapping of names to values")
        label = options.pop("label", kind)
        if not isinstance(label, str | int | float) or isinstance(label, bool) or not str(label):
            raise NnzipError(f"recipe {source}, stage {index} ({kind}): 'label' names the "
                             f"stage's row in the report: give a short text, got {label!r:.60}")
        label = str(label)
        try:
            stage = STAGES[kind].model_validate(options)
        except ValidationError as error:
            raise _stage_error(source, index, kind, error) from None
        why = _order_problem([step.stage for step in steps], stage)
        if why is not None:
            raise NnzipError(f"recipe {source}, stage {index} ({kind}) cannot come here: {why}")
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        steps.append(RecipeStep(label=label, stage=stage))
    name = str(data.get("name") or Path(source).stem)
    score = score_weights(data["score"], f"recipe {source}") if "score" in data else None
    return Recipe(name=name, steps=tuple(steps), description=str(data.get("description", "")),
                  source=source, score=score)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file."""
    path = Path(path)
    if path.is_dir():
        raise NnzipError(f"recipe {path} is a folder: pass a YAML recipe file (built-in recipes "
                         "are in the repository's recipes/ folder)")
    if not path.is_file():
        raise NnzipError(f"recipe file {path} not found: check the path (built-in recipes are in "
                         "the repository's recipes/ folder)")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise NnzipError(f"recipe {path} is {size:,} bytes, more than the {MAX_RECIPE_BYTES:,} "
                         "allowed: a recipe is a short list of stages; pass the right file")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_NoAliasLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise NnzipError(f"recipe {path} is not valid YAML{where}: {problem}; fix the syntax "
                         "(each stage is '- KIND: {options}')") from None
    except UnicodeDecodeError:
        raise NnzipError(f"recipe {path} is not a UTF-8 text file: pass a YAML recipe") from None
    return parse_recipe(data, source=str(path))
