"""The composite score: its arithmetic, renormalization, weights from recipes and the CLI."""

import math

import pytest

from nnzip.cli import main
from nnzip.errors import NnzipError
from nnzip.evaluate import REPORT_MODEL_KEYS
from nnzip.evaluate.report import build_report, render_html, render_markdown
from nnzip.evaluate.score import (
    ScoreWeights,
    composite_score,
    parse_score_weights,
    score_gains,
    score_rows,
    score_weights,
)
from nnzip.recipe import parse_recipe
from nnzip.search.objectives import parse_metric

BASELINE = {
    "name": "net", "stage": "baseline", "task": "classify", "size_bytes": 400_000,
    "latency_ms": {"batch1": {"p50": 2.0}, "batch64": {"p50": 40.0}},
    "accuracy": 0.99, "energy_j": None, "energy_estimate_j": 8e-6,
    "robustness": {"gaussian": {"0.1": 0.98, "0.2": 0.90}, "fgsm": {"0.1": 0.50}},
    "shift": {"metric": "accuracy", "values": {"rotate@1": 0.9}, "mean": 0.80},
}
# 4x smaller, 2x faster at batch 1 and 4x at batch 64, half the energy, 1 point less accurate,
# robustness -1/-2/+0 points, shift -3 points.
ROW = {
    "name": "net", "stage": "quantize", "task": "classify", "size_bytes": 100_000,
    "latency_ms": {"batch1": {"p50": 1.0}, "batch64": {"p50": 10.0}},
    "accuracy": 0.98, "energy_j": None, "energy_estimate_j": 4e-6,
    "robustness": {"gaussian": {"0.1": 0.97, "0.2": 0.88}, "fgsm": {"0.1": 0.50}},
    "shift": {"metric": "accuracy", "values": {"rotate@1": 0.87}, "mean": 0.77},
}


def test_gains_are_points_and_doublings():
    gains = score_gains(ROW, BASELINE)
    assert gains == pytest.approx({"accuracy": -1.0, "size": 2.0, "latency": 1.5,
                                   "energy": 1.0, "robustness": -1.0, "shift": -3.0})
    assert score_gains(BASELINE, BASELINE) == pytest.approx(dict.fromkeys(gains, 0.0))


def test_score_is_the_weighted_mean_of_the_gains():
    # Defaults: accuracy 3, the other five 1 -> (3*-1 + 2 + 1.5 + 1 - 1 - 3) / 8.
    assert composite_score(ROW, BASELINE) == pytest.approx(-2.5 / 8)
    weights = parse_score_weights("accuracy=1,size=2,latency=0,energy=0,robustness=0,shift=0")
    assert composite_score(ROW, BASELINE, weights) == pytest.approx((-1 + 2 * 2) / 3)
    assert composite_score(BASELINE, BASELINE) == 0.0


def test_a_missing_ingredient_is_left_out_and_the_weights_renormalized():
    row = {**ROW, "shift": None, "energy_estimate_j": None}
    # shift and energy gone: (3*-1 + 2 + 1.5 - 1) / 6.
    assert composite_score(row, BASELINE) == pytest.approx(-0.5 / 6)
    scores, summary = score_rows([BASELINE, ROW, row], BASELINE)
    assert summary["left_out"] == ["energy", "shift"]  # every row is scored on the same terms
    assert summary["used"] == pytest.approx({"accuracy": 0.5, "size": 1 / 6, "latency": 1 / 6,
                                             "robustness": 1 / 6})
    assert scores == pytest.approx([0.0, -0.5 / 6, -0.5 / 6])
    # A measured energy is preferred, but only when both rows have it.
    measured = {**ROW, "energy_j": 0.5}
    assert score_gains(measured, BASELINE)["energy"] == pytest.approx(1.0)  # the estimates
    assert score_gains(measured, {**BASELINE, "energy_j": 2.0})["energy"] == pytest.approx(2.0)


def test_language_model_and_encoder_use_their_task_metric():
    base = {"task": "lm", "perplexity": 20.0, "accuracy": 0.3, "size_bytes": 100}
    row = {"task": "lm", "perplexity": 22.0, "accuracy": 0.3, "size_bytes": 50}
    assert score_gains(row, base)["accuracy"] == pytest.approx(-100 * math.log(1.1))
    encoder = {"task": "embed", "spearman": 0.80, "accuracy": None}
    assert score_gains({**encoder, "spearman": 0.79}, encoder)["accuracy"] == pytest.approx(-1)


@pytest.mark.parametrize(("text", "message"), [
    ("acuracy=2", "unknown ingredient 'acuracy' (did you mean 'accuracy'?)"),
    ("size=x", "weight of 'size' is 'x', not a number"),
    ("size", "'size' is not NAME=WEIGHT"),
    ("latency=-1", "weight 'latency'"),
    ("accuracy=0,size=0,latency=0,energy=0,robustness=0,shift=0", "every weight is 0"),
    ("", "is empty"),
])
def test_bad_weights_are_refused_naming_the_key(text, message):
    with pytest.raises(NnzipError, match="valid ingredients|NAME=WEIGHT|not a number|empty") \
            as caught:
        parse_score_weights(text)
    assert message in str(caught.value)


