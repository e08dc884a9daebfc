"""Channel pruning, low-rank factorization and weight sharing on every user-style family.

Each method gives a correct result (finite outputs, exact where exactness is the contract, a
smaller model when it changed something, tied weights still one tensor counted once, every weight
either changed or skipped with a reason) or an NnzipError naming the layer and what to do.
"""

import pytest
import torch
from torch import nn

from nnzip.core.coverage import NOT_SELECTED
from nnzip.core.weights import find_weights
from nnzip.errors import NnzipError
from nnzip.evaluate.size import artifact_bytes, count_params, tensor_bytes
from nnzip.factorize import factorize_convs_result, factorize_linears_result
from nnzip.prune.structured import prune_channels_result
from nnzip.share import cluster_weights_result, product_quantize_result, unshare
from nnzip.share.modules import shared_weights
from tests.generality.conftest import example, relative_error

#: Families whose every channel group is refused: the reason names the layer.
NO_CHANNELS = {"lstm_lm": "rnn", "gru_lm": "rnn", "functional": "conv_weight"}
PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _unique_params(model: nn.Module) -> int:
    unique = {id(p): p for module in model.modules() for p in module.parameters(recurse=False)}
    return sum(p.numel() for p in unique.values())


def _output_layer(model: nn.Module) -> nn.Module | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def _kill_odd_channels(model: nn.Module) -> None:
    """Zero every odd output channel of each hidden conv/linear layer (and its BatchNorm).

    Odd channels are the same positions in every group of a grouped conv, so a pruner that keeps
    grouped convs uniform can remove exactly these; they then contribute nothing, and removing
    them must leave every output as it is.
    """
    output = _output_layer(model)
    for module in model.modules():
        if isinstance(module, PRODUCERS + NORMS) and module is not output:
            module.weight[1::2] = 0.0
            if module.bias is not None:
                module.bias[1::2] = 0.0


def _check_coverage(coverage, model_before_names: set[str]) -> None:
    records = {record.name: record for record in coverage.records}
    for name in model_before_names:
        record = records[name]
        assert record.changed or (record.note and record.note != NOT_SELECTED), name


def _assert_tied_once(model: nn.Module) -> None:
    if hasattr(model, "decoder"):
        assert count_params(model) == _unique_params(model)


def test_prune_channels_half_removes_dead_channels_exactly_or_names_the_layer(family):
    model, inputs = example(family)
    _kill_odd_channels(model)
    with torch.no_grad():
        expected = model(inputs)
    weights = {weight.name for weight in find_weights(model)}
    if family in NO_CHANNELS:
        with pytest.raises(NnzipError, match=f"{NO_CHANNELS[family]}.*exclude"):
            prune_channels_result(model, 0.5, inputs)
        return
    result = prune_channels_result(model, 0.5, inputs, "l1")
    pruned = result.model
    with torch.no_grad():
        outputs = pruned(inputs)
    assert torch.isfinite(outputs).all()
    # l1 scores a dead channel 0, so exactly the dead ones go: the outputs cannot move.
    torch.testing.assert_close(outputs, expected, atol=1e-5, rtol=1e-5)
    assert result.coverage.changed, "something was pruned"
    assert count_params(pruned) < count_params(model)
    assert artifact_bytes(pruned) < artifact_bytes(model)
    _check_coverage(result.coverage, weights)


def test_channel_shuffle_is_kept_with_the_layers_named():
    model, inputs = example("shufflenet")
    result = prune_channels_result(model, 0.5, inputs)
    kept = result.details["kept"]
    for layer in ("expand", "depthwise"):
        assert "channel shuffle" in kept[layer] and "expand" in kept[layer]
    pruned = result.model
    assert pruned.depthwise.out_channels == model.depthwise.out_channels == 24
    assert pruned.expand.out_channels == 24 and pruned.project.in_channels == 24
    assert pruned.stem.out_channels == 12  # the groups outside the shuffle are pruned
    skipped = result.coverage.skipped
    assert "channel shuffle" in skipped["depthwise.weight"]


def test_channel_shuffle_pruned_naively_is_wrong_which_is_why_it_is_kept():
    """Torch-Pruning maps the shuffle as identity: removing its group changes the outputs."""
    import torch_pruning as tp

    model, inputs = example("shufflenet")
    _kill_odd_channels(model)
    with torch.no_grad():
        expected = model(inputs)
    graph = tp.DependencyGraph().build_dependency(model, inputs)
    group = graph.get_pruning_group(model.expand, tp.prune_conv_out_channels,
                                    list(range(1, 24, 2)))
    group.prune()
    with torch.no_grad():
        assert relative_error(model(inputs), expected) > 1e-3


@pytest.mark.parametrize("factorize", ["svd", "tucker"])
def test_factorization_shrinks_or_says_why_and_keeps_ties(family, factorize):
    model, inputs = example(family)
    weights = {weight.name for weight in find_weights(model)}
    before_bytes, before_params = artifact_bytes(model), count_params(model)
    method = factorize_linears_result if factorize == "svd" else factorize_convs_result
    result = method(model, keep=0.5)
    with torch.no_grad():
        outputs = result.model(inputs)
    assert torch.isfinite(outputs).all()
    _check_coverage(result.coverage, weights)
    if result.coverage.changed:
        assert count_params(model) < before_params
        assert artifact_bytes(model) < before_bytes
    else:
        assert artifact_bytes(model) == before_bytes
    if hasattr(model, "decoder"):
        assert model.decoder.weight is model.embed.weight
        assert "tied" in result.coverage.skipped["embed.weight"] or factorize == "tucker"
    _assert_tied_once(model)
    for name, record in ((r.name, r) for r in result.coverage.records):
        if ".attn." in name or "self_attn" in name:
            assert not record.changed  # attention reads these directly: never swapped


@pytest.mark.parametrize("share", ["cluster", "product_quantize"])
def test_weight_sharing_covers_every_weight_once_and_keeps_ties(family, share):
    model, inputs = example(family)
    weights = {weight.name for weight in find_weights(model)}
    with torch.no_grad():
        reference = model(inputs)
    before = tensor_bytes(model)
    if share == "cluster":
        result = cluster_weights_result(model, 4)  # 16 shared values per weight
    else:
        result = product_quantize_result(model, dim=4, bits=4)
    with torch.no_grad():
        outputs = model(inputs)
    assert torch.isfinite(outputs).all()
    assert relative_error(outputs, reference) < 1.0
    _check_coverage(result.coverage, weights)
    assert result.coverage.changed_fraction > 0.35
    assert tensor_bytes(model) < before
    tables = shared_weights(model)
    if share == "cluster":
        for name in result.coverage.changed:
            assert tables[name].table().unique().numel() <= 16
    if hasattr(model, "decoder"):  # one tensor, one codebook, under both names
        assert tables["embed.weight"] is tables["decoder.weight"]
        assert result.coverage.records[0].aliases == ("decoder.weight",)
        unshare(model)
        assert model.decoder.weight is model.embed.weight
        assert count_params(model) == _unique_params(model)
