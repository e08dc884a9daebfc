"""Structured pruning removes channels for real and keeps the model correct and usable."""

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate import count_flops, count_params
from nnzip.evaluate.config import EvalConfig
from nnzip.models import create_model
from nnzip.models.mobilenet import InvertedResidual
from nnzip.models.resnet import BasicBlock
from nnzip.pipeline import compress
from nnzip.prune.structured import (
    PruneChannels,
    channel_counts,
    output_layers,
    prune_channels,
    prune_channels_result,
    unsupported_layers,
)
from nnzip.recipe import STAGES, parse_recipe

# One torch thread: on the shared 2-core machine two threads contend and run ~5x slower.

SHAPE = (1, 28, 28)
FAST = EvalConfig(warmup=1, repeats=3, robustness_samples=200)


def _example() -> torch.Tensor:
    return torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))


def _sequential_cnn() -> nn.Module:
    """A plain user model: convs with BN, a flatten into a hidden linear layer, a classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = _sequential_cnn() if name == "sequential" else create_model(
        name, input_shape=SHAPE, num_classes=10)
    for module in model.modules():  # trained-like statistics, so a BN bias really matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _zero_half_of_every_channel_set(model: nn.Module, classifier: nn.Module) -> None:
    """Zero the same random half of the channels in every layer of a width, classifier excepted.

    Layers that must keep equal widths (residual sums, depthwise convs) have equal widths, so in
    every group of coupled layers the chosen channels are zero in all of its producers (filters,
    biases and BN scale and shift): they contribute exactly nothing to the output.
    """
    generator = torch.Generator().manual_seed(1)
    chosen: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for module in model.modules():
            if module is classifier:
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                width = module.weight.shape[0]
                if width not in chosen:
                    chosen[width] = torch.randperm(width, generator=generator)[: width // 2]
                module.weight[chosen[width]] = 0.0
                if module.bias is not None:
                    module.bias[chosen[width]] = 0.0


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2", "sequential"])
def test_removing_all_zero_channels_keeps_outputs_identical(name):
    model = _model(name)
    classifier = list(model.modules())[-1] if name == "sequential" else (
        model.fc if name == "resnet8" else model.classifier)
    _zero_half_of_every_channel_set(model, classifier)
    inputs = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(inputs)
    # l1 scores an all-zero filter exactly 0, so ratio 0.5 removes exactly the zeroed half.
    pruned = prune_channels(model, 0.5, _example(), "l1")
    with torch.no_grad():
        after = pruned.eval()(inputs)
    assert count_params(pruned) < count_params(model) / 2
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def _residual_widths_agree(model: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, BasicBlock):
            width_in = module.conv1.in_channels
            width_out = module.bn2.num_features
            if isinstance(module.shortcut, nn.Identity):
                if width_in != width_out:
                    return False
            elif module.shortcut[0].out_channels != width_out:
                return False
        if isinstance(module, InvertedResidual) and module.use_residual:
            first = module.depthwise.conv if isinstance(module.expand, nn.Identity) \
                else module.expand.conv
            if first.in_channels != module.project.conv.out_channels:
                return False
    return True


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2"])
def test_pruned_zoo_models_are_smaller_with_consistent_shapes(name):
    model = _model(name)
    pruned = prune_channels(model, 0.5, _example(), "l2")
    assert count_params(pruned) < 0.4 * count_params(model)
    assert count_flops(pruned, SHAPE)[0] < 0.4 * count_flops(model, SHAPE)[0]
    assert pruned(torch.randn(3, *SHAPE)).shape == (3, 10)
    assert _residual_widths_agree(pruned)
    depthwise = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert (len(depthwise) > 0) == (name == "mobilenetv2")
    classifier = pruned.fc if name == "resnet8" else pruned.classifier
    assert classifier.out_features == 10
    # half of each group's channels are gone (the classifier's outputs excepted)
    widths_before, widths_after = channel_counts(model), channel_counts(pruned)
    for layer, width in widths_before.items():
        expected = 10 if layer in ("fc", "classifier") else width - width // 2
        assert widths_after[layer] == expected, layer


def test_pruning_leaves_the_original_model_untouched():
    model = _model("resnet8")
    state = copy.deepcopy(model.state_dict())
    prune_channels(model, 0.5, _example())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_pruning_works_when_called_under_no_grad():
    with torch.no_grad():  # tracing the dependency graph needs autograd: it is switched back on
        pruned = prune_channels(_model("sequential"), 0.5, _example())
    assert pruned[0].out_channels == 4


def test_pruned_model_exports_with_dynamic_batch_and_deep_copies():
    model = _model("mobilenetv2")
    pruned = copy.deepcopy(prune_channels(model, 0.5, _example(), "l1", round_to=8))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(pruned, (_example(),), dynamic_shapes=({0: batch},))
    inputs = torch.randn(5, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(inputs), pruned(inputs))


def test_round_to_keeps_pruned_widths_multiples_of_it():
    model = _model("mobilenetv2")
    pruned = prune_channels(model, 0.5, _example(), "l1", round_to=8, global_pruning=True)
    before, after = channel_counts(model), channel_counts(pruned)
    changed = [layer for layer in before if after[layer] != before[layer]]
    assert changed
    assert all(after[layer] % 8 == 0 for layer in changed)


def test_the_classifier_is_found_and_never_pruned():
    assert output_layers(_model("resnet8"), _example()) == ["fc"]
    assert output_layers(_model("mobilenetv2"), _example()) == ["classifier"]


def test_ignored_layers_keep_their_output_channels():
    model = _model("resnet8")
    pruned = prune_channels(model, 0.5, _example(), ignored_layers=["layer2.0.conv1"])
    assert pruned.layer2[0].conv1.out_channels == 32
    assert pruned.layer3[0].conv1.out_channels == 32  # the others are pruned


@pytest.mark.parametrize("sparsity", [1.0, -0.1])
def test_a_sparsity_outside_zero_to_one_is_a_clear_error(sparsity):
    with pytest.raises(NnzipError, match="sparsity must be"):
        prune_channels(_model("resnet8"), sparsity, _example())
    with pytest.raises(NnzipError, match="sparsity must be"):
        parse_recipe({"stages": [{"prune_channels": {"sparsity": sparsity}}]})
    with pytest.raises(NnzipError, match="sparsity must be"):  # the old name, same check
        parse_recipe({"stages": [{"prune_channels": {"ratio": sparsity}}]})


def test_an_unknown_ignored_layer_is_named_with_the_valid_names():
    with pytest.raises(NnzipError, match=r"'layer9\.conv'.*valid names are conv1, layer1"):
        prune_channels(_model("resnet8"), 0.5, _example(), ignored_layers=["layer9.conv"])


def test_a_model_with_nothing_prunable_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with pytest.raises(NnzipError, match="no channels structured pruning can remove"):
        prune_channels(model, 0.5, _example())


def test_taylor_needs_calibration_batches_and_uses_them():
    model = _model("resnet8")
    with pytest.raises(NnzipError, match="taylor criterion needs calibration"):
        prune_channels(model, 0.5, _example(), "taylor")
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, *SHAPE, generator=generator),
                torch.randint(0, 10, (8,), generator=generator)) for _ in range(2)]
    taylor = prune_channels(model, 0.5, _example(), "taylor", calibration=batches)
    l1 = prune_channels(model, 0.5, _example(), "l1")
    assert channel_counts(taylor) == channel_counts(l1)  # same widths, chosen differently
    assert not torch.equal(taylor.conv1.weight, l1.conv1.weight)


class _FunctionalConv(nn.Module):
    """A user layer with its own weight, used through F.conv2d: the graph cannot shrink it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


