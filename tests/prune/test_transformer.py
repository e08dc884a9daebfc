"""Head, FFN-neuron and layer pruning of the real MiniLM: the surgery is exact, the config
follows the shapes, and bad requests are clear errors that leave the model unchanged."""

import copy

import pytest
import torch

from nnzip.errors import NnzipError
from nnzip.prune import (
    drop_layers,
    encoder_layers,
    encoder_linear_weights,
    encoder_shape,
    prune_heads,
    prune_heads_and_neurons,
    prune_neurons,
    unit_importance,
)
from nnzip.recipe import STAGES, parse_recipe
from nnzip.stage import Context

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion.",
             "Two dogs are running through a field of grass.", "The stock market fell today."]


@pytest.fixture(scope="module")
def token_ids(minilm):
    return minilm.tokenize(SENTENCES)[0]


@pytest.fixture
def encoder(minilm):
    """A fresh copy of the session's MiniLM (tests change it in place)."""
    return copy.deepcopy(minilm)


def _embed(model, ids):
    with torch.no_grad():
        return model(ids)


def _zeroed(model, ids, layer_index: int, part: str, units: list[int], size: int):
    """Embeddings with some heads' context (or FFN activations) zeroed by a hook."""
    layer = encoder_layers(model)[layer_index]
    target = layer.attention_output if part == "heads" else layer.output

    def hook(_module, args):
        x = args[0].clone()
        for unit in units:
            x[..., unit * size:(unit + 1) * size] = 0
        return (x,)

    handle = target.register_forward_pre_hook(hook)
    try:
        return _embed(model, ids)
    finally:
        handle.remove()


def test_removing_heads_equals_zeroing_them_and_updates_the_attention_config(encoder,
                                                                             token_ids):
    expected = _zeroed(encoder, token_ids, 2, "heads", [0, 5, 11], 32)
    prune_heads(encoder, {2: [0, 5, 11]})
    layer = encoder_layers(encoder)[2]
    assert layer.attention.num_attention_heads == 9
    assert layer.attention.all_head_size == 9 * 32
    assert layer.attention.attention_head_size == 32
    for name in ("query", "key", "value"):
        linear = getattr(layer.attention, name)
        assert linear.weight.shape == (288, 384) and linear.bias.shape == (288,)
    assert encoder.transformer.encoder.layer[2].attention.output.dense.weight.shape == (384, 288)
    assert encoder_shape(encoder)[1]["heads"] == 12  # other layers untouched
    torch.testing.assert_close(_embed(encoder, token_ids), expected, atol=1e-5, rtol=1e-4)


