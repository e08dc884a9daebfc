"""Report charts as PNG bytes, drawn with matplotlib's Agg canvas.

Figures are built with :class:`matplotlib.figure.Figure` directly rather than ``pyplot``: no
global figure registry, so nothing leaks between calls and no display is ever needed. Each model
keeps one colour across every chart.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnzip.evaluate.tables import NA, batch_keys, fmt_count, model_labels

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


def bar_chart(title: str, ylabel: str, labels: list[str], values: list[float | None],
              kind: str = "plain") -> bytes | None:
    """One bar per model; a missing value is drawn as an empty slot marked n/a. None if all miss."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    scale = 1.0
    if kind == "bytes":
        scale, ylabel = _byte_unit(present)
    heights = [0.0 if v is None else v / scale for v in values]
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(labels)), 3.2))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(labels)), heights, color=model_colors(len(labels)))
    for bar, value, height in zip(bars, values, heights, strict=True):
        if value is None:
            text = NA
        else:
            text = fmt_count(value) if kind == "count" else f"{height:.4g}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, height), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0, ha="right"
                  if len(labels) > 3 else "center")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if kind == "percent":
        ax.set_ylim(0, 105)
    else:
        ax.set_ylim(0, max(heights) * 1.15 or 1.0)
    ax.spines[["top", "right"]].set_visible(False)
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
    labels, colors = model_labels(models), model_colors(len(models))
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


#: The metric each task is judged by on the trade-off chart: (key, axis label, scale).
TRADE_OFF_METRICS = {"classify": ("accuracy", "test accuracy (%)", 100.0),
                     "lm": ("perplexity", "test perplexity (lower is better)", 1.0),
                     "embed": ("spearman", "STS Spearman", 1.0)}


def accuracy_size_chart(models: list[dict]) -> bytes | None:
    """The task's metric (accuracy, perplexity, STS Spearman) against artifact size, each point
    labelled with its model; the task is the first model's."""
    task = next((m.get("task") for m in models if m.get("task")), "classify")
    key, ylabel, scale_by = TRADE_OFF_METRICS.get(task, TRADE_OFF_METRICS["classify"])
    points = [(label, color, m["size_bytes"], scale_by * m[key])
              for label, color, m in zip(model_labels(models), model_colors(len(models)), models,
                                         strict=True)
              if m.get("size_bytes") and m.get(key) is not None]
    if not points:
        return None
    scale, unit = _byte_unit([p[2] for p in points])
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    # Models at the same point (e.g. a model and its export) share one joined label.
    labels_at: dict[tuple[float, float], list[str]] = {}
    for label, color, size, acc in points:
        ax.scatter(size / scale, acc, color=color, s=50, zorder=3)
        labels_at.setdefault((size / scale, acc), []).append(label)
    for (x, y), labels in labels_at.items():
        ax.annotate(", ".join(labels), (x, y), xytext=(5, 4), textcoords="offset points",
                    fontsize=8)
    sizes = [p[2] for p in points]
    if max(sizes) / min(sizes) > 20:  # compressed models can be orders of magnitude smaller
        ax.set_xscale("log")
    if key == "accuracy":
        lowest = min(p[3] for p in points)
        ax.set_ylim(max(0.0, math.floor(lowest / 5) * 5 - 5), 101)
    ax.set_title(f"{ylabel.split(' (')[0].capitalize()} vs size")
    ax.set_xlabel(f"artifact size ({unit})")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def report_figures(models: list[dict]) -> list[tuple[str, bytes]]:
    """(title, PNG) for every chart that has data: the metric bars, robustness, accuracy vs size."""
    labels = model_labels(models)
    # The trade-off first: it is the chart a reader of a compression report looks for.
    figures = [(title, png) for title, png in (("Accuracy vs size", accuracy_size_chart(models)),)
               if png is not None]
    for title, ylabel, getter, kind in metric_specs(models):
        png = bar_chart(title, ylabel, labels, [getter(m) for m in models], kind)
        if png is not None:
            figures.append((title, png))
    robustness = robustness_chart(models)
    if robustness is not None:
        figures.append(("Robustness", robustness))
    return figures
