"""The report: measured model entries plus the machine, as JSON, Markdown, HTML and a CLI table.

``report.json`` is the source of truth (stable keys, see :data:`REPORT_MODEL_KEYS`); Markdown and
HTML are renderings of it. The HTML page is one self-contained file: inline CSS, charts embedded
as base64 PNG, no scripts and no external links, so it can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from rich.table import Table

from nnzip.atomic import write_text
from nnzip.bounded import load_json_file
from nnzip.errors import NnzipError
from nnzip.evaluate import energy_model
from nnzip.evaluate.confidence import NOISE_MARK
from nnzip.evaluate.details import (
    bit_allocation_chart,
    sensitivity_chart,
    stage_tables,
    value_rows,
)
from nnzip.evaluate.figures import front_chart, model_colors, report_figures
from nnzip.evaluate.metrics import LATER_REPORT_MODEL_KEYS, REPORT_MODEL_KEYS
from nnzip.evaluate.score import ScoreWeights, score_line, score_rows
from nnzip.evaluate.shift import shift_chart, shift_notes, shift_table
from nnzip.evaluate.tables import (
    CONFIDENCE_COLUMNS,
    baseline_index,
    confidence_rows,
    front_columns,
    front_rows,
    gains_columns,
    gains_rows,
    machine_line,
    robustness_columns,
    robustness_notes,
    robustness_rows,
    runtime_notes,
    summary_columns,
    summary_rows,
    trial_columns,
    trial_rows,
)

REPORT_KEYS = ("nnzip_version", "machine", "models")
#: Largest report.json read (a report of a few models is tens of KB; figures are not in it).
MAX_REPORT_BYTES = 64 << 20
#: Context keys drawn as sections of their own rather than dumped as JSON.
_RENDERED_KEYS = ("stages", "interrupted", "search", "score")


def _nnzip_version() -> str:
    # Imported late: nnzip/__init__ may import this package, and a top-level import would cycle.
    import nnzip

    return nnzip.__version__


def build_report(models: list[dict], machine: dict, extra: dict | None = None,
                 score_weights: ScoreWeights | None = None) -> dict:
    """Assemble a report; ``extra`` adds context keys such as "data" or "recipe".

    Each row's ``score`` is the composite score against the baseline row
    (:func:`nnzip.evaluate.score.score_rows`, ``score_weights`` or the defaults); the report's
    ``score`` key says which weights were used and which ingredients were left out."""
    extra = extra or {}
    clashes = sorted(set(extra) & set(REPORT_KEYS))
    if clashes:
        raise NnzipError(f"extra report keys {clashes} are reserved: rename them")
    rows = list(models)
    scoring = {}
    if rows:
        scores, summary = score_rows(rows, rows[baseline_index(rows)], score_weights)
        rows = [{**row, "score": score} for row, score in zip(rows, scores, strict=True)]
        scoring = {"score": summary}
    return {"nnzip_version": _nnzip_version(), "machine": machine, "models": rows,
            **extra, **scoring}


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(columns), line(["---"] * len(columns)), *map(line, rows)])


def render_markdown(report: dict) -> str:
    """The report as Markdown: summary table, robustness table, machine line."""
    models = report["models"]
    parts = [
        "# nnzip report", "",
        *([f"**{interrupted_line(report)}**", ""] if interrupted_line(report) else []),
        f"Machine: {machine_line(report['machine'])}  ",
        f"nnzip {report['nnzip_version']}", "",
        *search_markdown(report),
        "## Models", "", _markdown_table(summary_columns(models), summary_rows(models)), "",
        *[f"- {note}" for note in runtime_notes(models)], *([""] if runtime_notes(models) else []),
        *_confidence_markdown(report),
        "## Robustness (test accuracy)", "",
        _markdown_table(robustness_columns(models), robustness_rows(models)), "",
    ]
    if robustness_notes(models):
        parts += [*[f"- {note}" for note in robustness_notes(models)], ""]
    parts += _shift_markdown(models)
    notes = [f"- {m['name']} ({m['stage']}): {m['energy_note']}" for m in models]
    if notes:
        parts += ["## Energy", "", *notes, ""]
    if energy_model.estimate_rows(models):
        parts += [f"### {energy_model.ESTIMATE_TITLE}", "",
                  _markdown_table(energy_model.estimate_columns(),
                                  energy_model.estimate_rows(models)), "",
                  _markdown_table(["Operation (45 nm)", "pJ"], energy_model.cost_rows()), "",
                  *[f"- {note}" for note in energy_model.estimate_notes()], ""]
    for stage in report.get("stages") or []:
        parts += [f"## Stage {_stage_title(stage)}", ""]
        rows = value_rows(stage.get("details") or {})
        if rows:
            parts += [_markdown_table(["Detail", "Value"], rows), ""]
        for title, (columns, table_rows) in stage_tables(stage.get("details") or {}):
            parts += [f"### {title}", "", _markdown_table(columns, table_rows), ""]
    return "\n".join(parts)


def search_lead(report: dict) -> str:
    """What a search report's first table holds, in one paragraph."""
    search, models = report["search"], report["models"]
    trials = search["trials"]
    front = [t for t in trials if t["on_front"]]
    constraints = (f" under {', '.join(search['constraints'])}" if search["constraints"]
                   else "")
    names = ", ".join(f"{o['name']} ({o['direction']})" for o in search["objectives"])
    if models:
        base = models[baseline_index(models)]
        tested = (f"; then re-measured once on the test split, against the baseline "
                  f"{base['name']}: times smaller, artifact bytes, the task metric and its "
                  "change, speed-up where timed")
    else:
        tested = "; not re-measured on the test split (" + (
            "the search was interrupted" if search.get("interrupted") else
            "held-out measurement was off") + ")"
    return (f"Search {search['study']}: {len(front)} point(s) on the Pareto front of "
            f"{len(trials)} finished trial(s) (by state: "
            f"{', '.join(f'{k} {v}' for k, v in search['trials_by_state'].items())}), "
            f"objectives {names}{constraints}. Chosen on the validation split (val){tested}.")


