"""Differences with confidence: paired bootstrap intervals, McNemar and permutation p-values."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate import evaluate, render_html, render_markdown
from nnzip.evaluate.confidence import (
    NOISE_MARK,
    accuracy_difference,
    bootstrap_mean_difference,
    format_difference,
    mcnemar_p_value,
    mean_difference,
    permutation_p_value,
    perplexity_difference,
    seed_summary,
    spearman_difference,
)
from nnzip.evaluate.report import build_report


def _paired_correctness(seed: int, count: int, model_only: float, reference_only: float):
    """Correctness of two models on ``count`` samples: both right with probability 0.85, only
    the model / only the reference right with the given probabilities, else both wrong. The
    true accuracy difference is model_only - reference_only."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=count, p=[0.85, model_only, reference_only,
                                        0.15 - model_only - reference_only])
    return (kind == 0) | (kind == 1), (kind == 0) | (kind == 2)


def test_bootstrap_interval_covers_a_known_difference_at_near_the_nominal_rate():
    # 300 synthetic test sets whose true difference is -3 points: a 95 % interval must cover it
    # in ~95 % of them (binomial sd over 300 sets: 1.3 points).
    covered = 0
    for seed in range(300):
        model, reference = _paired_correctness(seed, 1000, 0.02, 0.05)
        low, high = bootstrap_mean_difference(model, reference, resamples=1000, seed=seed)
        covered += low <= -0.03 <= high
    assert 0.92 <= covered / 300 <= 0.98


def test_a_real_loss_is_outside_noise_and_a_tiny_one_within():
    model, reference = _paired_correctness(0, 10_000, 0.002, 0.012)  # -1 point
    confidence = accuracy_difference(model, reference)
    assert confidence["difference"] == pytest.approx(100 * (model.mean() - reference.mean()))
    assert confidence["ci_low"] < confidence["difference"] < confidence["ci_high"] < 0
    assert confidence["p_value"] < 1e-6 and not confidence["within_noise"]
    assert confidence["test"] == "mcnemar" and confidence["level"] == 0.95
    model, reference = _paired_correctness(1, 10_000, 0.001, 0.001)
    assert accuracy_difference(model, reference)["within_noise"]


def test_mcnemar_p_value_matches_a_hand_computed_case():
    # 1 sample only the model gets right, 5 only the reference: two-sided exact binomial
    # p = 2 * P(X <= 1 | n=6, 1/2) = 2 * (1 + 6) / 64 = 0.21875; concordant samples do not count.
    model = [1, 0, 0, 0, 0, 0, 1, 1, 0]
    reference = [0, 1, 1, 1, 1, 1, 1, 1, 0]
    assert mcnemar_p_value(model, reference) == pytest.approx(14 / 64)
    assert accuracy_difference(model, reference)["p_value"] == pytest.approx(14 / 64)
    # 0 against 8 discordant: 2 / 2**8.
    assert mcnemar_p_value([0] * 8 + [1], [1] * 9) == pytest.approx(2 / 256)


def test_identical_models_differ_by_zero_with_p_one():
    correct = np.random.default_rng(0).random(500) < 0.9
    confidence = accuracy_difference(correct, correct.copy())
    assert (confidence["difference"], confidence["ci_low"], confidence["ci_high"]) == (0, 0, 0)
    assert confidence["p_value"] == 1.0 and confidence["within_noise"]
    scores = np.random.default_rng(1).random(50)
    assert permutation_p_value(scores, scores) == 1.0
    gold = np.arange(50.0)
    same = spearman_difference(scores, scores, gold, resamples=200)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["within_noise"]


def test_permutation_test_finds_a_consistent_shift_and_positions_use_it():
    rng = np.random.default_rng(0)
    reference = rng.random(200)
    assert permutation_p_value(reference + 0.05, reference, resamples=500) == pytest.approx(
        1 / 501)  # every sign flip is smaller than the all-positive observed mean
    confidence = mean_difference("fidelity", reference + 0.05, reference, resamples=500)
    assert confidence["difference"] == pytest.approx(0.05)
    assert confidence["ci_low"] == pytest.approx(0.05) and confidence["test"] == "permutation"
    # A tagger: correctness per position; the sample is the unit, the test a permutation.
    model, base = _paired_correctness(2, 400 * 8, 0.0, 0.05)
    per_position = accuracy_difference(model.reshape(400, 8), base.reshape(400, 8),
                                       resamples=500)
    assert per_position["test"] == "permutation" and per_position["p_value"] < 0.01
    assert per_position["difference"] == pytest.approx(100 * (model.mean() - base.mean()))


def test_spearman_difference_is_scipys_and_its_interval_holds_it():
    rng = np.random.default_rng(0)
    gold = rng.random(300)
    reference = gold + rng.normal(0, 0.3, 300)
    model = reference + rng.normal(0, 0.3, 300)  # a noisier encoder: lower Spearman
    confidence = spearman_difference(model, reference, gold, resamples=400)
    expected = spearmanr(model, gold).statistic - spearmanr(reference, gold).statistic
    assert confidence["difference"] == pytest.approx(expected)
    assert confidence["ci_low"] < expected < confidence["ci_high"] < 0
    assert confidence["p_value"] < 0.01 and confidence["metric"] == "spearman"


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(NnzipError, match="same test samples"):
        accuracy_difference([1, 0, 1], [1, 0])
    with pytest.raises(NnzipError, match="no test samples"):
        bootstrap_mean_difference([], [])
    with pytest.raises(NnzipError, match="at least one value"):
        seed_summary([])


