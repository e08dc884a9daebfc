"""Differences with confidence: is a compressed model's change of the task metric real or noise?

Both models are judged on the *same* test samples, so the comparison is paired (Dietterich
1998, "Approximate statistical tests for comparing supervised classification learning
algorithms"): most samples are right (or wrong) for both, and only the samples where they
disagree carry information. A paired test is therefore far more sensitive than comparing two
independent accuracies (a 98 % accuracy on 10 000 images has a standard error of 0.14 points on
its own, but two models that disagree on 20 images differ by at most 0.2 points).

- **Interval**: a paired bootstrap (Efron & Tibshirani 1993, ch. 13): the test samples are
  resampled with replacement *jointly* for both models, the difference recomputed on each
  resample, and the 2.5th / 97.5th percentiles give the 95 % interval.
- **p-value**: for accuracy of one prediction per sample, McNemar's exact test (McNemar 1947):
  under "no difference" each discordant sample (one model right, the other wrong) is equally
  likely to favour either model, so the count favouring the compressed model is
  Binomial(discordant, 1/2). For other per-sample scores (accuracy over the positions of a
  tagger or segmenter), a paired permutation test (sign flips of the per-sample differences).
  For a metric that is not a mean of per-sample values (STS Spearman over sentence pairs), the
  interval is a bootstrap of the metric itself over pairs and the p-value a permutation test
  that swaps the two models' scores of randomly chosen pairs.

Only the per-sample outputs the task already computes are used: no model is run again.
:func:`seed_summary` is the other half of honest numbers: mean ± std over training seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnzip.errors import NnzipError

#: Bootstrap resamples and permutations: the 95 % bounds move by ~0.01 points between seeds at
#: 2 000 (a p-value of 0.05 has a Monte-Carlo standard error of 0.005).
RESAMPLES = 2000
LEVEL = 0.95
#: Gathered values per chunk of resamples: 10 000 test samples × 2 000 resamples at once would
#: be 160 MB of indices.
_CHUNK_VALUES = 2_000_000
#: Up to this many distinct per-sample differences, resamples are drawn as multinomial counts.
_FEW_VALUES = 16


def _resample_indices(rng: np.random.Generator, count: int, resamples: int):
    """Index matrices ``(rows, count)`` of bootstrap resamples, a bounded chunk at a time."""
    rows = max(1, _CHUNK_VALUES // max(count, 1))
    done = 0
    while done < resamples:
        chunk = min(rows, resamples - done)
        yield rng.integers(0, count, size=(chunk, count))
        done += chunk


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def _check_paired(model: np.ndarray, reference: np.ndarray, what: str) -> None:
    if model.shape != reference.shape:
        raise NnzipError(f"paired {what}: the model has {model.shape} values and the reference "
                         f"{reference.shape}: score both on the same test samples")
    if len(model) == 0:
        raise NnzipError(f"paired {what}: no test samples to compare")


def bootstrap_mean_difference(model: Sequence[float], reference: Sequence[float], *,
                              resamples: int = RESAMPLES, level: float = LEVEL,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(model − reference) under a paired bootstrap of samples."""
    model, reference = np.asarray(model, float), np.asarray(reference, float)
    _check_paired(model, reference, "bootstrap")
    differences = model - reference
    if not differences.any():  # identical on every sample: every resample gives 0
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    values, counts = np.unique(differences, return_counts=True)
    if len(values) <= _FEW_VALUES:
        # Few distinct differences (-1, 0, +1 for correctness): a resample's mean depends only
        # on how often each value is drawn, which is multinomial; the same distribution as
        # drawing indices, at a cost independent of the number of samples.
        drawn = rng.multinomial(len(differences), counts / len(differences), size=resamples)
        draws = drawn @ values / len(differences)
    else:
        draws = np.concatenate([differences[index].mean(axis=1)
                                for index in _resample_indices(rng, len(differences), resamples)])
    return _interval(draws, level)