def search_markdown(report: dict) -> list[str]:
    """A search report's front section for report.md (nothing for other reports)."""
    search = report.get("search")
    if not isinstance(search, dict):
        return []
    models, objectives = report["models"], search["objectives"]
    return ["## Search front", "", search_lead(report), "",
            _markdown_table(front_columns(models, search), front_rows(models, search)), "",
            "### Every finished trial (validation split)", "",
            _markdown_table(trial_columns(objectives), trial_rows(search["trials"], objectives)),
            ""]


_NOISE_NOTE = ("≈ marks a difference within noise: its 95 % paired-bootstrap interval "
               "contains 0, or its p-value is 0.05 or more (with very few discordant samples "
               "the bootstrap interval is too narrow and the exact test decides).")


def _score_summary(report: dict) -> str | None:
    summary = report.get("score")
    return score_line(summary) if isinstance(summary, dict) else None


def _confidence_markdown(report: dict) -> list[str]:
    """The differences against the reference with their intervals, and the score's terms."""
    rows = confidence_rows(report["models"])
    parts = []
    if rows:
        parts += ["## Differences with confidence", "", _markdown_table(CONFIDENCE_COLUMNS, rows),
                  "", _NOISE_NOTE, ""]
    if _score_summary(report):
        parts += [f"Composite score: {_score_summary(report)}.", ""]
    return parts


def _confidence_html(report: dict) -> str:
    rows = confidence_rows(report["models"])
    table = (f'<h3>Differences with confidence</h3><div class="scroll">'
             f"{_html_table(CONFIDENCE_COLUMNS, rows)}</div>"
             f'<p class="lead">{html.escape(_NOISE_NOTE)} Greyed: within noise.</p>'
             if rows else "")
    score = (f'<p class="lead">Composite score: {html.escape(_score_summary(report))}.</p>'
             if _score_summary(report) else "")
    return table + score


_SHIFT_TITLE = "Generalization under shift"
_SHIFT_LEAD = ("The task metric on seeded, shifted copies of the first test samples "
               "(kind@severity, severity 1–3; digits8x8 where shown: scikit-learn's 8×8 "
               "digits laid out as MNIST's), beside the clean score on the whole test split, "
               "and each model's difference from the baseline.")


def _shift_markdown(models: list[dict]) -> list[str]:
    columns, rows = shift_table(models)
    notes = [f"- {note}" for note in shift_notes(models)]
    if not rows and not notes:
        return []
    table = [_markdown_table(columns, rows), ""] if rows else []
    return [f"## {_SHIFT_TITLE}", "", _SHIFT_LEAD, "", *table, *notes, *([""] if notes else [])]


