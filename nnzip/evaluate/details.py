"""What each recipe stage recorded, as tables and charts for the report.

A stage records plain JSON values with ``Context.record`` (see :mod:`nnzip.stage`). A few keys
have a known shape and get a table or a chart of their own; every other value is listed as is:

- ``layer_sparsity`` ({layer: fraction of zeros}), with ``layer_params`` ({layer: count}) and
  ``allocated_sparsity`` ({layer: target}) when present: the per-layer sparsity table.
- ``widths_before`` / ``widths_after`` ({layer: channels}): the per-layer width table of
  structured pruning.
- ``sensitivity`` ({layer: {sparsity: val. accuracy}}): the sensitivity chart, one line per layer.
- ``layer_bits`` ({layer: bits}) with ``weight_error`` ({layer: ‖W_q − W‖² / ‖W‖²}): the
  per-layer quantization table.
- ``bit_sensitivity`` ({layer: {bits: KL}}), with ``layer_bits``, ``layer_params``,
  ``bit_accuracy_drop`` and ``weight_error``: the mixed-precision table (it replaces the
  quantization table) and chart.
- ``layer_compression`` ({layer: {weights, kept, bits, dense_bytes, pruned_bytes, shared_bytes,
  huffman_bytes, …}}): Deep Compression's Table 1, bytes of each weight after each step.
- ``coverage`` (:meth:`nnzip.core.Coverage.to_dict`): what the stage did to each parameter, or
  why it left it; the table lists the weights changed or skipped, the summary the fraction.
"""

from __future__ import annotations

import json

from matplotlib import colormaps
from matplotlib.figure import Figure

from nnzip.evaluate.figures import to_png
from nnzip.evaluate.tables import NA, fmt_bytes, fmt_count, fmt_percent

#: Keys drawn as their own table or chart; the rest go to the key/value list.
STRUCTURED_KEYS = ("layer_sparsity", "layer_params", "allocated_sparsity", "widths_before",
                   "widths_after", "sensitivity", "layer_bits", "weight_error", "bit_sensitivity",
                   "bit_accuracy_drop", "layer_compression", "coverage")

Table = tuple[list[str], list[list[str]]]


def sparsity_table(details: dict) -> Table | None:
    """Layer, parameters, sparsity reached (and the allocated target), one row per layer."""
    sparsity = details.get("layer_sparsity")
    if not sparsity:
        return None
    params = details.get("layer_params") or {}
    allocated = details.get("allocated_sparsity") or {}
    columns = ["Layer", "Weights", "Sparsity", "Kept"]
    if allocated:
        columns.insert(2, "Allocated")
    rows = []
    for layer, fraction in sparsity.items():
        count = params.get(layer)
        kept = NA if count is None else fmt_count(round(count * (1 - fraction)))
        row = [layer, fmt_count(count), fmt_percent(fraction), kept]
        if allocated:
            row.insert(2, fmt_percent(allocated.get(layer)))
        rows.append(row)
    return columns, rows


def width_table(details: dict) -> Table | None:
    """Layer, output channels before and after structured pruning, fraction kept."""
    before, after = details.get("widths_before"), details.get("widths_after")
    if not before or not after:
        return None
    rows = []
    for layer, width in before.items():
        now = after.get(layer)
        kept = NA if now is None or not width else fmt_percent(now / width)
        rows.append([layer, str(width), NA if now is None else str(now), kept])
    return ["Layer", "Channels before", "Channels after", "Kept"], rows


def quantization_table(details: dict) -> Table | None:
    """Layer, weight bits and relative weight error of each quantized layer."""
    bits = details.get("layer_bits")
    if not bits:
        return None
    errors = details.get("weight_error") or {}
    rows = [[layer, str(width), _error_cell(errors, layer)] for layer, width in bits.items()]
    return ["Layer", "Weight bits", "Weight error (relative)"], rows


