"""Report entries as rows of human-friendly strings, shared by the Markdown, HTML and CLI tables.

Units are chosen per value (k/M/G for counts, KiB/MiB for bytes) and a missing measurement is
shown as ``n/a``, never as 0.
"""

from __future__ import annotations

from nnzip.evaluate.confidence import format_difference

NA = "n/a"


def fmt_count(value: float | None) -> str:
    """1234567 -> '1.23M'."""
    if value is None:
        return NA
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def fmt_bytes(value: float | None) -> str:
    """Binary units: 1536 -> '1.5 KiB'."""
    if value is None:
        return NA
    for threshold, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= threshold:
            return f"{value / threshold:.3g} {suffix}"
    return f"{int(value)} B"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return NA
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_percent(fraction: float | None) -> str:
    return NA if fraction is None else f"{100 * fraction:.2f}%"


def fmt_ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}×"


def fmt_mflops(flops: float | None) -> str:
    return NA if flops is None else f"{flops / 1e6:.3g}"


def fmt_energy(joules: float | None) -> str:
    if joules is None:
        return NA
    return f"{joules * 1e3:.3g} mJ" if joules < 1 else f"{joules:.3g} J"


def fmt_plain(value: float | None) -> str:
    """Four decimals below 10 (Spearman 0.8203, cosine 1.0000), two above (perplexity 43.17)."""
    if value is None:
        return NA
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


#: The task metrics (:mod:`nnzip.tasks`) as (report key, header, format); a report shows the
#: ones any of its models has, so a classifier report reads as it always did.
METRIC_COLUMNS = (
    ("perplexity", "Perplexity", fmt_plain),
    ("spearman", "STS Spearman", fmt_plain),
    ("accuracy", "Accuracy", fmt_percent),
    ("top5", "Top-5", fmt_percent),
    ("agreement", "Agreement", fmt_percent),
    ("kl_to_reference", "KL to original", fmt_plain),
    ("fidelity", "Fidelity (cos)", fmt_plain),
    ("neighbour_overlap", "Top-10 overlap", fmt_percent),
)


def metric_columns(models: list[dict]) -> list[tuple[str, str, object]]:
    """The task metric columns some model has a value for; a language model's accuracy and
    top-5 are over next tokens, and say so when every model is one."""
    columns = []
    next_token = all(m.get("task") == "lm" for m in models)
    for key, header, fmt in METRIC_COLUMNS:
        if any(m.get(key) is not None for m in models):
            if next_token and key in ("accuracy", "top5"):
                header = f"Next-token {header.lower()}"
            columns.append((key, header, fmt))
    return columns


def batch_keys(models: list[dict]) -> list[str]:
    """Latency keys present in any model ("batch1", "batch64", ...), by batch size."""
    keys = {key for model in models for key in (model.get("latency_ms") or {})}
    return sorted(keys, key=lambda key: int(key.removeprefix("batch")))


def model_labels(models: list[dict]) -> list[str]:
    """One label per model; the stage is added where names repeat (the same model, two stages)."""
    names = [str(m["name"]) for m in models]
    return [f"{name} ({m['stage']})" if names.count(name) > 1 else name
            for name, m in zip(names, models, strict=True)]


def short_labels(models: list[dict]) -> list[str]:
    """Labels for a chart beside a table that names the models: the stage alone when every row
    is the same model (a compress report), else :func:`model_labels`."""
    if len({str(m["name"]) for m in models}) == 1:
        return [str(m["stage"]) for m in models]
    return model_labels(models)


PYTORCH = "pytorch-eager"


def on_runtimes(models: list[dict]) -> bool:
    """Whether some model was timed on another runtime than PyTorch eager: then the tables name
    each row's runtime and keep the PyTorch simulation's speedup beside it."""
    return any(name != PYTORCH for m in models for name in (m.get("runtime") or {}).values())


def fmt_runtime(runtime: dict | None) -> str:
    """One name when every batch size ran on it, else 'b1 name · b64 name'."""
    if not runtime:
        return NA
    names = list(runtime.values())
    if len(set(names)) == 1:
        return names[0]
    return " · ".join(f"b{key.removeprefix('batch')} {name}" for key, name in runtime.items())


