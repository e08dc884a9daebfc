"""Coverage: what a method changed, per parameter, and why it left every other one alone.

Every method returns one (inside a :class:`MethodResult`), so "prune 50 %" can never end at 31 %
of the model without the report saying which tensors were left dense and why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from nnzip.core.weights import find_weights, not_a_weight_reason, unique_parameters

log = logging.getLogger(__name__)

NOT_SELECTED = "not selected (layers/exclude)"
UNCHANGED = "unchanged"


@dataclass(frozen=True)
class ParamRecord:
    """One parameter: its size, whether the method changed it, and what it did or why not."""

    name: str
    numel: int
    changed: bool
    note: str
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        entry = {"numel": self.numel, "changed": self.changed, "note": self.note}
        if self.aliases:
            entry["aliases"] = list(self.aliases)
        return entry


@dataclass(frozen=True)
class Coverage:
    """Per-parameter account of one method on one model (tied tensors once)."""

    method: str
    records: tuple[ParamRecord, ...]

    @property
    def total_params(self) -> int:
        return sum(record.numel for record in self.records)

    @property
    def changed_params(self) -> int:
        return sum(record.numel for record in self.records if record.changed)

    @property
    def changed_fraction(self) -> float:
        return self.changed_params / self.total_params if self.total_params else 0.0

    @property
    def changed(self) -> list[str]:
        return [record.name for record in self.records if record.changed]

    @property
    def skipped(self) -> dict[str, str]:
        """Weights the method was asked to change (or could have) but left, with the reason."""
        return {record.name: record.note for record in self.records
                if not record.changed and record.note not in (NOT_SELECTED, UNCHANGED)
                and not record.note.startswith(("1-D", "leading dimension"))}

    def to_dict(self) -> dict:
        return {"method": self.method, "changed_fraction": round(self.changed_fraction, 6),
                "changed_params": self.changed_params, "total_params": self.total_params,
                "skipped": self.skipped,
                "params": {record.name: record.to_dict() for record in self.records}}

    @classmethod
    def from_dict(cls, data: dict) -> Coverage:
        """The coverage :meth:`to_dict` wrote (what a stage records for the report)."""
        return cls(method=data["method"], records=tuple(
            ParamRecord(name, entry["numel"], entry["changed"], entry["note"],
                        tuple(entry.get("aliases", ())))
            for name, entry in data["params"].items()))

    def log_skipped(self, logger: logging.Logger = log) -> None:
        for name, reason in self.skipped.items():
            logger.warning("%s skipped %s: %s", self.method, name, reason)


def build_coverage(model: nn.Module, method: str, changed: Mapping[str, str],
                   skipped: Mapping[str, str] | None = None) -> Coverage:
    """The coverage of ``method``: ``changed`` maps weight names to what was done, ``skipped``
    maps the names it could not handle to why. Every other parameter gets its own reason.

    Names may be any name of a tied tensor; each tensor appears once, under its first name.
    """
    skipped = skipped or {}
    weights = {weight.name: weight for weight in find_weights(model)}
    canonical = {alias: weight.name for weight in weights.values() for alias in weight.aliases}
    changed = {canonical.get(name, name): note for name, note in changed.items()}
    skipped = {canonical.get(name, name): note for name, note in skipped.items()}
    records = []
    for name, param in unique_parameters(model).items():
        weight = weights.get(name)
        aliases = weight.aliases if weight else ()
        if name in changed:
            records.append(ParamRecord(name, param.numel(), True, changed[name], aliases))
        elif name in skipped:
            records.append(ParamRecord(name, param.numel(), False, skipped[name], aliases))
        else:
            note = NOT_SELECTED if weight else not_a_weight_reason(param)
            records.append(ParamRecord(name, param.numel(), False, note, aliases))
    return Coverage(method=method, records=tuple(records))


def changed_coverage(before: Mapping[str, torch.Tensor], model: nn.Module,
                     method: str) -> Coverage:
    """Coverage by comparison, for a method that records none: ``before`` holds the values of
    the model's parameters before it ran; a parameter counts as changed when its values or its
    shape changed, or when it is gone (a layer rebuilt or removed)."""
    after = unique_parameters(model)
    changed = {}
    for name, value in before.items():
        now = after.get(name)
        if now is None:
            changed[name] = "replaced or removed"
        elif now.shape != value.shape:
            changed[name] = f"shape {tuple(value.shape)} -> {tuple(now.shape)}"
        elif not torch.equal(now.detach(), value):
            changed[name] = "values changed"
    records = []
    for name, value in before.items():
        note = changed.get(name, UNCHANGED)
        records.append(ParamRecord(name, value.numel(), name in changed, note))
    return Coverage(method=method, records=tuple(records))


@dataclass
class MethodResult:
    """What every method returns: the model (eval mode), its coverage, per-layer details."""

    model: nn.Module
    coverage: Coverage
    details: dict = field(default_factory=dict)
