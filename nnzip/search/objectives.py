"""Objectives and constraints of a search, named by the report's row keys.

A trial's numbers come from the last row of its ``compress`` report (the model after the last
stage) and the first (the baseline):

==================  =====================================================  =========
name                value                                                  direction
==================  =====================================================  =========
``accuracy``        the task's accuracy (fraction)                          maximize
``accuracy_drop``   ``100 * (baseline accuracy - accuracy)``, in points     minimize
``bytes``           ``size_bytes``: bytes of the real artifact (e.g. .nnz)  minimize
``latency``         p50 latency in ms at batch 1 (``latency@64``: batch 64)  minimize
``flops``           ``flops`` per sample                                   minimize
``score``           the composite score against the baseline                maximize
                    (:mod:`nnzip.evaluate.score`, default weights; latency
                    counts only when an objective or constraint times it)
other row keys      e.g. ``perplexity``, ``spearman``, ``peak_memory_bytes``  inferred
==================  =====================================================  =========

A constraint is ``NAME<=VALUE`` or ``NAME>=VALUE`` (``accuracy_drop<=0.5``); each trial gives
Optuna ``value - limit`` (``Trial.set_constraint``: feasible when <= 0), so the samplers steer
away from infeasible trials, and the front holds feasible ones only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nnzip.errors import NnzipError
from nnzip.recipe import _suggest

#: Keys whose larger value is better; every other metric is minimized.
MAXIMIZED = frozenset({"accuracy", "top5", "agreement", "spearman", "fidelity",
                       "neighbour_overlap", "compression_ratio", "throughput_per_s", "score"})
#: Numeric row keys a search may use besides the named ones.
ROW_KEYS = ("params", "nonzero_params", "size_bytes", "compression_ratio", "flops", "macs",
            "throughput_per_s", "peak_memory_bytes", "accuracy", "top5", "agreement",
            "perplexity", "loss", "kl_to_reference", "spearman", "fidelity",
            "neighbour_overlap", "energy_j")
NAMED = ("accuracy", "accuracy_drop", "bytes", "latency", "flops", "score")
_LATENCY = re.compile(r"latency(?:@(\d+))?")


@dataclass(frozen=True)
class Metric:
    """One number of a trial: its name as the user wrote it and how to read it from a row."""

    name: str

    @property
    def direction(self) -> str:
        return "maximize" if self.key in MAXIMIZED else "minimize"

    @property
    def key(self) -> str:
        return {"bytes": "size_bytes"}.get(self.name, self.name)

    @property
    def latency_batch(self) -> int | None:
        match = _LATENCY.fullmatch(self.name)
        return int(match.group(1) or 1) if match else None

    def value(self, row: dict, baseline: dict) -> float:
        """This metric of ``row`` (the compressed model) against ``baseline``."""
        if self.name == "score":
            from nnzip.evaluate.score import composite_score

            value = composite_score(row, baseline)
        elif self.name == "accuracy_drop":
            value = None if row.get("accuracy") is None or baseline.get("accuracy") is None \
                else 100.0 * (baseline["accuracy"] - row["accuracy"])
        elif self.latency_batch is not None:
            latency = (row.get("latency_ms") or {}).get(f"batch{self.latency_batch}") or {}
            value = latency.get("p50")
        else:
            value = row.get(self.key)
        if value is None:
            raise NnzipError(f"the report has no {self.name!r} for this model (e.g. the task "
                             "does not measure it, or timing is off): choose another objective")
        return float(value)


def parse_metric(name: str) -> Metric:
    """A metric by name, refused with a did-you-mean when the report has no such number."""
    name = name.strip()
    known = [*NAMED, *ROW_KEYS]
    if name in known or (match := _LATENCY.fullmatch(name)) and int(match.group(1) or 1) >= 1:
        return Metric(name)
    raise NnzipError(f"unknown objective or constraint {name!r}{_suggest(name, known)}: use "
                     f"{', '.join(NAMED)} (latency@N for batch N) or a report key "
                     f"({', '.join(ROW_KEYS)})")


def parse_objectives(names: list[str]) -> list[Metric]:
    if not names:
        raise NnzipError("give at least one objective, e.g. --objectives accuracy bytes")
    metrics = [parse_metric(name) for name in names]
    seen = [metric.name for metric in metrics]
    if len(set(seen)) != len(seen):
        raise NnzipError(f"objectives {seen} name one twice: give each once")
    return metrics


@dataclass(frozen=True)
class Constraint:
    """``metric <= limit`` (``upper``) or ``metric >= limit``."""

    metric: Metric
    limit: float
    upper: bool

    @property
    def text(self) -> str:
        return f"{self.metric.name}{'<=' if self.upper else '>='}{self.limit:g}"

    def violation(self, row: dict, baseline: dict) -> float:
        """<= 0 when met (Optuna's convention); how far past the limit otherwise."""
        value = self.metric.value(row, baseline)
        return value - self.limit if self.upper else self.limit - value


_CONSTRAINT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_@]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*")


def parse_constraint(text: str) -> Constraint:
    match = _CONSTRAINT.fullmatch(text)
    if not match:
        raise NnzipError(f"constraint {text!r} is not NAME<=VALUE or NAME>=VALUE: write e.g. "
                         "\"accuracy_drop<=0.5\" (points) or \"bytes<=40000\"")
    try:
        limit = float(match.group(3))
    except ValueError:
        raise NnzipError(f"constraint {text!r}: {match.group(3)!r} is not a number") from None
    return Constraint(metric=parse_metric(match.group(1)), limit=limit,
                      upper=match.group(2) == "<=")


def latency_batches(metrics: list[Metric]) -> tuple[int, ...]:
    """The batch sizes whose latency a search must time (none: timing is skipped)."""
    return tuple(sorted({m.latency_batch for m in metrics if m.latency_batch is not None}))