def runtime_notes(models: list[dict]) -> list[str]:
    """'name (stage): timed on …' for every model whose timing says which runtimes it weighed or
    why it is the PyTorch simulation."""
    return [f"{model['name']} ({model['stage']}): timed on {fmt_runtime(model.get('runtime'))}: "
            f"{model['runtime_note']}" for model in models if model.get("runtime_note")]


def summary_columns(models: list[dict]) -> list[str]:
    latency = [f"p50 b{key.removeprefix('batch')} (ms)" for key in batch_keys(models)]
    speedup = [f"Speedup b{key.removeprefix('batch')}" for key in batch_keys(models)]
    runtime = (["Runtime", *[f"PyTorch sim. speedup b{key.removeprefix('batch')}"
                             for key in batch_keys(models)]] if on_runtimes(models) else [])
    return ["Model", "Stage", "Params", "Non-zero", "Size", "Ratio", "MFLOPs", *latency, *speedup,
            *runtime, "Throughput (/s)", "Peak mem",
            *[header for _, header, _ in metric_columns(models)], "Energy",
            *[header for header, _ in _late_columns(models)]]


def _shift_mean(model: dict) -> float | None:
    shift = model.get("shift")
    return shift.get("mean") if isinstance(shift, dict) else None


def _late_columns(models: list[dict]) -> list[tuple[str, object]]:
    """The estimated energy, the mean task metric under shift and the composite score, each
    where some row has it: (header, cell of a row)."""
    from nnzip.evaluate.energy_model import fmt_joules

    columns = [("Energy (estimate)", lambda m: fmt_joules(m.get("energy_estimate_j")),
                "energy_estimate_j"),
               ("Under shift (mean)", lambda m: fmt_percent(_shift_mean(m))
                if report_task(models) == "classify" else fmt_plain(_shift_mean(m)), None),
               ("Score", lambda m: fmt_score(m.get("score")), "score")]
    return [(header, cell) for header, cell, key in columns
            if any((m.get(key) if key else _shift_mean(m)) is not None for m in models)]


def summary_rows(models: list[dict]) -> list[list[str]]:
    """One row per model, aligned with :func:`summary_columns`."""
    keys = batch_keys(models)
    metrics = metric_columns(models)
    extra = _late_columns(models)
    rows = []
    for model in models:
        latency = model.get("latency_ms") or {}
        speedup = model.get("speedup") or {}
        # A row timed in PyTorch is its own simulation: its speedup is the PyTorch one.
        simulated = model.get("pytorch_speedup") or speedup
        runtime = ([fmt_runtime(model.get("runtime")),
                    *[fmt_ratio(simulated.get(key)) for key in keys]]
                   if on_runtimes(models) else [])
        rows.append([
            str(model["name"]), str(model["stage"]), fmt_count(model["params"]),
            fmt_count(model["nonzero_params"]), fmt_bytes(model["size_bytes"]),
            fmt_ratio(model["compression_ratio"]), fmt_mflops(model["flops"]),
            *[fmt_ms((latency.get(key) or {}).get("p50")) for key in keys],
            *[fmt_ratio(speedup.get(key)) for key in keys], *runtime,
            fmt_count(model["throughput_per_s"]), fmt_bytes(model["peak_memory_bytes"]),
            *[fmt(model.get(key)) for key, _, fmt in metrics], fmt_energy(model["energy_j"]),
            *[cell(model) for _, cell in extra],
        ])
    return rows


#: The metric each task is judged by, for the first screen and the trade-off plot:
#: (report key, header, format, scale to display units, unit of a difference).
TASK_METRIC = {
    "classify": ("accuracy", "Accuracy", fmt_percent, 100.0, "points"),
    "lm": ("perplexity", "Perplexity", fmt_plain, 1.0, ""),
    "embed": ("spearman", "STS Spearman", fmt_plain, 1.0, ""),
}


def report_task(models: list[dict]) -> str:
    """The task of the report (the first model's that names one; classify for older reports)."""
    task = next((m.get("task") for m in models if m.get("task")), "classify")
    return task if task in TASK_METRIC else "classify"


