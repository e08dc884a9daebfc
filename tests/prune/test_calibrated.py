"""Wanda and SparseGPT: exact sparsity and 2:4 patterns, and a smaller layer-output error than
magnitude pruning, on LeNet-300-100 with real MNIST and on the real MiniLM."""

import copy

import pytest
import torch
from torch import nn

from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.prune import Prune, calibrated_prune, layer_sparsity, sparsegpt_prune, wanda_prune
from nnzip.prune.calibrated import (
    _pre_projection,
    calibrated_prune_with_skips,
    conv_input_rows,
    input_hessian,
    row_masks,
    sparsegpt_prune_weight,
    wanda_mask,
)
from nnzip.quant.gptq import layer_input_rows
from nnzip.recipe import parse_recipe
from nnzip.stage import Context

pytestmark = pytest.mark.usefixtures("one_thread")


def _relative_error(weight: torch.Tensor, pruned: torch.Tensor, rows: torch.Tensor) -> float:
    """‖W X − W' X‖² / ‖W X‖² on input rows X."""
    return float(((rows @ (weight - pruned).T) ** 2).sum() / ((rows @ weight.T) ** 2).sum())


def _magnitude_rows(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    return weight * row_masks(weight.abs(), sparsity)


def _magnitude_24(weight: torch.Tensor) -> torch.Tensor:
    groups = weight.reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.abs().topk(2, dim=2).indices, True)
    return weight * keep.reshape(weight.shape)