def test_seed_summary_is_mean_and_sample_std():
    summary = seed_summary([0.98, 0.982, 0.981])
    assert summary.mean == pytest.approx(0.981) and summary.std == pytest.approx(0.001)
    assert summary.count == 3 and str(summary) == "0.9810 ± 0.0010 (3 seeds)"
    assert summary.text(digits=2, scale=100) == "98.10 ± 0.10 (3 seeds)"
    assert seed_summary([0.5]).std == 0.0


def test_evaluate_with_a_reference_reports_the_paired_difference(tiny_model, tiny_data,
                                                                  fast_config):
    baseline = evaluate(tiny_model, tiny_data, config=fast_config)
    assert baseline["confidence"] is None  # no reference, nothing to compare
    twin = evaluate(tiny_model, tiny_data, reference=copy.deepcopy(tiny_model),
                    config=fast_config)
    assert twin["confidence"]["difference"] == 0 and twin["confidence"]["p_value"] == 1.0
    torch.manual_seed(1)
    other = nn.Sequential(nn.Flatten(), nn.Linear(36, 10))
    row = evaluate(other, tiny_data, name="other", stage="changed", reference=tiny_model,
                   config=fast_config)
    confidence = row["confidence"]
    assert confidence["difference"] == pytest.approx(100 * (row["accuracy"]
                                                            - baseline["accuracy"]))
    assert confidence["ci_low"] <= confidence["difference"] <= confidence["ci_high"]
    assert confidence["test"] == "mcnemar" and 0 < confidence["p_value"] <= 1
    # The report shows the interval in the gains table and a table of its own; within noise
    # is marked (Markdown) and greyed (HTML).
    report = build_report([baseline, row], {"cpu_model": "Test CPU"})
    markdown, page = render_markdown(report), render_html(report)
    shown = format_difference(confidence)
    assert "## Differences with confidence" in markdown and shown in markdown
    assert shown in page and "Δ points [95% CI]" in page
    assert (f'<td class="noise">{shown}' in page) == confidence["within_noise"]
    assert shown.startswith(NOISE_MARK) == confidence["within_noise"]


def test_perplexity_difference_is_paired_by_sequence():
    rng = np.random.default_rng(0)
    reference = rng.exponential(3.0, size=(60, 16))
    worse = reference + 0.1  # every token 0.1 nats worse: perplexity × e^0.1
    confidence = perplexity_difference(worse, reference, resamples=500)
    expected = math.exp(worse.mean()) - math.exp(reference.mean())
    assert confidence["difference"] == pytest.approx(expected)
    assert 0 < confidence["ci_low"] < expected < confidence["ci_high"]
    assert confidence["p_value"] == pytest.approx(1 / 501) and not confidence["within_noise"]
    same = perplexity_difference(reference, reference.copy())
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_language_model_rows_compare_perplexity_with_the_reference():
    from lm_helpers import tiny_lm, tiny_lm_data

    from nnzip.evaluate.config import EvalConfig
    from nnzip.tasks import task_of

    data = tiny_lm_data(test=8)
    model, reference = tiny_lm(data, seed=0), tiny_lm(data, seed=1)
    measured = task_of(data).measure(model, data, reference,
                                     EvalConfig(eval_batch_size=8, measure_latency=False))
    by_itself = task_of(data).measure(reference, data, None, EvalConfig(eval_batch_size=8))
    confidence = measured["confidence"]
    assert confidence["metric"] == "perplexity" and confidence["test"] == "permutation"
    assert confidence["difference"] == pytest.approx(
        measured["perplexity"] - by_itself["perplexity"], rel=1e-4)


def test_encoder_rows_compare_sts_spearman_over_pairs_without_a_second_encode(tiny_encoder):
    from nnzip.evaluate.config import EvalConfig
    from nnzip.tasks import sentence_data, task_of

    data = sentence_data(tiny_encoder, pairs=24, train_sentences=20, seed=0)
    config = EvalConfig(eval_batch_size=8)
    own = task_of(data).measure(tiny_encoder, data, None, config)
    assert own["confidence"] is None
    twin = task_of(data).measure(tiny_encoder, data, tiny_encoder, config)
    assert twin["confidence"]["difference"] == pytest.approx(0, abs=1e-6)
    changed = copy.deepcopy(tiny_encoder)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    confidence = task_of(data).measure(changed, data, tiny_encoder, config)
    measured = confidence["confidence"]
    assert measured["metric"] == "spearman" and measured["test"] == "permutation"
    # The reference's Spearman comes from the data's targets: its own embeddings.
    assert measured["difference"] == pytest.approx(confidence["spearman"] - own["spearman"],
                                                   abs=1e-5)
    assert measured["ci_low"] <= measured["difference"] <= measured["ci_high"]


def test_few_discordant_samples_are_within_noise_even_when_the_bootstrap_excludes_zero():
    # 5 of 10 000 samples right only for the reference: the percentile bootstrap misses all
    # five with probability e^-5 < 2.5 %, so its interval excludes 0, but McNemar's exact
    # p = 2 / 2**5 = 0.0625: not a real loss at the 95 % level.
    reference = np.ones(10_000, bool)
    model = reference.copy()
    model[:5] = False
    confidence = accuracy_difference(model, reference)
    assert confidence["ci_high"] < 0 and confidence["p_value"] == pytest.approx(0.0625)
    assert confidence["within_noise"]
    model[:12] = False  # 12 of 12 discordant: p = 2 / 2**12, interval below 0: a real loss
    assert not accuracy_difference(model, reference)["within_noise"]