def baseline_index(models: list[dict]) -> int:
    """The row the others are compared with: the first "baseline" stage, else the first row."""
    return next((index for index, m in enumerate(models) if m.get("stage") == "baseline"), 0)


def p50(model: dict, key: str) -> float | None:
    return ((model.get("latency_ms") or {}).get(key) or {}).get("p50")


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if not numerator or not denominator else numerator / denominator


def _difference(value: float | None, base: float | None, scale: float, unit: str) -> str:
    if value is None or base is None:
        return NA
    digits = 2 if unit == "points" or abs(base) >= 10 else 4
    return f"{scale * (value - base):+.{digits}f}"


def _digits(unit: str, base: float | None) -> int:
    return 2 if unit == "points" or (base is not None and abs(base) >= 10) else 4


def _difference_with_interval(model: dict, base: dict, key: str, scale: float,
                              unit: str) -> str:
    """The change against the baseline, with the row's 95 % interval when its confidence was
    taken against that same baseline (the differences then match, up to an encoder's padding
    noise): ``-0.04 [-0.15, +0.07]``, prefixed ``≈`` when within noise."""
    plain = _difference(model.get(key), base.get(key), scale, unit)
    confidence = model.get("confidence")
    if plain == NA or not isinstance(confidence, dict) or confidence.get("metric") != key \
            or confidence.get("difference") is None:
        return plain
    width = abs((confidence.get("ci_high") or 0.0) - (confidence.get("ci_low") or 0.0))
    if abs(confidence["difference"] - scale * (model[key] - base[key])) \
            > max(1e-9 * scale, 0.1 * width):
        return plain  # compared with another reference than the baseline: no interval here
    return format_difference(confidence, _digits(unit, base.get(key))) or plain


def gains_columns(models: list[dict]) -> list[str]:
    """Headers of the first-screen table: what was gained and lost against the baseline."""
    _, header, _, _, unit = TASK_METRIC[report_task(models)]
    agreement = ["Agreement"] if any(m.get("agreement") is not None for m in models) else []
    fidelity = (["Fidelity (cos)"] if not agreement
                and any(m.get("fidelity") is not None for m in models) else [])
    speedups = [f"Speed-up b{key.removeprefix('batch')}" for key in batch_keys(models)]
    interval = " [95% CI]" if any(isinstance(m.get("confidence"), dict) for m in models) else ""
    score = ["Score"] if any(m.get("score") is not None for m in models) else []
    return ["Model", "Stage", "× smaller", "Bytes", header,
            f"Δ {unit}".rstrip() + interval, *speedups, *agreement, *fidelity, *score]


def gains_rows(models: list[dict]) -> list[list[str]]:
    """One row per model, aligned with :func:`gains_columns`, every ratio and difference taken
    against the baseline row (:func:`baseline_index`), whatever reference the report used.

    "× smaller" is baseline bytes / bytes; the speed-up is the baseline's p50 / the row's p50, on
    the runtime each row was timed on (its deployed runtime); Δ is the task metric's change
    (accuracy in percentage points)."""
    if not models:
        return []
    base = models[baseline_index(models)]
    key, _, fmt, scale, unit = TASK_METRIC[report_task(models)]
    columns = gains_columns(models)
    rows = []
    for model in models:
        row = [str(model["name"]), str(model["stage"]),
               fmt_ratio(_ratio(base.get("size_bytes"), model.get("size_bytes"))),
               fmt_bytes(model.get("size_bytes")), fmt(model.get(key)),
               _difference_with_interval(model, base, key, scale, unit),
               *[fmt_ratio(_ratio(p50(base, batch), p50(model, batch)))
                 for batch in batch_keys(models)]]
        if "Agreement" in columns:
            row.append(fmt_percent(model.get("agreement")))
        if "Fidelity (cos)" in columns:
            row.append(fmt_plain(model.get("fidelity")))
        if "Score" in columns:
            row.append(fmt_score(model.get("score")))
        rows.append(row)
    return rows


