"""Perplexity is exp of the mean cross-entropy over every target token of the split, whatever
the batch size; predictions come back shaped like the targets, for agreement."""

import math

import pytest
import torch
import torch.nn.functional as F
from lm_helpers import tiny_lm, tiny_lm_data
from torch import nn

from nnzip.data.splits import eval_batch_size
from nnzip.errors import NnzipError
from nnzip.evaluate.accuracy import agreement
from nnzip.evaluate.language import next_token_scores, perplexity, perplexity_change


class Uniform(nn.Module):
    """Equal logits over the vocabulary at every position."""

    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocabulary) + 0 * self.anchor


@pytest.fixture(scope="module")
def data():
    return tiny_lm_data()


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity(data):
    assert perplexity(Uniform(data.num_classes), data) == pytest.approx(data.num_classes,
                                                                        rel=1e-6)


def test_perplexity_is_exp_of_the_mean_token_cross_entropy_at_any_batch_size(data):
    model = tiny_lm(data)
    x, y = data.test.tensors
    with torch.no_grad():
        logits = model(x)
    expected = math.exp(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                              y.reshape(-1))))
    scores = next_token_scores(model, data, batch_size=3)
    assert scores.tokens == y.numel()
    assert scores.perplexity == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, data, batch_size=16) == pytest.approx(expected, rel=1e-5)
    assert scores.bits_per_token == pytest.approx(math.log2(expected), rel=1e-5)
    assert torch.equal(scores.predictions, logits.argmax(dim=-1))


def test_kl_to_a_reference_is_zero_for_itself_and_the_mean_per_token_otherwise(data):
    model, other = tiny_lm(data), tiny_lm(data, seed=1)
    assert next_token_scores(model, data).kl_to_reference is None
    assert next_token_scores(model, data, reference=model).kl_to_reference == pytest.approx(
        0.0, abs=1e-6)
    x = data.test.tensors[0]
    with torch.no_grad():
        log_p, log_q = F.log_softmax(other(x), -1), F.log_softmax(model(x), -1)
    expected = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    measured = next_token_scores(model, data, batch_size=5, reference=other).kl_to_reference
    assert expected > 0 and measured == pytest.approx(expected, rel=1e-4)


def test_perplexity_change_is_paired_by_sequence(data):
    model, other = tiny_lm(data), tiny_lm(data, seed=1)
    mine, theirs = next_token_scores(model, data), next_token_scores(other, data)
    assert mine.token_losses.shape == data.test.tensors[1].shape
    assert float(mine.token_losses.double().mean()) == pytest.approx(mine.cross_entropy,
                                                                     rel=1e-6)
    change, error = perplexity_change(mine, theirs)
    assert change == pytest.approx(100 * (mine.perplexity / theirs.perplexity - 1), rel=1e-6)
    differences = (mine.token_losses - theirs.token_losses).double().mean(dim=1)
    assert error == pytest.approx(100 * float(differences.std()) / len(differences) ** 0.5,
                                  rel=1e-6)
    assert perplexity_change(mine, mine) == (0.0, 0.0)


def test_agreement_of_next_token_predictions(data):
    model, other = tiny_lm(data), tiny_lm(data, seed=1)
    own = next_token_scores(model, data).predictions
    assert own.shape == data.test.tensors[1].shape
    assert agreement(own, next_token_scores(model, data, batch_size=5).predictions) == 1.0
    assert agreement(own, next_token_scores(other, data).predictions) < 1.0


def test_evaluation_batches_keep_logits_small(data, mnist):
    assert eval_batch_size(mnist) == 256
    assert eval_batch_size(data) == 2**24 // (16 * 30522)


def test_a_model_that_is_not_a_language_model_is_a_clear_error(data):
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(data.num_classes, 4)

        def forward(self, x):
            return self.embed(x).mean(dim=1)

    with pytest.raises(NnzipError, match="must give .batch, positions, vocabulary."):
        perplexity(Pooled(), data)
