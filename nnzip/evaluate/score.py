"""The composite score: one number to rank compressed models by, against the report's baseline.

Every ingredient is turned into a *gain* in one common unit, positive when the model is better
than the baseline, and the score is their weighted mean::

    score = Σ wᵢ·gᵢ / Σ wᵢ        (over the ingredients both rows have)

    g_accuracy   = 100·(metric − baseline metric)            points (accuracy, STS Spearman);
                 = −100·ln(perplexity / baseline perplexity)  ≈ −% change, for a language model
    g_size       = log2(baseline size_bytes / size_bytes)     doublings: 4× smaller = +2
    g_latency    = mean over batch sizes of log2(baseline p50 / p50)
    g_energy     = log2(baseline joules / joules)             energy_j (RAPL), else
                                                               energy_estimate_j, the same
                                                               source in both rows
    g_robustness = 100·mean(accuracy under each noise / FGSM probe − the baseline's)   points
    g_shift      = 100·(shift mean − baseline shift mean)     points

So one percentage point of accuracy weighs as much as halving the size, the latency or the
energy, before the weights; the default weights (:class:`ScoreWeights`) count accuracy three
times. The baseline scores 0; higher is better. A cost is a log-ratio so that 2× and ½× are
symmetric and ten 10 % savings do not add up to a 100 % one. An ingredient a row or the
baseline lacks (no energy on a VM without an estimate, no shift suite) is left out and the
remaining weights renormalized: :func:`score_rows` leaves out an ingredient any row lacks, so
every row of a report is scored on the same ingredients, and the report lists them.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nnzip.errors import NnzipError

INGREDIENTS = ("accuracy", "size", "latency", "energy", "robustness", "shift")


class ScoreWeights(BaseModel):
    """How much each ingredient of the composite score counts (relative; renormalized over the
    ingredients that were measured). Set in a recipe (``score: {accuracy: 3, size: 1}``) or on
    the CLI (``--score-weights accuracy=3,size=1``); a weight of 0 leaves an ingredient out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accuracy: float = Field(3.0, ge=0.0, allow_inf_nan=False)
    size: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    latency: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    energy: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    robustness: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    shift: float = Field(1.0, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_weight(self) -> ScoreWeights:
        if not any(getattr(self, name) > 0 for name in INGREDIENTS):
            raise ValueError("every weight is 0: give at least one ingredient a positive weight")
        return self


def _suggest(word: str) -> str:
    from nnzip.recipe import _suggest as suggest

    return suggest(word, list(INGREDIENTS))


def _validation_error(error: ValidationError, source: str) -> NnzipError:
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown ingredient {name!r}{_suggest(name)}")
        elif name:
            problems.append(f"weight {name!r}: {item['msg']}, got {item.get('input')!r:.40}")
        else:
            problems.append(item["msg"].removeprefix("Value error, "))
    where = f" ({source})" if source else ""
    return NnzipError(f"score weights{where}: {'; '.join(problems)}; valid ingredients: "
                      f"{', '.join(INGREDIENTS)} (non-negative numbers)")


def score_weights(data: object, source: str = "") -> ScoreWeights:
    """Weights from a mapping (a recipe's ``score:`` key), refused with an error naming the bad
    ingredient (with did-you-mean) and listing the valid ones."""
    if data is None:
        return ScoreWeights()
    if not isinstance(data, dict):
        where = f" ({source})" if source else ""
        raise NnzipError(f"score weights{where} must be a mapping of ingredient to weight, "
                         f"got {type(data).__name__}: write e.g. 'score: {{accuracy: 3, "
                         "size: 1}'")
    try:
        return ScoreWeights.model_validate(data)
    except ValidationError as error:
        raise _validation_error(error, source) from None


def parse_score_weights(text: str) -> ScoreWeights:
    """``accuracy=3,size=1,...`` (the CLI's ``--score-weights``) as weights; the ones not named
    keep their defaults."""
    weights: dict[str, float] = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        name, equals, value = part.partition("=")
        name = name.strip()
        if not equals:
            raise NnzipError(f"--score-weights {text!r}: {part!r} is not NAME=WEIGHT: write e.g. "
                             "accuracy=3,size=1")
        if name not in INGREDIENTS:
            raise NnzipError(f"--score-weights: unknown ingredient {name!r}{_suggest(name)}; "
                             f"valid ingredients: {', '.join(INGREDIENTS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise NnzipError(f"--score-weights: the weight of {name!r} is {value.strip()!r}, "
                             "not a number: write e.g. accuracy=3") from None
    if not weights:
        raise NnzipError("--score-weights is empty: write e.g. accuracy=3,size=1")
    try:
        return ScoreWeights.model_validate(weights)
    except ValidationError as error:
        raise _validation_error(error, f"--score-weights {text!r}") from None


def _log2_gain(base: float | None, value: float | None) -> float | None:
    if base is None or value is None or base <= 0 or value <= 0:
        return None
    return math.log2(base / value)


def _accuracy_gain(row: dict, baseline: dict) -> float | None:
    if row.get("task") == "lm" or (row.get("accuracy") is None
                                   and row.get("perplexity") is not None):
        base, value = baseline.get("perplexity"), row.get("perplexity")
        if base is None or value is None or base <= 0 or value <= 0:
            return None
        return -100.0 * math.log(value / base)
    key = "spearman" if row.get("task") == "embed" or row.get("accuracy") is None else "accuracy"
    if row.get(key) is None or baseline.get(key) is None:
        return None
    return 100.0 * (row[key] - baseline[key])


def _latency_gain(row: dict, baseline: dict) -> float | None:
    gains = []
    for batch, timing in (row.get("latency_ms") or {}).items():
        base = ((baseline.get("latency_ms") or {}).get(batch) or {}).get("p50")
        gain = _log2_gain(base, (timing or {}).get("p50"))
        if gain is not None:
            gains.append(gain)
    return sum(gains) / len(gains) if gains else None


def _energy_gain(row: dict, baseline: dict) -> float | None:
    for key in ("energy_j", "energy_estimate_j"):  # a measurement first, the same in both rows
        gain = _log2_gain(baseline.get(key), row.get(key))
        if gain is not None:
            return gain
    return None


def _robustness_gain(row: dict, baseline: dict) -> float | None:
    differences = []
    ours, theirs = row.get("robustness") or {}, baseline.get("robustness") or {}
    for probe in ("gaussian", "fgsm"):
        for level, value in (ours.get(probe) or {}).items():
            base = (theirs.get(probe) or {}).get(level)
            if value is not None and base is not None:
                differences.append(value - base)
    return 100.0 * sum(differences) / len(differences) if differences else None


def _shift_gain(row: dict, baseline: dict) -> float | None:
    ours, theirs = row.get("shift"), baseline.get("shift")
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return None
    if ours.get("mean") is None or theirs.get("mean") is None:
        return None
    return 100.0 * (ours["mean"] - theirs["mean"])


_GAINS = {"accuracy": _accuracy_gain, "size": lambda r, b: _log2_gain(b.get("size_bytes"),
                                                                      r.get("size_bytes")),
          "latency": _latency_gain, "energy": _energy_gain, "robustness": _robustness_gain,
          "shift": _shift_gain}


def score_gains(row: dict, baseline: dict) -> dict[str, float]:
    """Each ingredient's gain of ``row`` over ``baseline`` (see the module doc), for the
    ingredients both rows have."""
    gains = {name: gain(row, baseline) for name, gain in _GAINS.items()}
    return {name: value for name, value in gains.items() if value is not None}


def used_weights(weights: ScoreWeights, available: set[str] | list[str]) -> dict[str, float]:
    """The weights of the ``available`` ingredients with a positive weight, summing to 1."""
    chosen = {name: getattr(weights, name) for name in INGREDIENTS
              if name in available and getattr(weights, name) > 0}
    total = sum(chosen.values())
    return {name: weight / total for name, weight in chosen.items()} if total else {}


def composite_score(row: dict, baseline: dict, weights: ScoreWeights | None = None,
                    ingredients: set[str] | None = None) -> float | None:
    """Σ wᵢ·gᵢ / Σ wᵢ over the ingredients both rows have (and in ``ingredients``, if given);
    None when no weighted ingredient is available. Higher is better; the baseline scores 0."""
    gains = score_gains(row, baseline)
    available = set(gains) if ingredients is None else set(gains) & set(ingredients)
    used = used_weights(weights or ScoreWeights(), available)
    if not used:
        return None
    return sum(weight * gains[name] for name, weight in used.items())


def score_rows(models: list[dict], baseline: dict,
               weights: ScoreWeights | None = None) -> tuple[list[float | None], dict]:
    """Every row's score against ``baseline`` on the ingredients *all* rows have (so they rank
    on the same terms), and a summary for the report: the weights given, those used after
    renormalization, and the ingredients left out."""
    weights = weights or ScoreWeights()
    shared = set(INGREDIENTS)
    for model in models:
        shared &= set(score_gains(model, baseline))
    scores = [composite_score(model, baseline, weights, shared) for model in models]
    used = used_weights(weights, shared)
    left_out = [name for name in INGREDIENTS if name not in used and getattr(weights, name) > 0]
    return scores, {"weights": weights.model_dump(), "used": used, "left_out": left_out}


def score_line(summary: dict) -> str:
    """One sentence for the report: what the score weighed and what it left out."""
    used = ", ".join(f"{name} {weight:.2f}" for name, weight in summary.get("used", {}).items())
    left_out = ", ".join(summary.get("left_out") or [])
    return (f"Score = Σ wᵢ·gᵢ / Σ wᵢ against the baseline (gains in points for accuracy, "
            f"robustness and shift, in doublings for size, latency and energy; higher is "
            f"better, the baseline is 0); weights used: {used or 'none'}"
            + (f"; left out (not measured for every row): {left_out}" if left_out else ""))