def _assert_24(weight: torch.Tensor) -> None:
    nonzero = (weight.reshape(weight.shape[0], -1, 4) != 0).sum(dim=2)
    assert int(nonzero.max()) <= 2


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_half_of_every_row_of_every_lenet300_layer_is_removed_exactly(lenet300, mnist, method):
    model = copy.deepcopy(lenet300)
    masks = calibrated_prune(model, calibration_batches(mnist, 2), method, 0.5)
    assert sorted(masks) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    for name, param in model.named_parameters():
        if name in masks:
            kept = (param != 0).sum(dim=1)
            assert torch.equal(masks[name].sum(dim=1), torch.full_like(kept, param.shape[1] // 2))
            assert bool((kept <= param.shape[1] // 2).all())
    assert layer_sparsity(model) == {"fc1.weight": 0.5, "fc2.weight": 0.5, "fc3.weight": 0.5}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_two_four_keeps_exactly_two_of_every_four_inputs(lenet300, mnist, method):
    model = copy.deepcopy(lenet300)
    masks = calibrated_prune(model, calibration_batches(mnist, 2), method, n=2, m=4)
    for name, param in model.named_parameters():
        if name in masks:
            groups = masks[name].reshape(param.shape[0], -1, 4).sum(dim=2)
            assert bool((groups == 2).all())
            _assert_24(param.detach())


def test_calibrated_pruning_keeps_more_mnist_accuracy_than_magnitude(lenet300, mnist):
    """80 % of every row, one-shot, no fine-tune (measured: magnitude 61 %, Wanda 65 %,
    SparseGPT 87 % on the test set; the dense model 96 %)."""
    images, labels = mnist.test.tensors[0][:2000], mnist.test.tensors[1][:2000]
    batches = calibration_batches(mnist, 4)

    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(images).argmax(1) == labels).float().mean())

    magnitude = copy.deepcopy(lenet300)
    for module in (magnitude.fc1, magnitude.fc2, magnitude.fc3):
        module.weight.data = _magnitude_rows(module.weight.data, 0.8)
    wanda, sparsegpt = copy.deepcopy(lenet300), copy.deepcopy(lenet300)
    wanda_prune(wanda, batches, 0.8)
    sparsegpt_prune(sparsegpt, batches, 0.8)
    assert accuracy(sparsegpt) > accuracy(magnitude) + 0.1
    assert accuracy(wanda) > accuracy(magnitude)


@pytest.fixture(scope="module")
def minilm_ffn_inputs(minilm):
    """Inputs of layer 0's FFN output layer (1536 GELU activations) on training sentences, and
    on other training sentences for a held-out check."""
    from nnzip.data.sts import calibration_sentences
    from nnzip.evaluate.embedding import token_batches

    sentences = calibration_sentences(48, seed=3)
    layer = minilm.transformer.encoder.layer[0].output.dense
    calibration, _ = token_batches(minilm, sentences[:32], batch_size=16)
    held_out, _ = token_batches(minilm, sentences[32:], batch_size=16)
    rows = []
    handle = layer.register_forward_pre_hook(
        lambda _m, args: rows.append(layer_input_rows(layer, args[0])))
    with torch.no_grad():
        for batch in held_out:
            minilm(batch)
    handle.remove()
    return layer, input_hessian(minilm, layer, calibration), torch.cat(rows)


@pytest.mark.parametrize("pattern", ["50%", "2:4"])
def test_wanda_and_sparsegpt_beat_magnitude_on_a_minilm_layer_output(minilm_ffn_inputs,
                                                                     pattern):
    layer, hessian, held_out = minilm_ffn_inputs
    weight = layer.weight.detach()
    nm = {"n": 2, "m": 4} if pattern == "2:4" else {}
    sparsity = None if nm else 0.5
    magnitude = _magnitude_24(weight) if nm else _magnitude_rows(weight, 0.5)
    wanda = weight * wanda_mask(weight, hessian, sparsity, **nm)
    sparsegpt, keep = sparsegpt_prune_weight(weight, hessian, sparsity, **nm)
    for pruned in (magnitude, wanda, sparsegpt):
        assert float((pruned == 0).float().mean()) == 0.5
        if nm:
            _assert_24(pruned)
    assert torch.equal(sparsegpt != 0, keep & (weight != 0))
    errors = {name: _relative_error(weight, pruned, held_out) for name, pruned in
              (("magnitude", magnitude), ("wanda", wanda), ("sparsegpt", sparsegpt))}
    # On held-out sentences. A broken score or a wrong update gives ≥ the magnitude error.
    assert errors["wanda"] < 0.9 * errors["magnitude"], errors
    assert errors["sparsegpt"] < 0.8 * errors["magnitude"], errors


def test_sparsegpt_with_uncorrelated_inputs_is_magnitude_pruning():
    torch.manual_seed(0)
    weight = torch.randn(8, 64)
    pruned, _ = sparsegpt_prune_weight(weight, torch.eye(64), 0.5)
    # With H = I no error moves onto other weights: each row keeps its larger half.
    torch.testing.assert_close(pruned, _magnitude_rows(weight, 0.5))


def test_keyword_batches_give_the_same_hessian_as_token_id_batches(minilm):
    ids, mask = minilm.tokenize(["A man is playing a guitar.", "Two dogs run."])
    layer = minilm.transformer.encoder.layer[1].attention.self.query
    from_ids = input_hessian(minilm, layer, [ids])
    from_mapping = input_hessian(minilm, layer, [{"input_ids": ids, "attention_mask": mask}])
    torch.testing.assert_close(from_ids, from_mapping)


@pytest.mark.parametrize("options, message", [
    ({"sparsity": 1.0}, r"\[0, 1\)"),
    ({"sparsity": -0.1}, r"\[0, 1\)"),
    ({"n": 3, "m": 2}, "1 <= N <= M"),
    ({"sparsity": 0.5, "n": 2, "m": 4}, "not both"),
    ({"n": 2}, "both n and m"),
    ({}, "give a sparsity"),
])
def test_bad_sparsity_options_are_clear_errors(lenet300, mnist, options, message):
    model = copy.deepcopy(lenet300)
    before = model.fc1.weight.detach().clone()
    with pytest.raises(NnzipError, match=message):
        wanda_prune(model, calibration_batches(mnist, 1), **options)
    assert torch.equal(model.fc1.weight, before)


def test_missing_calibration_data_and_unknown_method_are_errors(lenet300, mnist):
    with pytest.raises(NnzipError, match="needs calibration data"):
        sparsegpt_prune(copy.deepcopy(lenet300), [], 0.5)
    with pytest.raises(NnzipError, match="unknown calibrated pruning method"):
        calibrated_prune(copy.deepcopy(lenet300), calibration_batches(mnist, 1), "obs", 0.5)
    with pytest.raises(NnzipError, match="Hessian must be 4×4"):
        wanda_mask(torch.ones(2, 4), torch.eye(3), 0.5)


def test_prune_stage_runs_wanda_and_sparsegpt_from_a_recipe(trained_mlp, digits):
    recipe = parse_recipe({"name": "t", "stages": [
        {"prune": {"criterion": "sparsegpt", "pattern": "n:m", "finetune_epochs": 0}}]})
    model = copy.deepcopy(trained_mlp)
    context = Context(data=digits, progress=False)
    recipe.steps[0].stage.apply(model, context)
    assert context.details["criterion"] == "sparsegpt"
    assert context.details["achieved_sparsity"] == 0.5
    for name in ("fc1", "fc2", "fc3"):
        _assert_24(getattr(model, name).weight.detach())
    wanda = copy.deepcopy(trained_mlp)
    Prune(sparsity=0.7, criterion="wanda", finetune_epochs=1).apply(
        wanda, Context(data=digits, progress=False))
    assert all(abs(s - 0.7) < 0.01 for s in layer_sparsity(wanda).values())


def test_prune_stage_rejects_schedules_and_scopes_calibrated_criteria_do_not_have():
    with pytest.raises(NnzipError, match="one shot"):
        parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "criterion": "wanda",
                                            "schedule": "gradual"}}]})
    with pytest.raises(NnzipError, match="within each output row"):
        parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "criterion": "sparsegpt",
                                            "scope": "layer"}}]})


