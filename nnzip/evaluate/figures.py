"""Report charts as PNG bytes, drawn with matplotlib's Agg canvas.

Figures are built with :class:`matplotlib.figure.Figure` directly rather than ``pyplot``: no
global figure registry, so nothing leaks between calls and no display is ever needed. Each model
keeps one colour across every chart.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nnzip.evaluate.tables import (
    NA,
    TASK_METRIC,
    baseline_index,
    batch_keys,
    fmt_count,
    p50,
    report_task,
    short_labels,
)

Getter = Callable[[dict], float | None]


def model_colors(count: int) -> list[tuple[float, ...]]:
    palette = colormaps["tab10"].colors
    return [palette[index % len(palette)] for index in range(count)]


def to_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes (no software tag, so the bytes carry no links)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.clear()
    return buffer.getvalue()


def _byte_unit(values: list[float]) -> tuple[float, str]:
    largest = max(values)
    return (2**20, "MiB") if largest >= 2**20 else (2**10, "KiB")


def _latency_getter(key: str) -> Getter:
    return lambda m: ((m.get("latency_ms") or {}).get(key) or {}).get("p50")


def metric_specs(models: list[dict]) -> list[tuple[str, str, Getter, str]]:
    """(title, y label, getter, kind) for each per-metric bar chart; kind picks the scaling."""
    specs: list[tuple[str, str, Getter, str]] = [
        ("Parameters", "count", lambda m: m.get("params"), "count"),
        ("Non-zero parameters", "count", lambda m: m.get("nonzero_params"), "count"),
        ("Artifact size", "bytes", lambda m: m.get("size_bytes"), "bytes"),
        ("Compute per sample", "MFLOPs",
         lambda m: None if m.get("flops") is None else m["flops"] / 1e6, "plain"),
    ]
    keys = batch_keys(models)
    for key in keys:
        specs.append((f"Latency p50, batch {key.removeprefix('batch')}", "ms",
                      _latency_getter(key), "plain"))
    largest = keys[-1].removeprefix("batch") if keys else "?"
    specs += [
        (f"Throughput at batch {largest}", "samples / s", lambda m: m.get("throughput_per_s"),
         "count"),
        ("Peak inference memory", "bytes", lambda m: m.get("peak_memory_bytes"), "bytes"),
        ("Test accuracy", "%",
         lambda m: None if m.get("accuracy") is None else 100 * m["accuracy"], "percent"),
        ("Agreement with reference", "%",
         lambda m: None if m.get("agreement") is None else 100 * m["agreement"], "percent"),
        ("Test perplexity", "perplexity (lower is better)", lambda m: m.get("perplexity"),
         "plain"),
        ("STS Spearman", "Spearman ρ", lambda m: m.get("spearman"), "plain"),
        ("Fidelity to the original", "mean cosine", lambda m: m.get("fidelity"), "plain"),
    ]
    return specs


def _wrapped(label: str, width: int = 24) -> str:
    """A long model name over two or three lines rather than across its neighbours."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=True)) or label


def _bar_text(value: float, height: float, kind: str) -> str:
    return fmt_count(value) if kind == "count" else f"{height:.4g}"


def metrics_chart(models: list[dict]) -> bytes | None:
    """Every measured metric as one small multiple: a panel of horizontal bars per metric, one
    bar per model in the same colour and order as the tables, names only on the left column.

    Horizontal bars give each name its own line (vertical bars' rotated names overlapped once
    names were longer than a word), and one figure of small multiples replaces a page of
    scrolling through one chart per metric (Tufte's small multiples)."""
    labels = short_labels(models)
    panels = []
    for title, unit, getter, kind in metric_specs(models):
        values = [getter(m) for m in models]
        if any(v is not None for v in values):
            panels.append((title, unit, values, kind))
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    bar_height = 0.32 * len(models) + 0.6  # inches per panel: room for every model's bar
    fig = Figure(figsize=(3.1 * columns + 1.6, rows * (bar_height + 0.55)), layout="constrained")
    colors = model_colors(len(models))
    positions = list(range(len(models)))[::-1]  # the first model at the top, as in the tables
    for index, (title, unit, values, kind) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        scale = 1.0
        if kind == "bytes":
            scale, unit = _byte_unit([v for v in values if v is not None])
        widths = [0.0 if v is None else v / scale for v in values]
        ax.barh(positions, widths, color=colors, height=0.7)
        largest = max(widths) or 1.0
        for position, value, width in zip(positions, values, widths, strict=True):
            text = NA if value is None else _bar_text(value, width, kind)
            ax.annotate(text, (width, position), xytext=(2, 0), textcoords="offset points",
                        va="center", fontsize=7)
        ax.set_xlim(0, 105 if kind == "percent" else largest * 1.35)
        ax.set_yticks(positions, [_wrapped(label) for label in labels] if index % columns == 0
                      else [""] * len(labels), fontsize=8)
        ax.set_title(f"{title} ({unit})", fontsize=9, loc="left")
        ax.set_xticks([])  # each bar carries its value; an axis would repeat it
        ax.spines[["top", "right", "bottom"]].set_visible(False)
    return to_png(fig)


