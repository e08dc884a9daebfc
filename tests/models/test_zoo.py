import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models import (
    ZOO,
    CifarResNet,
    LeNet5,
    LeNet300100,
    MobileNetV2,
    create_model,
    model_spec,
)

MNIST_SHAPE = (1, 28, 28)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


#: Zoo models of token sequences (the rest take images or features).
TOKEN_MODELS = ("gpt",)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_every_zoo_model_maps_a_batch_to_class_scores(arch):
    torch.manual_seed(0)
    if arch in TOKEN_MODELS:  # a language model scores the next token at every position
        model = create_model(arch, input_shape=(12,), num_classes=50).eval()
        assert model(torch.randint(0, 50, (2, 12))).shape == (2, 12, 50)
        return
    model = create_model(arch, input_shape=MNIST_SHAPE, num_classes=10).eval()
    assert model(torch.rand(2, *MNIST_SHAPE)).shape == (2, 10)


# The transformers GPT's control flow does not trace with fx; the methods that reach it
# capture with hooks (GPTQ, AWQ, Wanda) or do their own surgery (drop_layers). The zoo's vit is
# transformers' ViT, which torch.fx cannot trace either; it has no BatchNorm to fold, and the
# one method that still needs a trace (CLE) refuses it by name (tests/models/test_vit.py).
FX_UNTRACEABLE = {"vit", *TOKEN_MODELS}


@pytest.mark.parametrize("arch", sorted(set(ZOO) - FX_UNTRACEABLE))
def test_every_zoo_model_traces_with_fx(arch):
    # BatchNorm folding and CLE find their layer pairs on a torch.fx trace: no data-dependent
    # control flow allowed.
    model = create_model(arch, input_shape=MNIST_SHAPE, num_classes=10).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.rand(2, *MNIST_SHAPE)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


def test_deep_compression_parameter_counts():
    assert _params(LeNet300100()) == 266_610
    assert _params(LeNet5()) == 431_080


def test_lenet5_small_is_a_student_about_ten_times_smaller_than_lenet5():
    small = create_model("lenet5_small", input_shape=MNIST_SHAPE, num_classes=10)
    assert _params(small) == 38_390
    assert (small.conv1.out_channels, small.fc1.out_features) == (10, 100)
    with pytest.raises(NnzipError, match="two positive conv widths"):
        LeNet5(channels=[20])


def test_resnet_depths_follow_6n_plus_2():
    assert len(CifarResNet(depth=8).layer1) == 1 and len(CifarResNet(depth=20).layer3) == 3
    with pytest.raises(NnzipError, match="6n\\+2"):
        CifarResNet(depth=7)
    with pytest.raises(NnzipError, match="6n\\+2"):
        create_model("resnet", input_shape=MNIST_SHAPE, num_classes=10, depth=7)


def test_resnet_uses_projection_shortcuts_only_where_shape_changes():
    model = CifarResNet(depth=8)
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    assert isinstance(model.layer2[0].shortcut[0], nn.Conv2d)
    assert model.layer2[0].shortcut[0].kernel_size == (1, 1)


def test_mobilenet_has_depthwise_convs_and_residual_blocks():
    model = MobileNetV2()
    depthwise = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    assert len(depthwise) == 7
    # Residual wherever stride is 1 and width unchanged: 16→16, and the repeat of 24, 32, 64.
    assert sum(getattr(m, "use_residual", False) for m in model.modules()) == 4
    assert MobileNetV2(width_mult=0.5)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_rejects_too_small_inputs_naming_the_minimum():
    with pytest.raises(NnzipError, match="16"):
        LeNet5(input_size=12)
    with pytest.raises(NnzipError, match="16"):
        create_model("lenet5", input_shape=(1, 8, 8), num_classes=10)


def test_sizes_are_derived_from_the_input_shape():
    flat = create_model("lenet300", input_shape=(64,), num_classes=4)
    assert flat(torch.rand(3, 64)).shape == (3, 4)
    rgb = create_model("lenet5", input_shape=(3, 32, 20), num_classes=5)
    assert rgb(torch.rand(2, 3, 32, 20)).shape == (2, 5)
    small = create_model("resnet8", input_shape=(1, 8, 8), num_classes=10)
    assert small(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(NnzipError, match="channels, height, width"):
        create_model("resnet8", input_shape=(64,), num_classes=10)


def test_created_models_remember_their_spec():
    model = create_model("resnet", input_shape=MNIST_SHAPE, num_classes=10, depth=14, width=8)
    assert model.nnzip_spec == {"arch": "resnet", "kwargs": {"depth": 14, "width": 8},
                                "input_shape": [1, 28, 28], "num_classes": 10}
    assert model_spec(model) == model.nnzip_spec and model_spec(nn.Linear(2, 2)) is None


def test_unknown_arch_lists_the_zoo():
    with pytest.raises(NnzipError, match="lenet300, lenet5"):
        create_model("vgg16", input_shape=MNIST_SHAPE, num_classes=10)


def test_unknown_or_derived_option_is_an_error():
    with pytest.raises(NnzipError, match="width_mult"):
        create_model("mobilenetv2", input_shape=MNIST_SHAPE, num_classes=10, widht_mult=2.0)
    with pytest.raises(NnzipError, match="in_channels"):
        create_model("resnet20", input_shape=MNIST_SHAPE, num_classes=10, in_channels=3)
    with pytest.raises(NnzipError, match="depth"):
        create_model("resnet8", input_shape=MNIST_SHAPE, num_classes=10, depth=20)


def test_mobilenet_class_is_exported():
    assert isinstance(create_model("mobilenetv2", input_shape=MNIST_SHAPE, num_classes=10),
                      MobileNetV2)