def compression_table(details: dict) -> Table | None:
    """Deep Compression's Table 1: per weight, kept fraction, bits and bytes after each step."""
    layers = details.get("layer_compression")
    if not layers:
        return None
    columns = ["Layer", "Weights", "Kept", "Bits", "Index bits (P+Q / +H)",
               "Weight bits (P+Q / +H)", "Dense fp32", "Pruned", "Pruned+shared", "+Huffman",
               "Ratio"]
    rows = []
    totals = {"weights": 0, "kept": 0, "dense_bytes": 0, "pruned_bytes": 0, "shared_bytes": 0,
              "huffman_bytes": 0}
    for layer, row in layers.items():
        for key in totals:
            totals[key] += row[key]
        rows.append([layer, fmt_count(row["weights"]), fmt_percent(row["kept"] / row["weights"]),
                     str(row["bits"]),
                     f"{row['shared_index_bits']:.1f} / {row['huffman_index_bits']:.1f}",
                     f"{row['shared_weight_bits']:.1f} / {row['huffman_weight_bits']:.1f}",
                     fmt_bytes(row["dense_bytes"]), fmt_bytes(row["pruned_bytes"]),
                     fmt_bytes(row["shared_bytes"]), fmt_bytes(row["huffman_bytes"]),
                     f"{row['dense_bytes'] / max(row['huffman_bytes'], 1):.1f}×"])
    rows.append(["total", fmt_count(totals["weights"]),
                 fmt_percent(totals["kept"] / max(totals["weights"], 1)), "", "", "",
                 fmt_bytes(totals["dense_bytes"]), fmt_bytes(totals["pruned_bytes"]),
                 fmt_bytes(totals["shared_bytes"]), fmt_bytes(totals["huffman_bytes"]),
                 f"{totals['dense_bytes'] / max(totals['huffman_bytes'], 1):.1f}×"])
    return columns, rows


def _candidate_bits(table: dict[str, dict[str, float]]) -> list[str]:
    return sorted({bits for row in table.values() for bits in row}, key=int)


def _error_cell(errors: dict, layer: str) -> str:
    return NA if errors.get(layer) is None else f"{errors[layer]:.2e}"


def mixed_precision_table(details: dict) -> Table | None:
    """Layer, weights, chosen bits, weight error, then KL and accuracy drop at each candidate.

    The KL and drop (accuracy points lost on the validation split) columns are each layer
    quantized alone, the others in float; the chosen bits minimise the summed KL within the
    budget.
    """
    kl = details.get("bit_sensitivity")
    if not kl:
        return None
    candidates = _candidate_bits(kl)
    drops = details.get("bit_accuracy_drop") or {}
    params = details.get("layer_params") or {}
    chosen = details.get("layer_bits") or {}
    errors = details.get("weight_error") or {}
    # Chosen bits first: the answer, visible even where the wide table scrolls.
    columns = ["Layer", "Weights", "Chosen bits", "Weight error (relative)",
               *[f"KL @{b}b" for b in candidates]]
    if drops:
        columns += [f"Drop @{b}b (pts)" for b in candidates]
    rows = []
    for layer, row in kl.items():
        bits = chosen.get(layer)
        cells = [layer, fmt_count(params.get(layer)), NA if bits is None else str(bits),
                 _error_cell(errors, layer),
                 *[NA if row.get(b) is None else f"{row[b]:.2e}" for b in candidates]]
        if drops:
            drop = drops.get(layer) or {}
            cells += [NA if drop.get(b) is None else f"{100 * drop[b]:.1f}" for b in candidates]
        rows.append(cells)
    return columns, rows


def _short(value: object, limit: int = 160) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        text = ", ".join(map(str, value)) if value else "none"
    elif isinstance(value, dict):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def value_rows(details: dict) -> list[list[str]]:
    """Every recorded value without a table of its own, as (key, short text) rows."""
    return [[key, _short(value)] for key, value in details.items()
            if key not in STRUCTURED_KEYS]


