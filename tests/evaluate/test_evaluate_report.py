import json
import re

import pytest
from rich.table import Table

from nnzip.errors import NnzipError
from nnzip.evaluate import (
    REPORT_MODEL_KEYS,
    build_report,
    load_report,
    render_html,
    render_markdown,
    rich_table,
    write_report,
)

MACHINE = {"cpu_model": "Test CPU", "cpu_flags": ["avx2"], "cores": 2, "threads": 1,
           "torch_version": "2.13.0", "python_version": "3.11", "platform": "Linux"}


def _entry(name: str, stage: str, size_bytes: int, acc: float, **overrides) -> dict:
    entry = {
        "name": name, "stage": stage, "task": "classify", "params": 235_146,
        "nonzero_params": 120_000,
        "size_bytes": size_bytes, "compression_ratio": 940_000 / size_bytes,
        "flops": 470_400, "macs": 235_200,
        "latency_ms": {"batch1": {"p50": 0.05, "p95": 0.07}, "batch64": {"p50": 0.8, "p95": 1.1}},
        "speedup": {"batch1": 1.5, "batch64": 2.0},
        "runtime": {"batch1": "pytorch-eager", "batch64": "pytorch-eager"},
        "runtime_note": None, "pytorch_latency_ms": None, "pytorch_speedup": None,
        "throughput_per_s": 80_000.0, "peak_memory_bytes": 1_200_000, "accuracy": acc,
        "top5": 0.999, "agreement": 0.98, "perplexity": None, "loss": None,
        "kl_to_reference": None, "spearman": None,
        "fidelity": None, "neighbour_overlap": None,
        "robustness": {"gaussian": {"0.1": acc - 0.01, "0.2": acc - 0.05},
                       "fgsm": {"0.05": acc - 0.3, "0.1": acc - 0.6}},
        "energy_j": None, "energy_note": "no RAPL counters here",
        "energy_estimate_j": None, "energy_estimate": None, "confidence": None,
        "score": None, "shift": None,
    }
    entry.update(overrides)
    assert tuple(entry) == REPORT_MODEL_KEYS
    return entry


@pytest.fixture
def report() -> dict:
    models = [
        _entry("mlp", "baseline", 940_000, 0.98),
        _entry("mlp", "pruned", 300_000, 0.975),
        # Missing measurements must render as n/a, not crash or show 0.
        _entry("mlp-int8", "quantized", 120_000, 0.97, flops=None, macs=None,
               latency_ms={"batch1": {"p50": None, "p95": None},
                           "batch64": {"p50": None, "p95": None}},
               speedup={"batch1": None, "batch64": None}, throughput_per_s=None,
               robustness={"gaussian": {"0.1": 0.96, "0.2": 0.9},
                           "fgsm": {"0.05": None, "0.1": None}}),
    ]
    return build_report(models, MACHINE, extra={"data": {"name": "mnist", "test": 10_000}})


def test_build_report_has_version_machine_models_and_extras(report):
    # "score": the weights the composite score used (nnzip.evaluate.score.score_rows)
    assert set(report) == {"nnzip_version", "machine", "models", "data", "score"}
    assert isinstance(report["nnzip_version"], str) and report["nnzip_version"]
    assert len(report["models"]) == 3


def test_extra_keys_cannot_overwrite_the_core(report):
    with pytest.raises(NnzipError, match="reserved"):
        build_report([], MACHINE, extra={"models": []})


def test_write_report_writes_three_files_and_no_temporaries(report, tmp_path):
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"json", "md", "html"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report.html", "report.json", "report.md"]
    assert load_report(paths["json"]) == json.loads(json.dumps(report))
    assert load_report(tmp_path / "out") == load_report(paths["json"])


def test_html_is_self_contained_with_embedded_charts(report):
    page = render_html(report)
    # The trade-off plot, one small-multiples figure of every metric, the robustness curves.
    assert page.count("data:image/png;base64,") == 3
    alts = re.findall(r'<img alt="([^"]+)"', page)
    assert alts == ["Trade-off", "Metrics", "Robustness"]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    assert "Test CPU" in page and "n/a" in page


def test_html_skips_charts_without_any_data(report):
    for model in report["models"]:
        model["robustness"] = None
    page = render_html(report)
    assert page.count("data:image/png;base64,") == 2
    assert 'alt="Robustness"' not in page and 'alt="Trade-off"' in page


def test_markdown_has_both_tables_human_units_and_the_machine(report):
    text = render_markdown(report)
    assert "| Model | Stage | Params |" in text
    assert "235k" in text and "918 KiB" in text and "3.13×" in text and "98.00%" in text
    assert "noise σ=0.1" in text and "FGSM ε=0.05" in text
    assert "Test CPU" in text
    int8_row = next(line for line in text.splitlines() if line.startswith("| mlp-int8 |"))
    assert int8_row.count("n/a") >= 5  # MFLOPs, two latencies, throughput, energy


def test_rich_table_has_one_column_per_model_and_one_row_per_metric(report):
    table = rich_table(report)
    assert isinstance(table, Table)
    assert len(table.columns) == 1 + len(report["models"])
    first = report["models"][0]
    assert table.columns[1].header == f"{first['name']}\n{first['stage']}"
    metrics = list(table.columns[0].cells)
    assert metrics[0] == "Params" and "Accuracy" in metrics and "Agreement" in metrics


def test_load_report_rejects_corrupt_json(tmp_path):
    path = tmp_path / "report.json"
    path.write_text('{"models": [', encoding="utf-8")
    with pytest.raises(NnzipError, match="not readable JSON"):
        load_report(path)


