import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models import create_model
from nnzip.models.fold import fold_batchnorm
from nnzip.quant.equalize import cross_layer_equalization, equalizable_pairs

MNIST_SHAPE = (1, 28, 28)


def _randomised_resnet8() -> nn.Module:
    """ResNet-8 with trained-looking BatchNorms (so folding gives uneven channel ranges)."""
    torch.manual_seed(0)
    model = create_model("resnet8", input_shape=MNIST_SHAPE, num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size))
            module.running_var.copy_(torch.rand(size) + 0.5)
            module.weight.data.copy_(torch.randn(size) * 2)
            module.bias.data.copy_(torch.randn(size))
    return fold_batchnorm(model)


def _channel_ranges(first: nn.Module, second: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """max |w| per output channel of ``first`` and per input channel of ``second``."""
    out_ranges = first.weight.detach().abs().flatten(1).amax(dim=1)
    weight = second.weight.detach().abs()
    if isinstance(second, nn.Linear):  # a flattened convolution: one block of inputs per channel
        weight = weight.reshape(weight.shape[0], len(out_ranges), -1)
    return out_ranges, weight.transpose(0, 1).flatten(1).amax(dim=1)


def test_lenet5_pairs_are_found_through_pooling_flatten_and_relu(lenet5):
    assert equalizable_pairs(lenet5) == [("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2")]


def test_equalization_keeps_lenet5_outputs_and_equalizes_every_pair(lenet5, mnist):
    equalized, pairs = cross_layer_equalization(lenet5)
    assert pairs == 3
    x = mnist.test.tensors[0][:256]
    with torch.no_grad():
        torch.testing.assert_close(equalized(x), lenet5(x), rtol=1e-5, atol=1e-5)
    for first, second in [("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2")]:
        before = _channel_ranges(getattr(lenet5, first), getattr(lenet5, second))
        after = _channel_ranges(getattr(equalized, first), getattr(equalized, second))
        # conv2 is in two pairs: the sweeps converge to equal ranges, up to the tolerance.
        torch.testing.assert_close(after[0], after[1], rtol=1e-3, atol=1e-6)
        assert not torch.allclose(before[0], before[1], rtol=0.1)
    assert lenet5.conv1.weight is not equalized.conv1.weight  # the input model is untouched


def test_residual_branches_are_skipped_and_resnet8_keeps_its_function():
    model = _randomised_resnet8()
    # The stem and each block's second conv feed a residual add (two consumers): not pairs.
    assert equalizable_pairs(model) == [(f"layer{i}.0.conv1", f"layer{i}.0.conv2")
                                        for i in (1, 2, 3)]
    equalized, pairs = cross_layer_equalization(model)
    assert pairs == 3
    x = torch.rand(16, *MNIST_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(equalized(x), model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(equalized.conv1.weight, model.conv1.weight)  # untouched
    ranges = _channel_ranges(equalized.layer2[0].conv1, equalized.layer2[0].conv2)
    torch.testing.assert_close(ranges[0], ranges[1])


def test_grouped_and_depthwise_convolutions_are_rescaled_per_input_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.ReLU(), nn.Conv2d(8, 6, 3, groups=2)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))
    assert equalizable_pairs(model) == [("0", "2"), ("2", "4")]
    equalized, pairs = cross_layer_equalization(model)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(equalized(x), model(x), rtol=1e-5, atol=1e-5)
    first, depthwise, grouped = (equalized[i].weight.detach().abs() for i in (0, 2, 4))
    # Input channel c of the 2-group conv is column c % 4 of output rows 3·(c // 4) .. +3.
    grouped_inputs = torch.stack([grouped[3 * (c // 4):3 * (c // 4) + 3, c % 4].amax()
                                  for c in range(8)])
    depthwise_ranges = depthwise.flatten(1).amax(dim=1)  # its input and output channel ranges
    torch.testing.assert_close(first.flatten(1).amax(dim=1), depthwise_ranges, rtol=1e-3,
                               atol=1e-6)
    torch.testing.assert_close(depthwise_ranges, grouped_inputs, rtol=1e-3, atol=1e-6)


class _TwoConsumers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        hidden = torch.relu(self.fc1(x))
        return self.fc2(hidden) + self.fc3(hidden)


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.fc2(x))))


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 4)),          # clips: not homogeneous
    nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3)),  # not folded
    nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 4)),
    _TwoConsumers(),
    _CalledTwice(),
], ids=["relu6", "batchnorm", "sigmoid", "two-consumers", "called-twice"])
def test_pairs_that_rescaling_would_change_are_left_alone(model):
    assert equalizable_pairs(model) == []
    assert cross_layer_equalization(model)[1] == 0


def test_untraceable_models_are_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(NnzipError, match="cannot equalize Branchy: torch.fx could not trace"):
        cross_layer_equalization(Branchy())