def mcnemar_p_value(model_correct: Sequence[bool], reference_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: discordant samples favouring the model ~ Bin(n, 1/2)."""
    from scipy.stats import binomtest

    model = np.asarray(model_correct, bool)
    reference = np.asarray(reference_correct, bool)
    _check_paired(model, reference, "McNemar test")
    model_only = int((model & ~reference).sum())
    reference_only = int((reference & ~model).sum())
    discordant = model_only + reference_only
    if discordant == 0:
        return 1.0
    return float(binomtest(model_only, discordant, 0.5).pvalue)


def permutation_p_value(model: Sequence[float], reference: Sequence[float], *,
                        resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip) p-value of mean(model − reference).

    Under "no difference" each sample's two values are exchangeable, so each difference's sign
    is a fair coin; the p-value counts sign-flipped means at least as far from 0 as the one seen
    (the observed one included, so it is never 0: Phipson & Smyth 2010)."""
    model, reference = np.asarray(model, float), np.asarray(reference, float)
    _check_paired(model, reference, "permutation test")
    differences = model - reference
    observed = abs(differences.mean())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_VALUES // len(differences))
    extreme, done = 0, 0
    while done < resamples:
        chunk = min(rows, resamples - done)
        signs = rng.choice((-1.0, 1.0), size=(chunk, len(differences)))
        # A relative tolerance: a flipped mean equal to the observed one up to rounding counts.
        extreme += int((np.abs((signs * differences).mean(axis=1))
                        >= observed * (1 - 1e-12)).sum())
        done += chunk
    return (extreme + 1) / (resamples + 1)


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def _spearman_rows(predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``predicted`` with the matching row of ``gold``
    (Pearson of ranks, ties averaged, as scipy.stats.spearmanr)."""
    first, second = _ranks(predicted), _ranks(gold)
    first = first - first.mean(axis=-1, keepdims=True)
    second = second - second.mean(axis=-1, keepdims=True)
    norms = np.sqrt((first ** 2).sum(axis=-1) * (second ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (first * second).sum(axis=-1) / norms


def spearman_difference(model_scores: Sequence[float], reference_scores: Sequence[float],
                        gold: Sequence[float], *, resamples: int = RESAMPLES,
                        level: float = LEVEL, seed: int = 0) -> dict:
    """Spearman(model, gold) − Spearman(reference, gold) over sentence pairs, with a paired
    bootstrap interval over pairs and a pair-swap permutation p-value.

    ``model_scores`` / ``reference_scores`` are each model's cosine of every pair; a resample
    draws pairs with replacement (the same pairs for both models); a permutation swaps the two
    models' cosines of a random half of the pairs."""
    model = np.asarray(model_scores, float)
    reference = np.asarray(reference_scores, float)
    gold = np.asarray(gold, float)
    _check_paired(model, reference, "Spearman comparison")
    if gold.shape != model.shape or len(gold) < 3:
        raise NnzipError(f"a Spearman comparison needs one gold score per pair and at least 3 "
                         f"pairs, got {len(gold)} gold scores for {len(model)} pairs")
    both = np.stack([model, reference])
    observed = _spearman_rows(both, np.broadcast_to(gold, both.shape))
    difference = float(observed[0] - observed[1])
    if np.array_equal(model, reference):
        return _confidence("spearman", difference, (0.0, 0.0), 1.0, "permutation", level)
    rng = np.random.default_rng(seed)
    draws, extreme, done = [], 0, 0
    for index in _resample_indices(rng, len(gold), resamples):
        values = _spearman_rows(both[:, index], gold[index])
        draws.append(values[0] - values[1])
    rows = max(1, _CHUNK_VALUES // len(gold))
    while done < resamples:
        chunk = min(rows, resamples - done)
        swap = rng.random((chunk, len(gold))) < 0.5
        values = _spearman_rows(np.stack([np.where(swap, reference, model),
                                          np.where(swap, model, reference)]), gold)
        extreme += int((np.abs(values[0] - values[1]) >= abs(difference) * (1 - 1e-12)).sum())
        done += chunk
    interval = _interval(np.nan_to_num(np.concatenate(draws)), level)
    return _confidence("spearman", difference, interval, (extreme + 1) / (resamples + 1),
                       "permutation", level)


def _confidence(metric: str, difference: float, interval: tuple[float, float], p_value: float,
                test: str, level: float) -> dict:
    """The report row's ``confidence`` entry.

    ``within_noise`` when the interval contains 0 *or* the test does not reject "no
    difference" at 1 − ``level``: the two disagree only when very few samples are discordant,
    where a percentile bootstrap is too narrow (5 discordant of 10 000, all favouring the
    reference: bootstrap [−0.10, −0.01] points, since a resample misses all five only with
    probability e⁻⁵; McNemar's exact p = 2/2⁵ = 0.06), and then the exact test is right."""
    low, high = interval
    return {"metric": metric, "difference": difference, "ci_low": low, "ci_high": high,
            "level": level, "p_value": p_value, "test": test,
            "within_noise": bool(low <= 0.0 <= high or p_value >= 1 - level)}


def accuracy_difference(model_correct, reference_correct, *, resamples: int = RESAMPLES,
                        level: float = LEVEL, seed: int = 0) -> dict:
    """The ``confidence`` entry of an accuracy difference, in percentage points.

    ``model_correct`` / ``reference_correct`` are ``(samples,)`` booleans (one prediction per
    sample: McNemar's exact test) or ``(samples, positions)`` (a tagger, a segmenter: the
    per-sample accuracy over positions, and a permutation test, since positions of one sample
    are not independent and the sample is the unit resampled)."""
    model = np.asarray(model_correct, float)
    reference = np.asarray(reference_correct, float)
    _check_paired(model, reference, "accuracy comparison")
    if model.ndim > 1:
        model = model.reshape(len(model), -1).mean(axis=1)
        reference = reference.reshape(len(reference), -1).mean(axis=1)
        test = "permutation"
        p_value = permutation_p_value(model, reference, resamples=resamples, seed=seed)
    else:
        test = "mcnemar"
        p_value = mcnemar_p_value(model > 0.5, reference > 0.5)
    low, high = bootstrap_mean_difference(model, reference, resamples=resamples, level=level,
                                          seed=seed)
    difference = float((model - reference).mean())
    return _confidence("accuracy", 100 * difference, (100 * low, 100 * high), p_value, test,
                       level)


def perplexity_difference(model_losses, reference_losses, *, resamples: int = RESAMPLES,
                          level: float = LEVEL, seed: int = 0) -> dict:
    """The ``confidence`` entry of a perplexity difference (model − reference, in perplexity
    units; lower is better), from both models' ``(sequences, positions)`` token losses.

    The sequence is the unit (its tokens are not independent): the interval is a paired
    bootstrap of sequences, recomputing exp(mean loss) of both models on each resample, and the
    p-value a sign-flip permutation test of the per-sequence mean loss differences."""
    model = np.asarray(model_losses, float)
    reference = np.asarray(reference_losses, float)
    _check_paired(model, reference, "perplexity comparison")
    model = model.reshape(len(model), -1).mean(axis=1)
    reference = reference.reshape(len(reference), -1).mean(axis=1)
    difference = float(np.exp(model.mean()) - np.exp(reference.mean()))
    if np.array_equal(model, reference):
        return _confidence("perplexity", difference, (0.0, 0.0), 1.0, "permutation", level)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([np.exp(model[index].mean(axis=1))
                            - np.exp(reference[index].mean(axis=1))
                            for index in _resample_indices(rng, len(model), resamples)])
    p_value = permutation_p_value(model, reference, resamples=resamples, seed=seed)
    return _confidence("perplexity", difference, _interval(draws, level), p_value,
                       "permutation", level)


def correct_per_sample(logits, labels) -> np.ndarray:
    """Whether each prediction is right, one row per test sample: ``(samples,)`` for one
    prediction per sample, ``(samples, positions)`` for a model that classifies positions."""
    from nnzip.core.outputs import prediction_rows

    rows, flat = prediction_rows(logits, labels)
    correct = (rows.argmax(dim=1) == flat).cpu().numpy()
    return correct.reshape(len(labels), -1) if correct.shape[0] != len(labels) else correct


def mean_difference(metric: str, model: Sequence[float], reference: Sequence[float], *,
                    scale: float = 1.0, resamples: int = RESAMPLES, level: float = LEVEL,
                    seed: int = 0) -> dict:
    """The ``confidence`` entry of a metric that is a mean of per-sample values (times
    ``scale``): paired bootstrap interval and sign-flip permutation p-value."""
    model_values, reference_values = np.asarray(model, float), np.asarray(reference, float)
    low, high = bootstrap_mean_difference(model_values, reference_values, resamples=resamples,
                                          level=level, seed=seed)
    p_value = permutation_p_value(model_values, reference_values, resamples=resamples, seed=seed)
    difference = float((model_values - reference_values).mean())
    return _confidence(metric, scale * difference, (scale * low, scale * high), p_value,
                       "permutation", level)


def format_difference(confidence: dict | None, digits: int = 2) -> str | None:
    """``-0.04 [-0.15, +0.07]``, prefixed ``≈`` when within noise (see :func:`_confidence`)."""
    if not confidence or confidence.get("difference") is None:
        return None
    text = (f"{confidence['difference']:+.{digits}f} [{confidence['ci_low']:+.{digits}f}, "
            f"{confidence['ci_high']:+.{digits}f}]")
    return f"{NOISE_MARK}{text}" if confidence.get("within_noise") else text


#: Marks a difference whose interval contains 0; the HTML report greys such cells.
NOISE_MARK = "≈ "


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation of one number over training seeds."""

    mean: float
    std: float
    count: int

    def text(self, digits: int = 4, scale: float = 1.0) -> str:
        """``0.9812 ± 0.0004 (3 seeds)``; ``scale=100`` shows fractions as percentages."""
        return (f"{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f} "
                f"({self.count} seed{'s' if self.count != 1 else ''})")

    def __str__(self) -> str:
        return self.text()


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """Mean ± standard deviation (n − 1 in the denominator; 0 for a single seed) of ``values``,
    one per seed: what a benchmark run with several seeds reports."""
    numbers = [float(value) for value in values]
    if not numbers:
        raise NnzipError("seed_summary needs at least one value (one per seed)")
    if not all(math.isfinite(value) for value in numbers):
        raise NnzipError(f"seed_summary got a value that is not finite: {numbers}")
    std = float(np.std(numbers, ddof=1)) if len(numbers) > 1 else 0.0
    return SeedSummary(mean=float(np.mean(numbers)), std=std, count=len(numbers))

