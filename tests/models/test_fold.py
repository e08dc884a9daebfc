import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models import create_model
from nnzip.models.fold import FoldBatchNorm, fold_batchnorm, foldable_pairs
from nnzip.recipe import parse_recipe
from nnzip.stage import Context

MNIST_SHAPE = (1, 28, 28)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return model


def _batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("arch", ["resnet8", "mobilenetv2"])
def test_folding_keeps_the_function_and_removes_every_batchnorm(arch):
    torch.manual_seed(0)
    model = _randomise_batchnorm(create_model(arch, input_shape=MNIST_SHAPE, num_classes=10)).eval()
    folded = fold_batchnorm(model)
    x = torch.rand(8, *MNIST_SHAPE)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert _batchnorms(folded) == []
    assert _batchnorms(model)  # the input model is untouched
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in model.parameters())


def test_linear_followed_by_batchnorm1d_is_folded():
    model = _randomise_batchnorm(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(),
                                               nn.Linear(5, 3))).eval()
    assert foldable_pairs(model) == [("0", "1")]
    x = torch.randn(4, 6)
    torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=1e-5, atol=1e-5)


class _Branching(nn.Module):
    """The conv output feeds the BatchNorm and a skip: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_layer_whose_output_is_used_elsewhere_is_not_folded():
    model = _randomise_batchnorm(_Branching()).eval()
    assert foldable_pairs(model) == []
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=0, atol=0)


class _SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn1, self.bn2 = nn.BatchNorm2d(2), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return self.bn(self.conv(x))
        return x


def test_a_module_called_twice_and_an_untraceable_model_give_clear_errors():
    with pytest.raises(NnzipError, match=r"\[.conv.\] are called more than once"):
        fold_batchnorm(_SharedConv())
    with pytest.raises(NnzipError, match="_Untraceable: torch.fx could not trace it"):
        fold_batchnorm(_Untraceable())


def test_fold_batchnorm_stage_records_what_it_folded(digits):
    recipe = parse_recipe({"stages": [{"fold_batchnorm": {}}]})
    stage = recipe.steps[0].stage
    assert isinstance(stage, FoldBatchNorm)
    model = create_model("resnet8", input_shape=digits.input_shape, num_classes=10)
    model = _randomise_batchnorm(model).eval()
    context = Context(data=digits, progress=False)
    folded = stage.apply(model, context)
    assert context.details["batchnorm_left"] == []
    assert len(context.details["folded"]) == len(_batchnorms(model)) == 9
    x = digits.test.tensors[0][:4]
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
