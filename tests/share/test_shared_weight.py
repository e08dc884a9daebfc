import copy

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.share import (
    SharedWeight,
    cluster_tensor,
    cluster_weights,
    product_quantize,
    share_weight,
    shared_weights,
    unshare,
)


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        layer.weight[layer.weight.abs() < 0.1] = 0  # a pruned layer: code 0 is a fixed zero
    shared = cluster_tensor(layer.weight, 3)
    share_weight(layer, shared)
    inputs = torch.randn(8, 6)
    dense = nn.Linear(6, 5)
    with torch.no_grad():
        dense.weight.copy_(layer.weight)
        dense.bias.copy_(layer.bias)
    layer(inputs).pow(2).sum().backward()
    dense(inputs).pow(2).sum().backward()
    codes = shared.codes.reshape(-1)
    expected = torch.zeros(shared.table_size).index_add_(0, codes, dense.weight.grad.reshape(-1))
    assert shared.zero_code
    assert torch.allclose(shared.centroids.grad, expected[1:], atol=1e-6)


def test_training_moves_centroids_but_never_pruned_zeros_or_assignments():
    torch.manual_seed(1)
    layer = nn.Linear(20, 4)
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    share_weight(layer, cluster_tensor(layer.weight, 2))
    codes_before = shared_weights(nn.Sequential(layer))["0.weight"].codes.clone()
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        layer(torch.randn(16, 20)).sum().backward()
        optimizer.step()
    assert torch.all(layer.weight[:, ::2] == 0)
    assert torch.equal(shared_weights(nn.Sequential(layer))["0.weight"].codes, codes_before)
    assert layer.weight.unique().numel() <= 4


def test_cluster_weights_uses_conv_and_linear_bits_and_leaves_a_working_model(lenet5_fresh):
    model = lenet5_fresh
    summary = cluster_weights(model, conv_bits=4, linear_bits=2)
    assert {n: s.bits for n, s in summary.items()} == {
        "conv1.weight": 4, "conv2.weight": 4, "fc1.weight": 2, "fc2.weight": 2}
    for name in shared_weights(model):
        weight = model.get_submodule(name.rpartition(".")[0]).weight
        assert weight.unique().numel() <= 2 ** summary[name].bits
    copy.deepcopy(model)(torch.randn(2, 1, 28, 28))
    unshare(model)
    assert all(isinstance(m.weight, nn.Parameter) for m in (model.conv1, model.fc1))


def test_product_quantization_shares_row_subvectors(lenet5_fresh):
    model = lenet5_fresh
    summary = product_quantize(model, dim=5, bits=4, layers=["conv2", "fc2"])
    shared = shared_weights(model)["fc2.weight"]
    assert shared.centroids.shape == (16, 5) and shared.codes.shape == (10, 100)
    rows = model.fc2.weight.reshape(-1, 5)
    assert torch.unique(rows, dim=0).shape[0] <= 16
    assert summary["conv2.weight"].relative_error < 1
    with pytest.raises(NnzipError, match="not divisible by dim=3"):
        product_quantize(model, dim=3, bits=2, layers=["conv1"])


def test_sharing_a_layer_twice_is_refused():
    layer = nn.Linear(3, 3)
    share_weight(layer, cluster_tensor(layer.weight, 2))
    with pytest.raises(NnzipError, match="already shared"):
        share_weight(layer, SharedWeight(torch.zeros(2), torch.zeros(9, dtype=torch.long),
                                         (3, 3), 1))


def test_a_tied_weight_is_clustered_once_and_stays_tied():
    from nnzip.models.examples import example_model
    from nnzip.share import cluster_weights_result

    model, tokens = example_model("lstm_lm")
    result = cluster_weights_result(model, 3, exclude=["rnn"])
    assert list(result.details) == ["embed.weight"]  # once, under its first name
    tables = shared_weights(model)
    assert tables["embed.weight"] is tables["decoder.weight"]
    assert model.decoder.weight.unique().numel() <= 8
    torch.testing.assert_close(model.decoder.weight, model.embed.weight)
    assert model(tokens).shape == (8, 12, 100)
    assert result.coverage.to_dict()["params"]["rnn.weight_ih_l0"]["note"] == \
        "not selected (layers/exclude)"
    unshare(model)
    assert model.decoder.weight is model.embed.weight


def test_attention_rnn_and_functional_weights_are_shared_in_place():
    from nnzip.models.examples import example_model
    from nnzip.share import cluster_weights_result

    for family, names in (("vit", ["blocks.0.attn.in_proj_weight",
                                   "blocks.0.attn.out_proj.weight"]),
                          ("gru_lm", ["rnn.weight_hh_l1"]),
                          ("functional", ["conv_weight", "fc_weight"])):
        model, inputs = example_model(family)
        reference = model(inputs)
        result = cluster_weights_result(model, 5, layers=names)
        assert result.coverage.changed == names
        outputs = model(inputs)  # the owners still read .weight: now the shared values
        assert not torch.equal(outputs, reference)
        assert (outputs - reference).norm() < 0.1 * reference.norm()