def fmt_score(value: float | None) -> str:
    return NA if value is None else f"{value:+.2f}"


def fmt_p_value(value: float | None) -> str:
    if value is None:
        return NA
    return f"{value:.2g}" if value >= 1e-4 else "<0.0001"


CONFIDENCE_COLUMNS = ["Model", "Stage", "Metric", "Difference [95% CI]", "p-value", "Test",
                      "Reading"]


def confidence_rows(models: list[dict]) -> list[list[str]]:
    """One row per model compared with a reference: the task metric's difference (points for
    accuracy) with its paired-bootstrap interval, the p-value and its test, and whether the
    difference is within noise (the interval contains 0)."""
    rows = []
    for model in models:
        confidence = model.get("confidence")
        if not isinstance(confidence, dict) or confidence.get("difference") is None:
            continue
        unit = "points" if confidence.get("metric") == "accuracy" else ""
        digits = 2 if confidence.get("metric") in ("accuracy", "perplexity") else 4
        higher_better = confidence.get("metric") != "perplexity"
        reading = ("within noise" if confidence.get("within_noise")
                   else "better" if (confidence["difference"] > 0) == higher_better
                   else "worse")
        rows.append([str(model["name"]), str(model["stage"]),
                     f"{confidence.get('metric')}" + (f" ({unit})" if unit else ""),
                     format_difference(confidence, digits) or NA,
                     fmt_p_value(confidence.get("p_value")), str(confidence.get("test", NA)),
                     reading])
    return rows


def _robustness_keys(models: list[dict], attack: str) -> list[str]:
    keys = {key for m in models for key in ((m.get("robustness") or {}).get(attack) or {})}
    return sorted(keys, key=float)


def robustness_columns(models: list[dict]) -> list[str]:
    return ["Model", "Clean",
            *[f"noise σ={key}" for key in _robustness_keys(models, "gaussian")],
            *[f"FGSM ε={key}" for key in _robustness_keys(models, "fgsm")]]


def robustness_rows(models: list[dict]) -> list[list[str]]:
    """Accuracy under Gaussian noise and FGSM per model, aligned with robustness_columns."""
    gaussian_keys = _robustness_keys(models, "gaussian")
    fgsm_keys = _robustness_keys(models, "fgsm")
    rows = []
    for label, model in zip(model_labels(models), models, strict=True):
        robustness = model.get("robustness") or {}
        gaussian = robustness.get("gaussian") or {}
        fgsm = robustness.get("fgsm") or {}
        rows.append([label, fmt_percent(model.get("accuracy")),
                     *[fmt_percent(gaussian.get(key)) for key in gaussian_keys],
                     *[fmt_percent(fgsm.get(key)) for key in fgsm_keys]])
    return rows


def robustness_notes(models: list[dict]) -> list[str]:
    """'name (stage): why' for every model whose robustness probes were (partly) not measured."""
    return [f"{model['name']} ({model['stage']}): {model['robustness']['note']}"
            for model in models if (model.get("robustness") or {}).get("note")]


def machine_line(machine: dict) -> str:
    """One sentence describing the machine the measurements come from."""
    flags = ", ".join(machine.get("cpu_flags") or []) or "none of interest"
    return (f"{machine.get('cpu_model', 'unknown CPU')} · {machine.get('cores', '?')} cores · "
            f"{machine.get('threads', '?')} torch thread(s) for timing · flags: {flags} · "
            f"torch {machine.get('torch_version', '?')} · Python "
            f"{machine.get('python_version', '?')} · {machine.get('platform', '?')}")