@pytest.mark.parametrize("conv, inputs", [
    (nn.Conv1d(3, 5, 3, stride=2, padding=2, dilation=2), torch.randn(2, 3, 17)),
    (nn.Conv2d(3, 5, (3, 2), padding="same", padding_mode="reflect"), torch.randn(2, 3, 9, 8)),
    (nn.Conv3d(2, 4, 3, stride=(1, 2, 1), padding=1, dilation=(1, 1, 2)),
     torch.randn(2, 2, 6, 7, 8)),
])
def test_conv_input_rows_times_the_weight_is_the_convolution_in_1_2_and_3_d(conv, inputs):
    torch.manual_seed(0)
    rows = conv_input_rows(conv, inputs)
    product = rows @ conv.weight.detach().reshape(conv.out_channels, -1).T + conv.bias.detach()
    expected = conv(inputs).detach().movedim(1, -1).reshape(-1, conv.out_channels)
    torch.testing.assert_close(product, expected, atol=1e-5, rtol=1e-5)


def test_conv2d_rows_match_the_gptq_unfold():
    conv, inputs = nn.Conv2d(3, 4, 3, padding=1, stride=2), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(conv_input_rows(conv, inputs), layer_input_rows(conv, inputs))


@pytest.mark.parametrize("batch_first", [True, False])
def test_out_proj_input_is_captured_although_attention_never_calls_out_proj(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        output = attention(x, x, x, need_weights=False)[0]
        before_projection = _pre_projection(attention, (x, x, x), {"need_weights": False})
        projected = nn.functional.linear(before_projection, attention.out_proj.weight,
                                         attention.out_proj.bias)
    torch.testing.assert_close(projected, output)


class _TwiceAndUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(torch.relu(self.shared(x))))


def test_a_layer_called_twice_sees_both_inputs_and_an_unused_one_is_skipped_by_name(caplog):
    torch.manual_seed(0)
    model, x = _TwiceAndUnused().eval(), torch.randn(6, 8)
    with torch.no_grad():
        second = torch.relu(model.shared(x))
    expected = (x.T @ x + second.T @ second) / 12
    torch.testing.assert_close(input_hessian(model, model.shared, [x]), expected)
    with caplog.at_level("WARNING"):
        masks = wanda_prune(model, [x], 0.5)
    assert list(masks) == ["shared.weight", "head.weight"]
    assert "unused.weight" in caplog.text and "never uses it" in caplog.text
    assert int((model.unused.weight == 0).sum()) == 0


def test_one_grouped_conv_is_skipped_with_its_reason_not_the_whole_model():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(4, 4, 6, 6)
    model(x)
    masks, skipped = calibrated_prune_with_skips(model, [x], "sparsegpt", 0.5)
    assert list(masks) == ["0.weight", "3.weight"]
    assert list(skipped) == ["1.weight"] and "groups=8" in skipped["1.weight"]


def test_nothing_left_to_prune_is_an_error_naming_every_weight_and_why():
    model = nn.Sequential(nn.Embedding(10, 8), nn.GRU(8, 8))
    with pytest.raises(NnzipError, match=r"nothing left.*0.weight: embedding table.*"
                                         r"1.weight_ih_l0: RNN gate matrix"):
        wanda_prune(model, [torch.randint(0, 10, (2, 5))], 0.5)