def test_load_report_rejects_missing_file_and_missing_keys(tmp_path, report):
    with pytest.raises(NnzipError, match="does not exist"):
        load_report(tmp_path / "nope.json")
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"nnzip_version": "0", "machine": {}}), encoding="utf-8")
    with pytest.raises(NnzipError, match="models"):
        load_report(path)
    del report["models"][0]["accuracy"]
    path.write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(NnzipError, match="accuracy"):
        load_report(path)


def _stages() -> list[dict]:
    return [
        {"label": "prune", "kind": "prune", "seconds": 12.5, "details": {
            "criterion": "magnitude", "achieved_sparsity": 0.9,
            "layer_sparsity": {"fc1.weight": 0.95, "fc2.weight": 0.5},
            "layer_params": {"fc1.weight": 1000, "fc2.weight": 40},
            "allocated_sparsity": {"fc1.weight": 0.96, "fc2.weight": 0.4},
            "sensitivity": {"fc1.weight": {"0": 0.98, "0.5": 0.97, "0.9": 0.9},
                            "fc2.weight": {"0": 0.98, "0.5": 0.6, "0.9": 0.2}}}},
        {"label": "channels", "kind": "prune_channels", "seconds": 3.0, "details": {
            "widths_before": {"conv1": 16, "fc": 10}, "widths_after": {"conv1": 8, "fc": 10},
            "skipped_layers": []}},
        {"label": "int4", "kind": "quantize", "seconds": 1.0, "details": {
            "mode": "static", "layer_bits": {"fc1": 4, "fc2": 8},
            "weight_error": {"fc1": 0.0123, "fc2": 4.5e-05}}},
    ]


def test_stage_details_become_tables_and_a_sensitivity_chart(report):
    charts_without = render_html(report).count("data:image/png;base64,")
    report["stages"] = _stages()
    page = render_html(report)
    assert page.count("data:image/png;base64,") == charts_without + 1  # the sensitivity chart
    assert 'alt="Sensitivity"' in page
    assert "prune (prune) · 12.5 s" in page and "Per-layer sparsity" in page
    # fc1: 1k weights, 95 % zeros -> 50 kept; allocated 96 %.
    assert "<td>fc1.weight</td><td>1k</td><td>96.00%</td><td>95.00%</td><td>50</td>" in page
    assert "<td>conv1</td><td>16</td><td>8</td><td>50.00%</td>" in page
    assert "<td>skipped_layers</td><td>none</td>" in page
    assert '"widths_before"' not in page  # rendered as tables, not dumped as JSON
    assert "<td>fc1</td><td>4</td><td>1.23e-02</td>" in page
    text = render_markdown(report)
    assert "## Stage channels (prune_channels) · 3.0 s" in text
    assert "| fc2.weight | 40 | 40.00% | 50.00% | 20 |" in text


def test_sensitivity_chart_is_a_png_and_empty_curves_draw_nothing():
    from nnzip.evaluate.details import sensitivity_chart

    png = sensitivity_chart(_stages()[0]["details"]["sensitivity"])
    assert png is not None and png.startswith(b"\x89PNG")
    assert sensitivity_chart({}) is None and sensitivity_chart({"fc.weight": {}}) is None


def _mixed_stage() -> dict:
    return {"label": "mixed", "kind": "mixed_precision", "seconds": 4.0, "details": {
        "budget": {"average_bits": 4.0}, "achieved_average_bits": 3.9,
        "layer_params": {"conv1": 500, "fc1": 40_000},
        "bit_sensitivity": {"conv1": {"2": 0.03, "4": 2.4e-4, "8": 6.7e-7},
                            "fc1": {"2": 0.04, "4": 4e-5, "8": 0.0}},
        "bit_accuracy_drop": {"conv1": {"2": 0.01, "4": 0.0, "8": 0.0},
                              "fc1": {"2": 0.004, "4": 0.0, "8": 0.0}},
        "layer_bits": {"conv1": 8, "fc1": 4},
        "weight_error": {"conv1": 1.2e-5, "fc1": 0.0123}}}


def test_mixed_precision_details_become_one_table_and_a_bits_chart(report):
    charts_without = render_html(report).count("data:image/png;base64,")
    report["stages"] = [_mixed_stage()]
    page = render_html(report)
    assert page.count("data:image/png;base64,") == charts_without + 1
    assert 'alt="Mixed precision"' in page and "Per-layer mixed precision" in page
    # Layer, weights, chosen bits, weight error, KL at 2/4/8 bits, val. drop (points) at 2/4/8.
    assert ("<td>fc1</td><td>40k</td><td>4</td><td>1.23e-02</td><td>4.00e-02</td>"
            "<td>4.00e-05</td><td>0.00e+00</td><td>0.4</td><td>0.0</td><td>0.0</td>") in page
    assert "Per-layer quantization" not in page  # its columns are in the mixed table
    assert '"bit_sensitivity"' not in page and "<td>budget</td>" in page
    text = render_markdown(report)
    assert ("| Layer | Weights | Chosen bits | Weight error (relative) | KL @2b | KL @4b | KL @8b "
            "| Drop @2b (pts) |") in text
    assert "| conv1 | 500 | 8 | 1.20e-05 | 3.00e-02 | 2.40e-04 | 6.70e-07 | 1.0 | 0.0 | 0.0 |" \
        in text


def test_bit_allocation_chart_is_a_png_and_needs_a_sensitivity_table():
    from nnzip.evaluate.details import bit_allocation_chart

    png = bit_allocation_chart(_mixed_stage()["details"])
    assert png is not None and png.startswith(b"\x89PNG")
    assert bit_allocation_chart({"layer_bits": {"fc1": 4}}) is None