def aligned_table(columns: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Aligned markdown lines (the first ``left`` columns left-aligned, the rest right): they
    do not depend on any terminal width, so piped output is never wrapped mid-word."""
    cells = [list(columns), *rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(columns))]

    def line(values: list[str]) -> str:
        padded = [value.ljust(width) if column < left else value.rjust(width)
                  for column, (value, width) in enumerate(zip(values, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (width + 1) + ("-" if column < left else ":"))
                          for column, width in enumerate(widths)) + "|"
    return [line(cells[0]), rule, *(line(values) for values in cells[1:])]


def transposed_summary(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The summary with metrics down and models across (what a terminal shows best)."""
    columns, rows = summary_columns(models), summary_rows(models)
    header = ["Metric", *[f"{row[0]} ({row[1]})" for row in rows]]
    return header, [[metric, *[row[index] for row in rows]]
                    for index, metric in enumerate(columns[2:], start=2)]


# --- a search's front (``front.json``, :mod:`nnzip.search.front`) ------------------------------

def fmt_params(params: dict) -> str:
    """A trial's sampled options, short: 'prune.sparsity 0.732 · cluster.bits 3'. Optuna names
    them ``slot<i>.<stage>.<option>``; a bare ``slot<i>`` is the choice of stage at that place,
    which the stages column already shows."""
    parts = []
    for name, value in params.items():
        head, _, rest = str(name).partition(".")
        if head.startswith("slot") and not rest:
            continue
        label = rest if head.startswith("slot") else str(name)
        parts.append(f"{label} {value:.3g}" if isinstance(value, float) else f"{label} {value}")
    return " · ".join(parts) or "—"


def _objective_cells(point: dict, objectives: list[dict]) -> list[str]:
    return [f"{point['values'][o['name']]:.5g}" for o in objectives]


def _timed_only(models: list[dict]) -> list[dict]:
    """``models`` with the batch sizes no model was timed at left out (a search times only
    when an objective or constraint needs it): no column of n/a on the first screen."""
    timed = {key for m in models for key, value in (m.get("latency_ms") or {}).items()
             if (value or {}).get("p50") is not None}
    return [{**m, "latency_ms": {k: v for k, v in (m.get("latency_ms") or {}).items()
                                 if k in timed}} for m in models]


def front_points(search: dict) -> list[dict]:
    """The front's trials, best first in the first objective (the cost curve read downwards)."""
    first = search["objectives"][0]
    sign = -1 if first["direction"] == "maximize" else 1
    return sorted((t for t in search["trials"] if t["on_front"]),
                  key=lambda t: (sign * t["values"][first["name"]], t["number"]))


def front_columns(models: list[dict], search: dict) -> list[str]:
    """The first table of a search report: each front point's stages and options, its
    validation objective values and, where re-measured, its test-split numbers against the
    baseline (the columns of :func:`gains_columns` after Model and Stage)."""
    tested = gains_columns(_timed_only(models))[2:] if models else []
    return ["Trial", "Stages", "Options",
            *[f"{o['name']} (val)" for o in search["objectives"]], *tested]


def front_rows(models: list[dict], search: dict) -> list[list[str]]:
    """Rows of :func:`front_columns`: the baseline first (where measured), then the front.
    A front point's test numbers are the model row whose stage is 'trial N'."""
    gains = {str(m["stage"]): row[2:]
             for m, row in zip(models, gains_rows(_timed_only(models)), strict=True)}
    blank = [NA] * (len(front_columns(models, search)) - 3 - len(search["objectives"]))
    rows = []
    if models:
        base = models[baseline_index(models)]
        rows.append(["baseline", "—", "—", *["—"] * len(search["objectives"]),
                     *gains.get(str(base["stage"]), blank)])
    for point in front_points(search):
        rows.append([str(point["number"]), " → ".join(point["stages"]),
                     fmt_params(point["params"]), *_objective_cells(point, search["objectives"]),
                     *gains.get(f"trial {point['number']}", blank)])
    return rows


def trial_columns(objectives: list[dict]) -> list[str]:
    return ["Trial", "Front", *[o["name"] for o in objectives], "Stages", "Options"]


def trial_rows(trials: list[dict], objectives: list[dict]) -> list[list[str]]:
    """Every finished trial (validation values), front points first: 'yes' on the front,
    'infeasible' where a constraint was missed, blank when dominated."""
    ordered = sorted(trials, key=lambda t: (not t["on_front"], t["number"]))
    return [[str(t["number"]), "yes" if t["on_front"] else ("" if t["feasible"]
                                                            else "infeasible"),
             *_objective_cells(t, objectives), " → ".join(t["stages"]), fmt_params(t["params"])]
            for t in ordered]