def test_recipe_score_key_sets_the_weights_and_bad_ones_name_the_recipe():
    stages = [{"finetune": {"epochs": 1}}]
    recipe = parse_recipe({"stages": stages, "score": {"accuracy": 5, "size": 2}}, "r.yaml")
    assert recipe.score == ScoreWeights(accuracy=5, size=2)
    assert recipe.to_dict()["score"]["accuracy"] == 5
    assert parse_recipe({"stages": stages}, "r.yaml").score is None
    with pytest.raises(NnzipError, match=r"recipe r.yaml.*unknown ingredient 'sise' \(did you "
                                         r"mean 'size'\?\)"):
        parse_recipe({"stages": stages, "score": {"sise": 1}}, "r.yaml")
    with pytest.raises(NnzipError, match="must be a mapping"):
        score_weights([1, 2], "recipe r.yaml")


def test_report_scores_every_row_against_the_baseline_and_names_the_weights():
    rows = [{**dict.fromkeys(REPORT_MODEL_KEYS), **row} for row in (BASELINE, ROW)]
    report = build_report(rows, {"cpu_model": "Test CPU"},
                          score_weights=ScoreWeights(accuracy=1, robustness=0, shift=0))
    assert [row["score"] for row in report["models"]] == pytest.approx([0.0, 3.5 / 4])
    assert report["score"]["used"] == pytest.approx(dict.fromkeys(
        ("accuracy", "size", "latency", "energy"), 0.25))
    assert "accuracy 0.25, size 0.25, latency 0.25, energy 0.25" in render_markdown(report)
    page = render_html(report)
    assert "<th>Score</th>" in page and "<td>+0.00</td></tr>" in page
    assert f"<td>{report['models'][1]['score']:+.2f}</td></tr>" in page


def test_score_is_a_maximized_search_objective():
    metric = parse_metric("score")
    assert metric.direction == "maximize"
    assert metric.value(ROW, BASELINE) == pytest.approx(-2.5 / 8)
    with pytest.raises(NnzipError, match="no 'score'"):
        metric.value({"name": "x"}, {"name": "y"})


def test_cli_refuses_bad_score_weights_in_one_line(capsys, tmp_path):
    code = main(["report", str(tmp_path / "missing.json"), "--score-weights", "speed=2"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown ingredient 'speed'" in err and "valid ingredients" in err


def test_compress_scores_with_the_recipes_weights_unless_the_caller_gives_its_own(
        tiny_model, tiny_data, fast_config):
    from dataclasses import replace

    from nnzip.pipeline import compress

    recipe = parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "finetune_epochs": 0}}],
                           "score": {"accuracy": 1, "size": 0, "latency": 0,
                                     "robustness": 0, "energy": 0, "shift": 0}}, "r.yaml")
    config = replace(fast_config, robustness_samples=8)
    report = compress(tiny_model, recipe, tiny_data, eval_config=config, progress=False).report
    assert report["score"]["used"] == {"accuracy": 1.0}
    base, pruned = report["models"]
    assert pruned["score"] == pytest.approx(100 * (pruned["accuracy"] - base["accuracy"]))
    given = replace(config, score_weights=parse_score_weights(
        "accuracy=0,latency=0,robustness=0,energy=0,shift=0"))
    report = compress(tiny_model, recipe, tiny_data, eval_config=given, progress=False).report
    assert report["score"]["used"] == {"size": 1.0}
    assert report["models"][1]["score"] == pytest.approx(
        math.log2(base["size_bytes"] / report["models"][1]["size_bytes"]))


def test_cli_report_rescores_a_saved_report_with_new_weights(tmp_path, capsys):
    import json

    confidence = {"metric": "accuracy", "difference": -1.0, "ci_low": -1.3, "ci_high": -0.7,
                  "level": 0.95, "p_value": 1e-9, "test": "mcnemar", "within_noise": False}
    rows = [{**dict.fromkeys(REPORT_MODEL_KEYS), **row} for row in (BASELINE, ROW)]
    rows[1].update(confidence=confidence)  # a row whose FGSM was not measured has a note:
    rows[1]["robustness"] = {**ROW["robustness"], "note": "FGSM not measured: no gradient"}
    saved = build_report(rows, {"cpu_model": "Test CPU"})
    (tmp_path / "report.json").write_text(json.dumps(saved))
    code = main(["report", str(tmp_path / "report.json"), "--out", str(tmp_path / "again"),
                 "--score-weights", "accuracy=1,latency=0,energy=0,robustness=0,shift=0"])
    assert code == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["score"]["used"] == {"accuracy": 0.5, "size": 0.5}
    assert again["models"][1]["score"] == pytest.approx((-1 + 2) / 2)
    assert again["models"][1]["confidence"] == confidence
    assert "-1.00 [-1.30, -0.70]" in (tmp_path / "again" / "report.md").read_text()
