"""The measured Pareto front of a search: which trials no other feasible trial beats, as files.

A point dominates another when it is at least as good in every objective and better in one
(each objective in its own direction). The front holds the feasible (every constraint met),
finished trials that no other feasible finished trial dominates; the rest are kept in the
table and plotted grey.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from nnzip.atomic import atomic_path, write_text


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


def front_table(points: list[dict], objectives: list[str]) -> str:
    """The trials as a Markdown table, front points first (validation split numbers, and the
    test split's where re-measured)."""
    columns = ["trial", "front", *objectives, "test accuracy", "test bytes", "stages"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    ordered = sorted(points, key=lambda p: (not p["on_front"], p["number"]))
    for point in ordered:
        test = point.get("test") or {}
        cells = [str(point["number"]), "yes" if point["on_front"] else
                 ("" if point["feasible"] else "infeasible"),
                 *(f"{point['values'][name]:.6g}" for name in objectives),
                 "" if test.get("accuracy") is None else f"{100 * test['accuracy']:.2f} %",
                 "" if test.get("size_bytes") is None else f"{test['size_bytes']:,}",
                 " → ".join(point["stages"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_front(points: list[dict], x: str, y: str, path: str | Path | None = None,
               ax=None):
    """Objective ``y`` against ``x`` for every finished trial: front points in colour and
    joined, dominated ones grey dots, infeasible ones grey crosses. Draws on ``ax`` (for a
    report to embed) or a new figure saved atomically to ``path``; returns the axes."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        figure, ax = plt.subplots(figsize=(6, 4), dpi=100)
    dominated = [p for p in points if p["feasible"] and not p["on_front"]]
    infeasible = [p for p in points if not p["feasible"]]
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["values"][x])
    for group, marker, label in ((dominated, "o", "dominated"),
                                 (infeasible, "x", "infeasible (a constraint missed)")):
        if group:
            ax.scatter([p["values"][x] for p in group], [p["values"][y] for p in group],
                       color="0.7", marker=marker, label=label, zorder=1)
    ax.plot([p["values"][x] for p in front], [p["values"][y] for p in front], "o-",
            color="tab:blue", label="Pareto front", zorder=2)
    for point in front:
        ax.annotate(str(point["number"]), (point["values"][x], point["values"][y]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if own and path is not None:
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        plt.close(figure)
    return ax


def write_front(out: Path, summary: dict) -> dict[str, Path]:
    """front.json, front.md and (with two or more objectives) front.png, each atomically."""
    paths = {"json": write_text(out / "front.json", json.dumps(summary, indent=2) + "\n")}
    objectives = [o["name"] for o in summary["objectives"]]
    points = summary["trials"]
    header = (f"# Search {summary['study']}: {len(summary['front'])} front point(s) of "
              f"{len(points)} finished trial(s)\n\nValues on the validation split"
              + (f"; constraints: {', '.join(summary['constraints'])}"
                 if summary["constraints"] else "") + ".\n\n")
    paths["md"] = write_text(out / "front.md", header + front_table(points, objectives))
    if len(objectives) >= 2 and points:
        paths["png"] = out / "front.png"
        plot_front(points, objectives[1], objectives[0], paths["png"])
    return paths