def sensitivity_chart(curves: dict[str, dict[str, float]],
                      allocated: dict[str, float] | None = None) -> bytes | None:
    """Validation accuracy against the sparsity of one layer alone, one line per layer.

    A dot marks each layer's allocated sparsity when the stage allocated per-layer targets.
    """
    lines = {layer: sorted((float(s), 100 * acc) for s, acc in points.items())
             for layer, points in curves.items() if points}
    if not lines:
        return None
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    palette = colormaps["tab20"].colors
    for index, (layer, points) in enumerate(lines.items()):
        color = palette[index % len(palette)]
        xs, ys = zip(*points, strict=True)
        ax.plot([100 * x for x in xs], ys, marker="o", markersize=3, color=color, label=layer)
        target = (allocated or {}).get(layer)
        if target is not None:
            nearest = min(points, key=lambda point: abs(point[0] - target))
            ax.scatter([100 * target], [nearest[1]], s=60, facecolors="none", edgecolors=color,
                       linewidths=1.5, zorder=3)
    ax.set_title("Sensitivity: accuracy with one layer pruned"
                 + (" (circles: allocated sparsity)" if allocated else ""))
    ax.set_xlabel("sparsity of the layer (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, ncol=2 if len(lines) > 8 else 1, loc="lower left", frameon=False)
    return to_png(fig)


def bit_allocation_chart(details: dict) -> bytes | None:
    """Mixed precision at a glance: each layer's KL against its bits, and the bits it got.

    Top: one line per layer (log KL against bits), a circle at the chosen bits. Bottom: the
    chosen bits per layer, each bar labelled with the layer's weights, so a reader sees where
    the budget went; the dashed line is the achieved parameter-weighted average.
    """
    kl = details.get("bit_sensitivity")
    chosen = details.get("layer_bits") or {}
    if not kl:
        return None
    palette = colormaps["tab20"].colors
    fig = Figure(figsize=(10, 7.4))
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1.1, 1]})
    floor = 1e-9  # KL at 8 bits can round to 0: keep it on the log axis
    for index, (layer, row) in enumerate(kl.items()):
        color = palette[index % len(palette)]
        points = sorted((int(b), max(float(v), floor)) for b, v in row.items())
        xs, ys = zip(*points, strict=True)
        top.plot(xs, ys, marker="o", markersize=3, color=color, label=layer)
        bits = chosen.get(layer)
        if bits is not None and str(bits) in row:
            top.scatter([bits], [max(float(row[str(bits)]), floor)], s=70, facecolors="none",
                        edgecolors=color, linewidths=1.5, zorder=3)
    top.set_yscale("log")
    top.set_xticks(sorted({int(b) for row in kl.values() for b in row}))
    top.set_title("Sensitivity: output KL with one layer quantized (circles: chosen bits)")
    top.set_xlabel("weight bits of the layer")
    top.set_ylabel("KL(float ‖ quantized), nats")
    top.grid(alpha=0.3)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    layers = list(kl)
    heights = [chosen.get(layer, 0) for layer in layers]
    colors = [palette[i % len(palette)] for i in range(len(layers))]
    bars = bottom.bar(range(len(layers)), heights, color=colors)
    params = details.get("layer_params") or {}
    for bar, layer in zip(bars, layers, strict=True):
        bottom.annotate(fmt_count(params.get(layer)), (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    average = details.get("achieved_average_bits")
    if isinstance(average, (int, float)):
        bottom.axhline(average, color="#57606a", linestyle="--", linewidth=1,
                       label=f"average {average:.2f} bits")
        bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bottom.set_xticks(range(len(layers)), layers, rotation=30 if len(layers) > 4 else 0,
                      ha="right" if len(layers) > 4 else "center", fontsize=8)
    bottom.set_ylim(0, 9)
    bottom.set_ylabel("chosen weight bits")
    bottom.set_title("Bits per layer (labels: weights)")
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return to_png(fig)


def coverage_table(details: dict) -> Table | None:
    """Parameter, size, changed or not, and what was done or why not (biases and norms that
    no method targets are left out)."""
    coverage = details.get("coverage")
    if not coverage:
        return None
    skipped = coverage.get("skipped") or {}
    rows = [[name, fmt_count(entry["numel"]), "yes" if entry["changed"] else "no", entry["note"]]
            for name, entry in coverage["params"].items()
            if entry["changed"] or name in skipped]
    return ["Parameter", "Size", "Changed", "What was done, or why not"], rows


def coverage_title(details: dict) -> str:
    coverage = details.get("coverage") or {}
    return (f"Coverage: {fmt_percent(coverage.get('changed_fraction'))} of "
            f"{fmt_count(coverage.get('total_params'))} parameters changed, "
            f"{len(coverage.get('skipped') or {})} weights skipped")


def stage_tables(details: dict) -> list[tuple[str, Table]]:
    """(title, table) for every table the stage's details support, in reading order."""
    mixed = mixed_precision_table(details)
    tables = [("Per-layer sparsity", sparsity_table(details)),
              ("Per-layer channels", width_table(details)),
              ("Per-layer mixed precision", mixed),
              # The mixed-precision table already has the bits and errors.
              ("Per-layer quantization", quantization_table(details) if mixed is None else None),
              ("Per-layer compression (weights only, bytes)", compression_table(details)),
              (coverage_title(details), coverage_table(details))]
    return [(title, table) for title, table in tables if table is not None]
