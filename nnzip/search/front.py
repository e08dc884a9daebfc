"""The measured Pareto front of a search: which trials no other feasible trial beats, as files.

A point dominates another when it is at least as good in every objective and better in one
(each objective in its own direction). The front holds the feasible (every constraint met),
finished trials that no other feasible finished trial dominates; the rest are kept in the
table and plotted grey. The plot is :func:`nnzip.evaluate.figures.front_chart`; the search's
report is rendered by :mod:`nnzip.evaluate.report` like every other report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from nnzip.atomic import write_bytes, write_text


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for x, y, direction in zip(a, b, directions, strict=True):
        if direction == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        better = better or x < y
    return better


def pareto_indices(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points of ``values`` that no other point dominates (ties all kept)."""
    return [i for i, point in enumerate(values)
            if not any(dominates(other, point, directions)
                       for j, other in enumerate(values) if j != i)]


#: The keys a front.json must hold to be rendered (``nnzip report front.json``).
FRONT_KEYS = ("study", "objectives", "constraints", "trials_by_state", "front", "trials")
#: Largest front.json read (a search of a thousand trials writes about a megabyte).
MAX_FRONT_BYTES = 64 << 20


def front_report(summary: dict) -> dict:
    """The report of a search (what ``report.json`` / ``.md`` / ``.html`` render): the baseline
    and each front point re-measured on the test split as model rows (stage 'trial N'), and the
    study's trials under the ``search`` key, which the report draws as its first screen."""
    from nnzip.evaluate.metrics import REPORT_MODEL_KEYS
    from nnzip.evaluate.report import build_report

    def row(measured: dict | None) -> dict | None:
        if not isinstance(measured, dict) or any(k not in measured for k in REPORT_MODEL_KEYS):
            return None  # not measured (interrupted, held-out off, another machine's trial)
        return {key: measured[key] for key in REPORT_MODEL_KEYS}

    rows = [row(summary.get("baseline"))]
    if rows[0] is not None:
        rows += [row(t.get("test")) for t in sorted(summary["trials"], key=lambda t: t["number"])
                 if t["on_front"]]
    search = {key: value for key, value in summary.items()
              if key not in ("points", "machine", "data", "baseline")}
    search["trials"] = [{k: v for k, v in t.items() if k != "test"} for t in summary["trials"]]
    extra = {"search": search}
    if isinstance(summary.get("data"), dict):
        extra["data"] = summary["data"]
    return build_report([r for r in rows if r is not None], summary.get("machine") or {}, extra)


def load_front(path: str | Path) -> dict:
    """Read a search's front.json (or the search folder holding one) and check its keys."""
    from nnzip.bounded import load_json_file
    from nnzip.errors import NnzipError

    fix = "rerun the same `nnzip search` command to rewrite it"
    path, summary = load_json_file(path, "front.json", MAX_FRONT_BYTES, "search front", fix,
                                   "pass the front.json that `nnzip search` wrote")
    missing = [key for key in FRONT_KEYS if not isinstance(summary, dict) or key not in summary]
    if missing:
        raise NnzipError(f"{path} is not a search's front.json (it lacks {missing}): pass the "
                         f"front.json that `nnzip search` wrote, or {fix}")
    return summary


def write_front(out: Path, summary: dict) -> dict[str, Path]:
    """front.json, front.md, front.png (the plot of every trial) and the search's report
    (report.json, .md, .html: :func:`front_report`), each file atomically."""
    from nnzip.evaluate.figures import front_chart
    from nnzip.evaluate.report import search_markdown, write_report

    text = json.dumps(summary, indent=2, default=str) + "\n"
    paths = {"json": write_text(out / "front.json", text)}
    report = front_report(summary)
    header = f"# Search {summary['study']}\n\n"
    paths["md"] = write_text(out / "front.md", header + "\n".join(search_markdown(report)))
    chart = front_chart(summary["trials"], summary["objectives"])
    if chart is not None:
        paths["png"] = write_bytes(out / "front.png", chart)
    paths.update({f"report_{kind}": path for kind, path in write_report(report, out).items()})
    return paths