def test_removing_ffn_neurons_equals_zeroing_them(encoder, token_ids):
    neurons = [3, 100, 1535]
    expected = _zeroed(encoder, token_ids, 4, "neurons", neurons, 1)
    prune_neurons(encoder, {4: neurons})
    layer = encoder.transformer.encoder.layer[4]
    assert layer.intermediate.dense.weight.shape == (1533, 384)
    assert layer.output.dense.weight.shape == (384, 1533)
    torch.testing.assert_close(_embed(encoder, token_ids), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("criterion", ["activation", "gradient"])
def test_thirty_percent_of_heads_and_neurons_leave_a_smaller_working_encoder(encoder,
                                                                            token_ids,
                                                                            criterion):
    before = sum(p.numel() for p in encoder.parameters())
    reference = _embed(encoder, token_ids)
    if criterion == "gradient":
        from nnzip.distill.embedding import cosine_similarity_loss

        ids1, ids2 = encoder.tokenize(SENTENCES[:2])[0], encoder.tokenize(SENTENCES[2:])[0]
        batches = [(ids1, ids2, torch.tensor([1.0, 0.5]))]
        removed = prune_heads_and_neurons(encoder, batches, 0.3, 0.3, criterion="gradient",
                                          loss_fn=cosine_similarity_loss)
    else:
        removed = prune_heads_and_neurons(encoder, [token_ids], 0.3, 0.3)
    assert all(len(heads) == 4 for heads in removed["heads"].values())
    assert encoder_shape(encoder) == [{"heads": 8, "head_size": 32, "neurons": 1075}] * 6
    # 4 heads × 4 · 32 · 384 + 4 · 32 (q, k, v biases) and 461 neurons × (2 · 384 + 1) per layer
    assert before - sum(p.numel() for p in encoder.parameters()) == \
        6 * (4 * (4 * 32 * 384 + 3 * 32) + 461 * (2 * 384 + 1))
    embeddings = _embed(encoder, token_ids)
    assert embeddings.shape == (4, 384)
    assert float(torch.cosine_similarity(embeddings, reference).mean()) > 0.5


def test_activation_scores_rank_a_silenced_head_last(encoder, token_ids):
    with torch.no_grad():
        layer = encoder.transformer.encoder.layer[0].attention.output.dense
        layer.weight[:, 7 * 32:8 * 32] = 0  # head 7 now adds nothing to the residual stream
    scores = unit_importance(encoder, [token_ids])
    assert int(scores.heads[0].argmin()) == 7 and float(scores.heads[0][7]) == 0.0
    assert len(scores.neurons) == 6 and scores.neurons[0].shape == (1536,)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratios_outside_zero_to_one_are_rejected(encoder, token_ids, ratio):
    with pytest.raises(NnzipError, match=r"head_ratio must be a fraction.*\[0, 1\)"):
        prune_heads_and_neurons(encoder, [token_ids], ratio, 0.3)
    with pytest.raises(NnzipError, match=r"neuron_ratio must be a fraction"):
        prune_heads_and_neurons(encoder, [token_ids], 0.3, ratio)


def test_pruning_every_head_of_a_layer_is_an_error_and_changes_nothing(encoder, token_ids):
    before = _embed(encoder, token_ids)
    with pytest.raises(NnzipError, match="all 12 heads of layer 1"):
        prune_heads(encoder, {0: [1], 1: list(range(12))})
    with pytest.raises(NnzipError, match="all 12 heads"):
        prune_heads_and_neurons(encoder, [token_ids], 0.99, 0.0)  # round(0.99 · 12) = 12
    with pytest.raises(NnzipError, match="heads 0..11, cannot remove \\[12\\]"):
        prune_heads(encoder, {0: [12]})
    with pytest.raises(NnzipError, match="layers 0..5"):
        prune_heads(encoder, {6: [0]})
    assert encoder_shape(encoder)[0]["heads"] == 12
    torch.testing.assert_close(_embed(encoder, token_ids), before)


def test_a_model_that_is_not_a_bert_or_vit_style_encoder_is_refused(mlp, digits):
    with pytest.raises(NnzipError, match="not a BERT- or ViT-style encoder"):
        prune_heads(mlp, {0: [0]})
    with pytest.raises(NnzipError, match="not a BERT- or ViT-style encoder"):
        prune_heads_and_neurons(mlp, [digits.test.tensors[0][:4]], 0.3, 0.3)
    with pytest.raises(NnzipError, match="not a BERT- or ViT-style encoder"):
        drop_layers(mlp, [0])


def test_gradient_criterion_needs_a_loss(encoder, token_ids):
    with pytest.raises(NnzipError, match="needs loss_fn"):
        unit_importance(encoder, [token_ids], "gradient")


def test_dropping_every_other_layer_leaves_a_three_layer_encoder(encoder, token_ids):
    kept = [encoder.transformer.encoder.layer[i] for i in (1, 3, 5)]
    drop_layers(encoder, [1, 3, 5])
    assert list(encoder.transformer.encoder.layer) == kept
    assert encoder.transformer.config.num_hidden_layers == 3
    assert _embed(encoder, token_ids).shape == (4, 384)
    with pytest.raises(NnzipError, match="distinct indices in 0..2"):
        drop_layers(encoder, [0, 0])


def test_prune_heads_and_drop_layers_are_recipe_stages(encoder, digits):
    assert {"prune_heads", "drop_layers"} <= set(STAGES)
    recipe = parse_recipe({"stages": [
        {"prune_heads": {"head_ratio": 0.25, "neuron_ratio": 0.5, "calibration_sentences": 8}},
        {"drop_layers": {"keep": [0, 2, 4]}}]})
    context = Context(data=digits, progress=False)
    for step in recipe.steps:
        encoder = step.stage.apply(encoder, context)
    assert encoder_shape(encoder) == [{"heads": 9, "head_size": 32, "neurons": 768}] * 3
    with pytest.raises(NnzipError, match="option 'head_ratio'"):
        parse_recipe({"stages": [{"prune_heads": {"head_ratio": 1.0}}]})


def test_encoder_linear_weights_are_the_36_matrices_of_the_six_layers(minilm):
    names = encoder_linear_weights(minilm)
    assert len(names) == 36 and len(set(names)) == 36
    assert names[0] == "transformer.encoder.layer.0.attention.self.query.weight"
    assert not any("embeddings" in name or "pooler" in name for name in names)
