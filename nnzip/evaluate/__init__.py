"""Honest measurements of a model and the report built from them.

``evaluate(model, data)`` measures size, compute, latency, memory, energy, accuracy, fidelity to a
reference and robustness, returning one JSON-ready entry; ``build_report`` / ``write_report`` turn
entries into report.json, report.md and a self-contained report.html.
"""

from nnzip.evaluate.config import EvalConfig
from nnzip.evaluate.energy import measure_energy
from nnzip.evaluate.flops import count_flops
from nnzip.evaluate.latency import compare_latency, measure_latency
from nnzip.evaluate.machine import machine_info
from nnzip.evaluate.memory import peak_memory_bytes
from nnzip.evaluate.metrics import REPORT_MODEL_KEYS, evaluate
from nnzip.evaluate.report import (
    build_report,
    load_report,
    render_html,
    render_markdown,
    rich_table,
    write_report,
)
from nnzip.evaluate.size import artifact_bytes, count_nonzero, count_params, file_bytes

__all__ = [
    "REPORT_MODEL_KEYS",
    "EvalConfig",
    "artifact_bytes",
    "build_report",
    "compare_latency",
    "count_flops",
    "count_nonzero",
    "count_params",
    "evaluate",
    "file_bytes",
    "load_report",
    "machine_info",
    "measure_energy",
    "measure_latency",
    "peak_memory_bytes",
    "render_html",
    "render_markdown",
    "rich_table",
    "write_report",
]