def _shift_html(models: list[dict]) -> str:
    columns, rows = shift_table(models)
    notes = shift_notes(models)
    if not rows and not notes:
        return ""
    chart = shift_chart(models)
    figure = f'<figure class="wide">{_png_img(_SHIFT_TITLE, chart)}</figure>' if chart else ""
    table = f'<div class="scroll">{_html_table(columns, rows)}</div>' if rows else ""
    return (f"<h2>{_SHIFT_TITLE}</h2><p class=\"lead\">{html.escape(_SHIFT_LEAD)}</p>{table}"
            f"{_html_list(notes)}{figure}")


def _stage_title(stage: dict) -> str:
    seconds = stage.get("seconds")
    took = f" · {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    return f"{stage.get('label', '?')} ({stage.get('kind', '?')}){took}"


def _png_img(title: str, png: bytes) -> str:
    return (f'<img alt="{html.escape(title)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def _png_figure(title: str, png: bytes, wide: bool = False) -> str:
    return f'<figure{WIDE if wide else ""}>{_png_img(title, png)}</figure>'


def _stage_sections(report: dict) -> str:
    """One section per recipe stage: its recorded values, per-layer tables and charts."""
    sections = []
    for stage in report.get("stages") or []:
        details = stage.get("details") or {}
        parts = [f"<h3>{html.escape(_stage_title(stage))}</h3>"]
        rows = value_rows(details)
        if rows:
            parts.append(f'<div class="scroll">{_html_table(["Detail", "Value"], rows)}</div>')
        chart = sensitivity_chart(details.get("sensitivity") or {},
                                  details.get("allocated_sparsity"))
        if chart is not None:
            parts.append(f'<div class="figures">{_png_figure("Sensitivity", chart)}</div>')
        bits_chart = bit_allocation_chart(details)
        if bits_chart is not None:
            figure = _png_figure("Mixed precision", bits_chart, wide=True)
            parts.append(f'<div class="figures">{figure}</div>')
        for title, (columns, table_rows) in stage_tables(details):
            parts.append(f"<details open><summary>{html.escape(title)}</summary>"
                         f'<div class="scroll">{_html_table(columns, table_rows)}</div>'
                         "</details>")
        sections.append("".join(parts))
    return f"<h2>Stages</h2>{''.join(sections)}" if sections else ""


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1f2328; background: #fff; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
.machine { color: #57606a; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #d0d7de; text-align: right;
         white-space: nowrap; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px;
          margin-right: .4rem; vertical-align: middle; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr));
           gap: 1rem; }
