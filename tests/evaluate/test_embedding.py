"""Embedding metrics: encode keeps sentence order, Spearman of the real MiniLM on STS is high,
fidelity and neighbour overlap are 1 for the model itself and drop for a damaged one."""

import copy

import pytest
import torch

from nnzip.data.sts import load_sts
from nnzip.errors import NnzipError
from nnzip.evaluate.embedding import (
    encode,
    evaluate_sts,
    fidelity,
    neighbour_overlap,
    spearman,
    sts_embeddings,
    sts_scores,
)


@pytest.fixture(scope="module")
def dev_pairs():
    return load_sts("dev").head(48)


def test_encode_keeps_order_whatever_the_batching(minilm):
    sentences = ["Short.", "A much longer sentence about a man playing a guitar on stage.",
                 "Mid length sentence here."]
    one = encode(minilm, sentences, batch_size=1)
    batched = encode(minilm, sentences, batch_size=2)
    assert one.shape == (3, 384)
    assert torch.allclose(one, batched, atol=1e-5)


def test_fp32_minilm_spearman_on_dev_subset_is_plausible(minilm, dev_pairs):
    result = evaluate_sts(minilm, dev_pairs, batch_size=16)
    # all-MiniLM-L6-v2 scores ≈ 0.87 on the full dev split; 48 pairs are noisier.
    assert 0.7 < result["spearman"] <= 1.0


def test_reference_metrics_are_one_for_itself_and_drop_when_damaged(minilm, dev_pairs):
    _, reference = sts_embeddings(minilm, dev_pairs, batch_size=16)
    same = evaluate_sts(minilm, dev_pairs, reference, batch_size=16, k=5)
    assert same["cosine_to_reference"] == pytest.approx(1.0, abs=1e-5)
    assert same["neighbour_overlap"] == pytest.approx(1.0)
    damaged = copy.deepcopy(minilm)
    with torch.no_grad():
        layer = damaged.transformer.encoder.layer[0].attention.self.query
        layer.weight.add_(torch.randn_like(layer.weight) * layer.weight.std() * 3)
    worse = evaluate_sts(damaged, dev_pairs, reference, batch_size=16, k=5)
    assert worse["cosine_to_reference"] < 0.999
    assert worse["neighbour_overlap"] < 1.0


def test_metric_inputs_are_checked():
    with pytest.raises(NnzipError, match="shape"):
        fidelity(torch.ones(3, 4), torch.ones(2, 4))
    with pytest.raises(NnzipError, match="k must be"):
        neighbour_overlap(torch.randn(3, 4), torch.randn(3, 4), k=3)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)


def test_scores_of_one_encode_equal_evaluate_sts(minilm, dev_pairs):
    sentences, reference = sts_embeddings(minilm, dev_pairs, batch_size=16)
    damaged = copy.deepcopy(minilm)
    with torch.no_grad():
        layer = damaged.transformer.encoder.layer[1].intermediate.dense
        layer.weight.mul_(1.5)
    _, embeddings = sts_embeddings(damaged, dev_pairs, batch_size=16)
    assert sts_scores(sentences, embeddings, dev_pairs, reference, k=5) == \
        evaluate_sts(damaged, dev_pairs, reference, batch_size=16, k=5)
    assert sts_scores(sentences, reference, dev_pairs) == evaluate_sts(minilm, dev_pairs,
                                                                        batch_size=16)


def test_encode_progress_goes_to_stderr_and_counts_the_batches(minilm, capsys):
    sentences = load_sts("dev").head(10).sentences()
    quiet = encode(minilm, sentences, batch_size=4)
    assert capsys.readouterr().err == ""
    shown = encode(minilm, sentences, batch_size=4, progress=True, description="encode check")
    captured = capsys.readouterr()
    assert torch.equal(quiet, shown)
    batches = -(-len(sentences) // 4)
    assert "encode check" in captured.err and f"{batches}/{batches}" in captured.err
    assert captured.out == ""