def test_a_layer_it_cannot_shrink_is_skipped_with_a_warning(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), _FunctionalConv(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    assert unsupported_layers(model) == ["2"]
    with caplog.at_level(logging.WARNING, logger="nnzip.prune.structured"):
        pruned = prune_channels(model, 0.5, _example())
    assert "cannot shrink" in caplog.text and ": 2" in caplog.text
    assert pruned[0].out_channels == 8 and pruned[2].weight.shape == (8, 8, 3, 3)
    assert pruned[4].out_channels == 8  # the rest is still pruned
    assert pruned(torch.randn(3, *SHAPE)).shape == (3, 10)


def test_iterative_steps_call_back_between_steps():
    calls = []
    pruned = prune_channels(_model("resnet8"), 0.5, _example(), iterative_steps=3,
                            after_step=lambda model, step: calls.append(step))
    assert calls == [0, 1]
    assert pruned.conv1.out_channels == 8


def test_prune_channels_stage_in_a_recipe_records_widths_and_saves_a_pt2(digits, tmp_path):
    assert STAGES.get("prune_channels") is PruneChannels
    torch.manual_seed(0)
    model = create_model("resnet8", input_shape=(1, 8, 8), num_classes=10)
    recipe = parse_recipe({"stages": [{"prune_channels": {
        "ratio": 0.5, "criterion": "taylor", "calibration_batches": 2, "finetune_epochs": 1}}]})
    result = compress(model, recipe, digits, name="resnet8", out_dir=tmp_path, eval_config=FAST,
                      progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    details = report["stages"][0]["details"]
    assert details["widths_before"]["conv1"] == 16 and details["widths_after"]["conv1"] == 8
    assert details["widths_after"]["fc"] == 10
    assert details["params_after"] < details["params_before"] / 2
    assert details["criterion"] == "taylor" and details["skipped_layers"] == []
    assert details["removed_fraction"] == pytest.approx(0.5)
    assert report["models"][1]["params"] == details["params_after"]
    assert result.paths["model"].name == "model.pt2" and result.paths["model"].exists()


class _TiedResidual(nn.Module):
    """Embedding → residual MLP → decoder tied to the embedding: one group holds both users."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        return self.decoder(x + F.relu(self.fc(x)))


def test_a_tied_embedding_width_is_pruned_on_both_users_and_stays_one_tensor():
    torch.manual_seed(0)
    model = _TiedResidual().eval()
    tokens = torch.randint(0, 50, (4, 7))
    result = prune_channels_result(model, 0.5, tokens)
    pruned = result.model
    assert pruned.decoder.weight is pruned.embed.weight
    assert pruned.embed.weight.shape == (50, 8)
    assert count_params(pruned) == sum(p.numel() for p in pruned.parameters())
    assert result.coverage.records[0].aliases == ("decoder.weight",)
    assert result.coverage.to_dict()["params"]["embed.weight"]["note"] == "width 16 -> 8"
    assert pruned(tokens).shape == (4, 7, 50)


class _TiedThroughMLP(nn.Module):
    """The decoder's inputs come from another group than the embedding's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.hidden = nn.Embedding(50, 16), nn.Linear(16, 24)
        self.fc, self.decoder = nn.Linear(24, 16), nn.Linear(16, 50, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(F.relu(self.fc(F.relu(self.hidden(self.embed(tokens))))))


def test_a_group_that_would_untie_a_weight_is_kept_with_the_reason():
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (4, 7))
    result = prune_channels_result(_TiedThroughMLP().eval(), 0.5, tokens)
    pruned = result.model
    assert pruned.decoder.weight is pruned.embed.weight and pruned.embed.weight.shape == (50, 16)
    assert "untying it" in result.details["kept"]["fc"]
    assert pruned.hidden.out_features == 12  # the other group is pruned


def test_layernorm_and_attention_groups_are_kept_and_said_so():
    from nnzip.models.examples import example_model

    model, inputs = example_model("vit")
    result = prune_channels_result(model, 0.5, inputs)
    assert "LayerNorm" in result.coverage.skipped["patch_embed.weight"]
    assert result.model.blocks[0].mlp[0].out_features == 32
    assert result.model.blocks[0].attn.embed_dim == 32


def test_exclude_takes_patterns_and_the_old_ratio_name_still_works(caplog):
    model = _model("resnet8")
    with caplog.at_level(logging.WARNING, logger="nnzip.prune.structured"):
        pruned = prune_channels(model, ratio=0.5, example_inputs=_example(),
                                exclude=["layer2.*"])
    assert "call it 'sparsity'" in caplog.text
    assert pruned.layer2[0].conv1.out_channels == 32
    assert pruned.layer3[0].conv1.out_channels == 32  # layer2's residual width is coupled
    assert pruned.layer1[0].conv1.out_channels == 8
    with pytest.raises(NnzipError, match="did you mean"):
        prune_channels(model, 0.5, _example(), exclude=["layer2.0.conv"])
