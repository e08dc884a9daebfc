"""The report's first table: every row against the baseline, computed from a hand-made report."""

import pytest

from nnzip.evaluate.tables import baseline_index, gains_columns, gains_rows, short_labels


def _model(stage: str, size_bytes: int | None, p50_b1: float | None, p50_b64: float | None,
           **metrics) -> dict:
    return {"name": "mlp", "stage": stage, "task": metrics.pop("task", "classify"),
            "size_bytes": size_bytes,
            "latency_ms": {"batch1": {"p50": p50_b1}, "batch64": {"p50": p50_b64}}, **metrics}


@pytest.fixture
def models() -> list[dict]:
    # The baseline is not the first row: every ratio must still be taken against it.
    return [_model("pruned", 100_000, 1.0, 10.0, accuracy=0.9765, agreement=0.99),
            _model("baseline", 400_000, 2.0, 40.0, accuracy=0.98, agreement=1.0),
            _model("int8", 50_000, None, None, accuracy=None, agreement=None)]


def test_gains_are_relative_to_the_baseline_row(models):
    assert baseline_index(models) == 1
    assert gains_columns(models) == ["Model", "Stage", "× smaller", "Bytes", "Accuracy",
                                     "Δ points", "Speed-up b1", "Speed-up b64", "Agreement"]
    assert gains_rows(models) == [
        ["mlp", "pruned", "4.00×", "97.7 KiB", "97.65%", "-0.35", "2.00×", "4.00×", "99.00%"],
        ["mlp", "baseline", "1.00×", "391 KiB", "98.00%", "+0.00", "1.00×", "1.00×", "100.00%"],
        # What was not measured is n/a, never a ratio against nothing.
        ["mlp", "int8", "8.00×", "48.8 KiB", "n/a", "n/a", "n/a", "n/a", "n/a"],
    ]


def test_without_a_baseline_stage_the_first_row_is_the_reference(models):
    models[1]["stage"] = "dense"
    assert baseline_index(models) == 0
    assert gains_rows(models)[1][2] == "0.25×" and gains_rows(models)[1][6] == "0.50×"


def test_language_and_encoder_reports_use_their_own_metric():
    lm = [_model("baseline", 4000, 1.0, None, task="lm", perplexity=40.0),
          _model("int4", 1000, 0.5, None, task="lm", perplexity=43.17)]
    assert gains_columns(lm)[4:6] == ["Perplexity", "Δ"]
    assert gains_rows(lm)[1][4:6] == ["43.17", "+3.17"]
    embed = [_model("baseline", 4000, 1.0, 2.0, task="embed", spearman=0.8203, fidelity=1.0),
             _model("int8", 1000, 0.5, 1.0, task="embed", spearman=0.8150, fidelity=0.9912)]
    assert gains_columns(embed)[-1] == "Fidelity (cos)"
    assert gains_rows(embed)[1][4:6] == ["0.8150", "-0.0053"]
    assert gains_rows(embed)[1][-1] == "0.9912"


def test_charts_name_rows_by_stage_when_one_model_is_compressed(models):
    assert short_labels(models) == ["pruned", "baseline", "int8"]
    models[0]["name"] = "other"
    assert short_labels(models) == ["other", "mlp (baseline)", "mlp (int8)"]
