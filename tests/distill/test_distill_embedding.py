"""Sentence-embedding distillation and the STS pair fine-tune, on the real MiniLM."""

import copy

import pytest
import torch

from nnzip.data.sts import calibration_sentences, load_sts
from nnzip.distill.embedding import (
    cosine_similarity_loss,
    distill_embeddings,
    embedding_loss,
    fit_sts_pairs,
    pair_batches,
)
from nnzip.errors import NnzipError
from nnzip.evaluate.embedding import encode, fidelity, token_batches
from nnzip.evaluate.latency import fixed_threads
from nnzip.prune import drop_layers, mask_hook
from nnzip.train import TrainConfig, fit_batches


@pytest.fixture(autouse=True)
def _one_thread():
    # MiniLM training on the shared 2 cores: one thread each, as the rest of the suite.
    with fixed_threads(1):
        yield


def test_embedding_losses_are_zero_for_the_teacher_and_check_shapes():
    torch.manual_seed(0)
    teacher = torch.randn(4, 8)
    assert float(embedding_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(teacher, teacher, "mse")) == 0.0
    assert float(embedding_loss(-teacher, teacher)) == pytest.approx(2.0)
    with pytest.raises(NnzipError, match="same hidden size"):
        embedding_loss(torch.randn(4, 6), teacher)
    with pytest.raises(NnzipError, match="unknown embedding loss"):
        embedding_loss(teacher, teacher, "kl")


def test_distilling_a_three_layer_student_brings_it_closer_to_the_teacher(minilm):
    sentences = calibration_sentences(96, seed=5)
    train, held_out = sentences[:64], sentences[64:]
    student = copy.deepcopy(minilm)
    drop_layers(student, [1, 3, 5])
    reference = encode(minilm, held_out)
    before = fidelity(encode(student, held_out), reference)
    batches, _ = token_batches(minilm, train, batch_size=16)
    losses = distill_embeddings(student, minilm, batches, TrainConfig(epochs=2, lr=2e-4))
    after = fidelity(encode(student, held_out), reference)
    assert losses[1] < losses[0]
    # Measured: 0.54 before, 0.76 after on these held-out training sentences.
    assert after > before + 0.05, (before, after)
    assert not student.training


def test_the_teacher_is_not_its_own_student(minilm):
    with pytest.raises(NnzipError, match="copy of the teacher"):
        distill_embeddings(minilm, minilm, [minilm.tokenize(["a"])[0]])


def test_sts_pair_fine_tune_lowers_the_cosine_similarity_loss(minilm):
    pairs = load_sts("train").head(32)
    student = copy.deepcopy(minilm)
    drop_layers(student, [1, 3, 5])
    batches = pair_batches(student, pairs.sentence1, pairs.sentence2, pairs.scores, 16)

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(cosine_similarity_loss(student, b)) for b in batches) / len(batches)

    before = mean_loss()
    fit_sts_pairs(student, batches, TrainConfig(epochs=2, lr=1e-4))
    assert mean_loss() < before
    with pytest.raises(NnzipError, match="same length"):
        pair_batches(student, ["a"], ["b", "c"], [1.0])


def test_fit_batches_keeps_masks_through_training():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    mask = {"weight": torch.tensor([[True, False] * 4])}
    batches = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(4)]
    losses = fit_batches(model, batches,
                         lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]),
                         TrainConfig(epochs=3, lr=1e-2), step_hook=mask_hook(mask))
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert bool((model.weight[:, 1::2] == 0).all())
    with pytest.raises(NnzipError, match="at least one training batch"):
        fit_batches(model, [], lambda m, b: m(b).sum())