def _attack_curve(model: dict, attack: str) -> tuple[list[float], list[float]] | None:
    points = (model.get("robustness") or {}).get(attack) or {}
    pairs = sorted((float(k), v) for k, v in points.items() if v is not None)
    if not pairs or model.get("accuracy") is None:
        return None
    # Strength 0 is the clean input, so each curve starts at the clean accuracy.
    pairs = [(0.0, model["accuracy"]), *[p for p in pairs if p[0] > 0]]
    return [p[0] for p in pairs], [100 * p[1] for p in pairs]


def robustness_chart(models: list[dict]) -> bytes | None:
    """Accuracy vs noise sigma and vs FGSM epsilon, one line per model."""
    attacks = [("gaussian", "Gaussian noise", "noise σ"), ("fgsm", "FGSM attack", "ε")]
    curves = {a: [_attack_curve(m, a) for m in models] for a, _, _ in attacks}
    attacks = [spec for spec in attacks if any(curves[spec[0]])]
    if not attacks:
        return None
    fig = Figure(figsize=(5.2 * len(attacks), 3.6))
    labels, colors = short_labels(models), model_colors(len(models))
    for index, (attack, title, xlabel) in enumerate(attacks, start=1):
        ax = fig.add_subplot(1, len(attacks), index)
        for label, color, curve in zip(labels, colors, curves[attack], strict=True):
            if curve is not None:
                ax.plot(*curve, marker="o", color=color, label=label)
        ax.set_title(f"Accuracy under {title}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    handles = {}
    for ax in fig.axes:  # one entry per model, even if it lacks a curve on some axes
        handles.update(zip(ax.get_legend_handles_labels()[1], ax.get_legend_handles_labels()[0],
                           strict=True))
    fig.legend(list(handles.values()), list(handles), loc="upper center", fontsize=8,
               ncol=min(len(handles), 5), bbox_to_anchor=(0.5, -0.04), frameon=False)
    return to_png(fig)


def _trade_off_panel(ax, points: list[tuple], base: int, xlabel: str, ylabel: str,
                     lower_is_better_y: bool) -> None:
    """One scatter: the baseline a large hollow star, the others dots in their model colour."""
    for index, (color, x, y) in points:
        if index == base:
            ax.scatter(x, y, marker="*", s=260, facecolor="white", edgecolor=color,
                       linewidth=1.8, zorder=4)
            ax.annotate("baseline", (x, y), xytext=(7, -12), textcoords="offset points",
                        fontsize=8, color="#57606a")
        else:
            ax.scatter(x, y, color=color, s=55, zorder=3, edgecolor="white", linewidth=0.6)
    xs = [x for _, (_, x, _) in points]
    if max(xs) / min(xs) > 20:  # compressed models can be orders of magnitude smaller
        ax.set_xscale("log")
    ax.margins(0.12)  # room for the star and its label at the edges
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    better = "down" if lower_is_better_y else "up"
    ax.set_title(f"better: left and {better}", fontsize=8, loc="right", color="#57606a")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def trade_off_chart(models: list[dict]) -> bytes | None:
    """The task's metric (accuracy, perplexity, STS Spearman) against artifact bytes and, where
    timed, against p50 latency at the smallest batch: the trade-off a compression report is
    read for. The baseline (:func:`~nnzip.evaluate.tables.baseline_index`) is a star; each model
    keeps its table colour and is named in the legend, not beside its dot (names overlapped when
    models sat close)."""
    key, header, _, scale_by, _ = TASK_METRIC[report_task(models)]
    colors, base = model_colors(len(models)), baseline_index(models)
    with_metric = [(i, m) for i, m in enumerate(models) if m.get(key) is not None]
    sized = [(i, (colors[i], m["size_bytes"], scale_by * m[key])) for i, m in with_metric
             if m.get("size_bytes")]
    if not sized:
        return None
    latency_key = next(iter(batch_keys(models)), None)
    timed = [(i, (colors[i], p50(m, latency_key), scale_by * m[key])) for i, m in with_metric
             if latency_key and p50(m, latency_key)]
    panels = 2 if timed else 1
    fig = Figure(figsize=(4.6 * panels + 0.4, 3.9), layout="constrained")
    ylabel = f"{header} (%)" if key == "accuracy" else header
    byte_scale, unit = _byte_unit([p[1] for _, p in sized])
    lower_is_better = key == "perplexity"
    _trade_off_panel(fig.add_subplot(1, panels, 1),
                     [(i, (c, x / byte_scale, y)) for i, (c, x, y) in sized], base,
                     f"artifact size ({unit})", ylabel, lower_is_better)
    if timed:
        batch = latency_key.removeprefix("batch")
        _trade_off_panel(fig.add_subplot(1, panels, 2), timed, base,
                         f"p50 latency, batch {batch} (ms)", ylabel, lower_is_better)
    if key == "accuracy":  # zoomed on the points (a drop of 0.2 points must be visible)
        accuracies = [y for _, (_, _, y) in sized]
        pad = max(0.3, 0.15 * (max(accuracies) - min(accuracies)))
        for ax in fig.axes:
            ax.set_ylim(max(0.0, min(accuracies) - pad), min(100.5, max(accuracies) + pad))
    shown = sorted({i for i, _ in sized} | {i for i, _ in timed})
    labels = short_labels(models)
    handles = [Line2D([], [], marker="*" if i == base else "o", linestyle="", color=colors[i],
                      markersize=10 if i == base else 7) for i in shown]
    fig.legend(handles, [_wrapped(labels[i], 40) for i in shown], loc="outside lower center",
               ncol=min(len(shown), 3), fontsize=8, frameon=False)
    return to_png(fig)


def report_figures(models: list[dict], trade_off: bool = True) -> list[tuple[str, bytes]]:
    """(title, PNG) for every chart that has data: the trade-off (unless ``trade_off`` is
    False), the metrics, robustness."""
    charts = (("Trade-off", trade_off_chart(models) if trade_off else None),
              ("Metrics", metrics_chart(models)), ("Robustness", robustness_chart(models)))
    return [(title, png) for title, png in charts if png is not None]


def _front_panel(ax, points: list[dict], x: str, y: str, joined: bool) -> None:
    """One view of a search: ``y`` against ``x`` for every finished trial, the front in colour
    (labelled by trial number), dominated trials grey dots, infeasible ones grey crosses."""
    dominated = [p for p in points if p["feasible"] and not p["on_front"]]
    infeasible = [p for p in points if not p["feasible"]]
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["values"][x])
    for group, marker, label in ((dominated, "o", "dominated"),
                                 (infeasible, "x", "infeasible (a constraint missed)")):
        if group:
            ax.scatter([p["values"][x] for p in group], [p["values"][y] for p in group],
                       color="0.72", marker=marker, s=28, label=label, zorder=1)
    if front:
        # Joined only for two objectives: a projection of a 3-objective front is no curve.
        ax.plot([p["values"][x] for p in front], [p["values"][y] for p in front],
                "o-" if joined else "o", color="tab:blue", label="Pareto front", zorder=2)
    for point in front:
        ax.annotate(str(point["number"]), (point["values"][x], point["values"][y]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    xs = [p["values"][x] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(x if x == "trial" else f"{x} (validation)")
    ax.set_ylabel(f"{y} (validation)")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def front_chart(points: list[dict], objectives: list[dict]) -> bytes | None:
    """The search's trials in objective space (``front.json``'s ``trials`` and
    ``objectives``): the first objective against the second, and with three objectives a
    second panel against the third (small multiples: accuracy vs bytes, accuracy vs latency).
    One objective: its value by trial number. None without trials.

    The one plot of a search: ``front.png`` and the HTML report both draw it."""
    if not points:
        return None
    names = [o["name"] for o in objectives]
    if len(names) == 1:
        points = [{**p, "values": {**p["values"], "trial": p["number"]}} for p in points]
        names = [names[0], "trial"]
    panels = names[1:3]
    fig = Figure(figsize=(4.6 * len(panels) + 0.4, 3.9), layout="constrained")
    for index, x in enumerate(panels, start=1):
        _front_panel(fig.add_subplot(1, len(panels), index), points, x, names[0],
                     joined=len(names) == 2)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
               frameon=False)
    return to_png(fig)
