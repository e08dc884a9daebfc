"""Low-rank factorization: exact at full rank, ranks as asked, clear errors, stages in a recipe."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig, count_flops
from nnzip.factorize import (
    factorize_convs,
    factorize_linears,
    rank_for_energy,
    rank_for_ratio,
    ranks_for_ratio,
    svd_linear,
    tucker2_conv,
    vbmf_rank,
)
from nnzip.models import create_model, load_model
from nnzip.pipeline import compress
from nnzip.quant.ptq import quantize_static
from nnzip.recipe import parse_recipe

FAST = EvalConfig(warmup=1, repeats=3, robustness_samples=200)


def test_svd_at_full_rank_reproduces_the_linear_layer():
    torch.manual_seed(0)
    layer = nn.Linear(40, 24)
    x = torch.randn(8, 40)
    factored = svd_linear(layer, 24)
    assert [type(m) for m in factored] == [nn.Linear, nn.Linear]
    assert factored[0].weight.shape == (24, 40) and factored[1].weight.shape == (24, 24)
    torch.testing.assert_close(factored(x), layer(x), rtol=0, atol=1e-5)
    # Truncation is the best rank-r approximation: its error is the dropped singular values.
    truncated = svd_linear(layer, 10)
    s = torch.linalg.svdvals(layer.weight.detach())
    error = torch.linalg.matrix_norm(truncated[1].weight @ truncated[0].weight - layer.weight)
    assert error.item() == pytest.approx(s[10:].pow(2).sum().sqrt().item(), rel=1e-4)


def test_tucker2_at_full_rank_reproduces_the_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 6, 9, 9)
    factored = tucker2_conv(conv, (6, 10))
    assert [m.kernel_size for m in factored] == [(1, 1), (3, 3), (1, 1)]
    assert factored[1].stride == (2, 2) and factored[1].padding == (1, 1)
    torch.testing.assert_close(factored(x), conv(x), rtol=0, atol=1e-5)
    smaller = tucker2_conv(conv, (3, 4))
    assert (smaller[0].out_channels, smaller[1].out_channels) == (3, 4)
    assert smaller(x).shape == conv(x).shape


def test_ranks_follow_the_energy_and_the_parameter_ratio():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # σ² = 16, 4, 1, 1 of 22
    assert rank_for_energy(s, 0.7) == 1 and rank_for_energy(s, 0.9) == 2
    assert rank_for_energy(s, 1.0) == 4
    rank = rank_for_ratio(784, 300, 0.3)
    assert rank * (784 + 300) <= 0.3 * 784 * 300 < (rank + 1) * (784 + 300)
    r_in, r_out = ranks_for_ratio(32, 64, 9, 0.4)
    assert 32 * r_in + r_in * r_out * 9 + r_out * 64 <= 0.4 * 32 * 64 * 9
    assert r_out == pytest.approx(2 * r_in, abs=1)


def test_vbmf_finds_the_rank_of_a_noisy_low_rank_matrix():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 200))
    noisy = signal + 0.1 * rng.normal(size=signal.shape)
    assert vbmf_rank(noisy) == 5
    assert vbmf_rank(noisy.T) == 5
    assert vbmf_rank(rng.normal(size=(60, 200))) <= 2, "pure noise has (almost) no signal"


def test_bad_ranks_and_layer_names_are_clear_errors():
    layer, conv = nn.Linear(8, 4), nn.Conv2d(4, 4, 3)
    with pytest.raises(NnzipError, match="rank must be a positive integer, got 0"):
        svd_linear(layer, 0)
    with pytest.raises(NnzipError, match="exceeds the full rank 4"):
        svd_linear(layer, 5)
    with pytest.raises(NnzipError, match="two positive integers"):
        tucker2_conv(conv, (0, 2))
    with pytest.raises(NnzipError, match="rank must be a positive integer"):
        factorize_linears(nn.Sequential(layer), rank=-1)
    with pytest.raises(NnzipError, match="exactly one way"):
        factorize_linears(nn.Sequential(layer), rank=2, keep=0.5)
    model = create_model("lenet300", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(NnzipError,
                       match="'fc9' matches no nn.Linear layers.*did you mean 'fc3'"):
        factorize_linears(model, keep=0.3, layers=["fc9"])
    with pytest.raises(NnzipError, match="'relu1' names only what this method does not "
                                         "change.*nn.Linear.*fc1, fc2, fc3"):
        factorize_linears(model, keep=0.3, layers=["relu1"])
    with pytest.raises(NnzipError, match="depthwise"):
        tucker2_conv(nn.Conv2d(4, 4, 3, groups=4), (2, 2))


def test_svd_skips_layers_where_it_would_not_save_parameters():
    model = create_model("lenet300", input_shape=(1, 28, 28), num_classes=10)
    done = factorize_linears(model, keep=0.3)
    assert isinstance(model.fc1, nn.Sequential) and isinstance(model.fc2, nn.Sequential)
    assert done["fc1"]["rank"] == rank_for_ratio(784, 300, 0.3)
    assert done["fc1"]["params_after"] == sum(p.numel() for p in model.fc1.parameters())
    full = factorize_linears(create_model("lenet300", input_shape=(1, 28, 28), num_classes=10),
                             rank=100)
    assert "skipped" in full["fc3"] and "skipped" in full["fc2"] and "rank" in full["fc1"]


def test_tucker_on_resnet8_cuts_flops_and_keeps_standard_layers():
    torch.manual_seed(0)
    model = create_model("resnet8", input_shape=(1, 28, 28), num_classes=10).eval()
    flops_before, _ = count_flops(model, (1, 28, 28))
    done = factorize_convs(model, keep=0.3)
    assert "1×1" in done["layer2.0.shortcut.0"]["skipped"]
    assert "keep all 1 input" in done["conv1"]["skipped"]  # 1 input channel: nothing to gain
    assert isinstance(model.layer1[0].conv1, nn.Sequential)
    assert all(type(m) in (nn.Conv2d, nn.Sequential) for name, m in model.named_modules()
               if "conv" in name)
    flops_after, _ = count_flops(model, (1, 28, 28))
    assert flops_after < 0.5 * flops_before
    vbmf = factorize_convs(create_model("resnet8", input_shape=(1, 28, 28), num_classes=10))
    assert all(1 <= r for entry in vbmf.values() for r in entry.get("ranks", [1]))


def test_factorized_models_still_quantize(digits):
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=digits.input_shape, num_classes=10).eval()
    factorize_linears(model, keep=0.3)
    x = digits.test.tensors[0][:64]
    quantized = quantize_static(copy.deepcopy(model), [x])
    assert (quantized(x).argmax(1) == model(x).argmax(1)).float().mean() > 0.9


def test_svd_and_tucker_stages_run_in_a_recipe(digits, tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet8", input_shape=digits.input_shape, num_classes=10, width=4)
    recipe = parse_recipe({"stages": [
        {"tucker": {"keep": 0.5, "finetune_epochs": 2, "lr": 3e-3}},
        {"svd": {"rank": 4, "finetune_epochs": 0}}]})
    result = compress(model, recipe, digits, out_dir=tmp_path, eval_config=FAST, progress=False)
    tucker, svd = (stage["details"] for stage in result.report["stages"])
    assert tucker["ranks"]["layer3.0.conv2"] == list(ranks_for_ratio(16, 16, 9, 0.5))
    assert tucker["params_after"] < tucker["params_before"]
    assert tucker["finetune_epochs"] == 2 and "finetune_best_val_accuracy" in tucker
    assert svd["ranks"] == {"fc": 4} and svd["finetune_epochs"] == 0
    rows = result.report["models"]
    assert rows[2]["params"] < rows[1]["params"] < rows[0]["params"]
    assert rows[1]["accuracy"] > rows[0]["accuracy"] + 0.2, "the fine-tune trained the model"
    # The zoo spec no longer fits, so the model is saved with torch.export, and loads back.
    assert result.paths["model"].suffix == ".pt2"
    x = digits.test.tensors[0][:8]
    torch.testing.assert_close(load_model(result.paths["model"])(x), result.model.eval()(x))


def test_stage_options_are_validated_up_front():
    with pytest.raises(NnzipError, match="exactly one way"):
        parse_recipe({"stages": [{"svd": {"ratio": 0.3, "energy": 0.9}}]})
    with pytest.raises(NnzipError, match="exactly one way"):
        parse_recipe({"stages": ["svd"]})
    with pytest.raises(NnzipError, match="rank"):
        parse_recipe({"stages": [{"svd": {"rank": 0}}]})
    with pytest.raises(NnzipError, match="needs keep"):
        parse_recipe({"stages": [{"tucker": {"method": "ratio"}}]})
    with pytest.raises(NnzipError, match=r"give 'keep' only: 'ratio' is its old name"):
        parse_recipe({"stages": [{"svd": {"ratio": 0.3, "keep": 0.3}}]})


def test_the_old_ratio_name_still_works_and_says_the_new_one(caplog):
    with caplog.at_level("WARNING"):
        recipe = parse_recipe({"stages": [{"svd": {"ratio": 0.3}},
                                          {"tucker": {"method": "ratio", "ratio": 0.4}}]})
    assert recipe.steps[0].stage.keep == 0.3 and recipe.steps[1].stage.keep == 0.4
    assert recipe.steps[0].stage.ratio == 0.3  # read by older code
    assert "option 'ratio' is now called 'keep'" in caplog.text
    model = create_model("lenet300", input_shape=(1, 8, 8), num_classes=10)
    with caplog.at_level("WARNING"):
        done = factorize_linears(model, ratio=0.3)
    assert done["fc1"]["rank"] == rank_for_ratio(64, 300, 0.3)


@pytest.mark.parametrize("conv_type, shape", [(nn.Conv1d, (2, 6, 20)),
                                              (nn.Conv3d, (2, 6, 5, 6, 7))])
def test_tucker2_of_conv1d_and_conv3d_is_exact_at_full_rank_and_stays_that_type(conv_type,
                                                                                shape):
    torch.manual_seed(0)
    conv = conv_type(6, 10, 3, stride=2, padding=1)
    x = torch.randn(*shape)
    factored = tucker2_conv(conv, (6, 10))
    assert all(type(m) is conv_type for m in factored)
    torch.testing.assert_close(factored(x), conv(x), rtol=0, atol=1e-5)
    model = nn.Sequential(conv_type(8, 16, 3), nn.ReLU(), conv_type(16, 16, 3, groups=2))
    done = factorize_convs(model, keep=0.4)
    assert "ranks" in done["0"] and "grouped conv (groups=2)" in done["2"]["skipped"]


def test_svd_leaves_tied_weights_and_attention_out_proj_with_reasons():
    from nnzip.factorize import factorize_linears_result
    from nnzip.models.examples import example_model

    model, tokens = example_model("lstm_lm")
    result = factorize_linears_result(model, rank=4)
    assert model.decoder.weight is model.embed.weight and isinstance(model.decoder, nn.Linear)
    assert "tied" in result.coverage.skipped["embed.weight"]
    assert "fused kernel" in result.coverage.skipped["rnn.weight_ih_l0"]
    vit, images = example_model("vit")
    result = factorize_linears_result(vit, keep=0.5)
    assert "reads blocks.0.attn.out_proj.weight directly" in \
        result.coverage.skipped["blocks.0.attn.out_proj.weight"]
    assert isinstance(vit.blocks[0].mlp[0], nn.Sequential)
    assert vit(images).shape == (8, 10)