.scroll { overflow-x: auto; }
figure.wide { grid-column: 1 / -1; text-align: center; }
figure { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; padding: .5rem; }
figure img { max-width: 100%; height: auto; }
h3 { margin: 1.4rem 0 .4rem; }
summary { cursor: pointer; font-weight: 600; margin: .4rem 0; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; font-size: .8rem; }
.lead { margin: .3rem 0 .6rem; color: #3d444d; max-width: 60rem; }
figure.trade-off { border: none; padding: 0; margin: .8rem 0 0; max-width: 900px; }
details.all { margin-top: 1.2rem; } details.all > summary { font-size: 1.1rem; }
#gains td:nth-child(6) { font-weight: 600; }
td.noise { color: #8c959f; }
#gains th, #gains td:nth-child(-n+2) { white-space: normal; }
#gains td:nth-child(-n+2) { max-width: 15rem; overflow-wrap: anywhere; }
#front th, #front td:nth-child(-n+3) { white-space: normal; }
#front td:nth-child(-n+3), #front th:nth-child(-n+3) { text-align: left; }
#front td:nth-child(2), #front td:nth-child(3) { max-width: 16rem; }
"""


def _html_table(columns: list[str], rows: list[list[str]],
                swatches: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for index, row in enumerate(rows):
        cells = [html.escape(cell) for cell in row]
        if swatches:
            swatch = f'<span class="swatch" style="background:{swatches[index]}"></span>'
            cells[0] = swatch + cells[0]
        # A difference within noise (nnzip.evaluate.confidence.format_difference) is greyed.
        body.append("<tr>" + "".join(
            f'<td class="noise">{cell}</td>' if raw.startswith(NOISE_MARK) else f"<td>{cell}</td>"
            for raw, cell in zip(row, cells, strict=True)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


WIDE = ' class="wide"'  # a figure that spans the whole grid row


def _html_list(items: list[str]) -> str:
    return f"<ul>{''.join(f'<li>{html.escape(item)}</li>' for item in items)}</ul>" if items else ""


def _hex(color: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in color[:3])


def _gains_html(report: dict, swatches: list[str], figures: dict[str, bytes]) -> str:
    """The first screen: what was gained and lost against the baseline, as a compact table and
    the trade-off plot."""
    models = report["models"]
    if not models:
        return "<p>No models were measured.</p>"
    base = models[baseline_index(models)]
    base = f"{base['name']} ({base['stage']})"
    plot = (f'<figure class="trade-off">{_png_img("Trade-off", figures["Trade-off"])}</figure>'
            if "Trade-off" in figures else "")
    return (f'<h2>What was gained and lost</h2><p class="lead">Against the baseline, '
            f"<strong>{html.escape(base)}</strong>: times smaller, artifact bytes, the task "
            "metric and its change (with its 95 % interval where measured), times faster on the "
            "runtime each model was timed on (p50), agreement with the baseline where measured, "
            "and the composite score (0 for the baseline, higher is better).</p>"
            f'<div class="scroll" id="gains">'
            f"{_html_table(gains_columns(models), gains_rows(models), swatches)}</div>"
            f"{_confidence_html(report)}{plot}")


def _search_html(report: dict) -> str:
    """A search report's first screen: the front as a table (test numbers against the
    baseline) and the plot of every trial, front in colour, the others grey; every finished
    trial folded below."""
    search, models = report["search"], report["models"]
    objectives = search["objectives"]
    chart = front_chart(search["trials"], objectives)
    plot = (f'<figure class="trade-off">{_png_img("Search front", chart)}</figure>'
            if chart is not None else "<p>No finished trials to plot.</p>")
    trials = search["trials"]
    return (f'<h2>Search front</h2><p class="lead">{html.escape(search_lead(report))}</p>'
            f'<div class="scroll" id="front">'
            f"{_html_table(front_columns(models, search), front_rows(models, search))}</div>"
            f"{plot}"
            f'<details class="all" id="all-trials"><summary>Every finished trial '
            f'({len(trials)}, validation split)</summary><div class="scroll">'
            f"{_html_table(trial_columns(objectives), trial_rows(trials, objectives))}</div>"
            "</details>")


def _estimate_html(models: list[dict]) -> str:
    """The energy estimates beside the RAPL notes, with the per-operation table they use."""
    rows = energy_model.estimate_rows(models)
    if not rows:
        return ""
    return (f"<h3>{html.escape(energy_model.ESTIMATE_TITLE)}</h3>"
            f'<div class="scroll">{_html_table(energy_model.estimate_columns(), rows)}</div>'
            f'{_html_table(["Operation (45 nm)", "pJ"], energy_model.cost_rows())}'
            f"{_html_list(energy_model.estimate_notes())}")


def render_html(report: dict) -> str:
    """One self-contained HTML page: header, tables and every chart embedded as base64 PNG.

    The first screen answers "what did I gain and lose": a compact table relative to the
    baseline and the trade-off plot; every measurement follows in a collapsible table."""
    models = report["models"]
    swatches = [_hex(c) for c in model_colors(len(models))]  # the charts' palette
    search = report.get("search") if isinstance(report.get("search"), dict) else None
    # A search's first screen is its front plot: the trade-off chart is not drawn for it.
    figures = dict(report_figures(models, trade_off=search is None))
    metrics = (f'<figure class="wide">{_png_img("Metrics", figures["Metrics"])}</figure>'
               if "Metrics" in figures else "<p>No measurements to chart.</p>")
    robustness = (f'<figure class="wide">{_png_img("Robustness", figures["Robustness"])}'
                  "</figure>" if "Robustness" in figures else "")
    notes = "".join(f"<li>{html.escape(str(m['name']))} ({html.escape(str(m['stage']))}): "
                    f"{html.escape(str(m['energy_note']))}</li>" for m in models)
    extras = "".join(
        f"<details><summary>{html.escape(key)}</summary>"
        f"<pre>{html.escape(json.dumps(value, indent=2, default=str))}</pre></details>"
        for key, value in report.items() if key not in (*REPORT_KEYS, *_RENDERED_KEYS))
    columns = summary_columns(models)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nnzip report</title><style>{_CSS}</style></head>
<body>
<h1>nnzip report</h1>
{_interrupted_html(report)}<p class="machine">{html.escape(_subtitle(report))}</p>
{_search_html(report) if search else _gains_html(report, swatches, figures)}
<details class="all" id="all-measurements"><summary>All measurements ({len(columns)} columns)
</summary>
<div class="scroll">{_html_table(columns, summary_rows(models), swatches)}</div>
{_html_list(runtime_notes(models))}
</details>
<h2>Metrics</h2>
{metrics}
<h2>Robustness (test accuracy)</h2>
<div class="scroll">{_html_table(robustness_columns(models), robustness_rows(models),
                                 swatches)}</div>
{_html_list(robustness_notes(models))}
{robustness}
{_shift_html(models)}
<h2>Energy</h2>
<ul>{notes}</ul>
{_estimate_html(models)}
{_stage_sections(report)}
{extras}
<p class="machine">Measured on {html.escape(machine_line(report["machine"]))}<br>
nnzip {html.escape(str(report["nnzip_version"]))}</p>
</body></html>
"""


def _subtitle(report: dict) -> str:
    """One short line under the title: the data, the task and the CPU the numbers come from."""
    data = report.get("data") if isinstance(report.get("data"), dict) else {}
    machine = report["machine"]
    parts = [f"data: {data['name']}" if data.get("name") else None,
             f"{data['test']:,} test samples" if isinstance(data.get("test"), int) else None,
             f"task: {report['task']}" if isinstance(report.get("task"), str) else None,
             f"{machine.get('cpu_model', 'unknown CPU')}, {machine.get('threads', '?')} "
             "thread(s) for timing"]
    return " · ".join(part for part in parts if part)


def _interrupted_html(report: dict) -> str:
    line = interrupted_line(report)
    return f'<p class="interrupted"><strong>{html.escape(line)}</strong></p>\n' if line else ""


def rich_table(report: dict) -> Table:
    """The summary as a :class:`rich.table.Table` for the CLI: one column per model.

    Transposed against the Markdown table (metrics down, models across) so that a terminal of 80
    columns shows every metric of a handful of models without truncation.
    """
    models = report["models"]
    columns = summary_columns(models)
    rows = summary_rows(models)
    table = Table(title="nnzip report", caption=machine_line(report["machine"]))
    table.add_column("Metric", style="bold")
    for row in rows:
        table.add_column(f"{row[0]}\n{row[1]}", justify="right")
    for index, metric in enumerate(columns[2:], start=2):
        table.add_row(metric, *[row[index] for row in rows])
    return table


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``out_dir``, each atomically.

    All three are rendered before any is written, and report.json (the source of truth) is
    written last: an interrupt never leaves a new report.json beside a missing or older
    report.html. A whole folder is replaced at once by the callers (:mod:`nnzip.outputs`).
    """
    out_dir = Path(out_dir)
    texts = {"json": json.dumps(report, indent=2, default=str) + "\n",
             "md": render_markdown(report), "html": render_html(report)}
    paths = {kind: out_dir / f"report.{kind}" for kind in texts}
    for kind in ("html", "md", "json"):
        write_text(paths[kind], texts[kind])
    return paths


def interrupted_line(report: dict) -> str | None:
    """The line that marks a report whose run was interrupted: what was measured and what not."""
    interrupted = report.get("interrupted")
    if not isinstance(interrupted, dict):
        return None
    measured = ", ".join(map(str, interrupted.get("measured") or [])) or "nothing"
    missing = ", ".join(map(str, interrupted.get("not_measured") or [])) or "nothing"
    unsaved = ("; the compressed model was not saved"
               if interrupted.get("model_saved") is False else "")
    return f"Interrupted (Ctrl-C): measured {measured}; not measured {missing}{unsaved}."


def load_report(path: str | os.PathLike) -> dict:
    """Read a report.json (or the folder holding one) and check its keys."""
    path, report = load_json_file(path, "report.json", MAX_REPORT_BYTES, "report",
                                  "regenerate it with `nnzip eval`",
                                  "pass the report.json that `nnzip eval` wrote")
    if not isinstance(report, dict):
        raise NnzipError(f"report {path} is not a JSON object: regenerate it with `nnzip eval`")
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise NnzipError(f"report {path} lacks keys {missing}: regenerate it with `nnzip eval`")
    if not isinstance(report["models"], list):
        raise NnzipError(f"report {path}: 'models' is not a list: regenerate it with `nnzip eval`")
    for index, model in enumerate(report["models"]):
        if not isinstance(model, dict):
            raise NnzipError(f"report {path}: model {index} is not a JSON object: "
                             "regenerate it with `nnzip eval`")
        for key in LATER_REPORT_MODEL_KEYS:  # an older report: not measured then
            model.setdefault(key, None)
        absent = [key for key in REPORT_MODEL_KEYS if key not in model]
        if absent:
            raise NnzipError(f"report {path}: model {index} lacks keys {absent}: "
                             "regenerate it with `nnzip eval`")
    return report
