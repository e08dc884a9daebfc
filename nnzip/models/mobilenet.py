"""A small MobileNetV2 (Sandler et al. 2018, "Inverted Residuals and Linear Bottlenecks").

Each block expands channels t-fold with a 1×1 conv, filters them with a 3×3 depthwise conv and
projects back with a linear 1×1 conv (no activation: ReLU would destroy information in the narrow
bottleneck). The default configuration is scaled down for 28×28 inputs: two stride-2 stages take
28 → 14 → 7. Depthwise convolutions make this the zoo's test case for group-aware pruning.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from nnzip.errors import NnzipError

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
SMALL_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1))
STEM_CHANNELS = 16
LAST_CHANNELS = 256


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, losing at most 10 %.

    From the reference MobileNet code: hardware prefers channel counts in multiples of 8.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """conv → BN → optional ReLU6, with named children ``conv``, ``bn``, ``act``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, groups: int = 1, activation: bool = True) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                           padding=kernel_size // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_channels))
        if activation:
            layers["act"] = nn.ReLU6()
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise → 1×1 linear project; residual when the shape is unchanged.

    With expansion 1 the expand conv is an ``nn.Identity`` (as in the paper's first block).
    ``use_residual`` is fixed at construction, so tracing sees no data-dependent branch.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand: nn.Module = (ConvBNAct(in_channels, hidden) if expansion != 1
                                  else nn.Identity())
        self.depthwise = ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, activation=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if self.use_residual:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """Stem 3×3 conv, inverted-residual stages, 1×1 conv to 256, average pool, linear classifier.

    ``width_mult`` scales every layer's channels (rounded to multiples of 8); as in the paper the
    last conv is not narrowed below its default width.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise NnzipError(f"width_mult must be positive, got {width_mult}")
        channels = make_divisible(STEM_CHANNELS * width_mult)
        blocks: list[nn.Module] = [ConvBNAct(in_channels, channels, 3)]
        for expansion, out, repeats, stride in SMALL_CONFIG:
            out_channels = make_divisible(out * width_mult)
            for i in range(repeats):
                blocks.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1,
                                               expansion))
                channels = out_channels
        last = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        blocks.append(ConvBNAct(channels, last))
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))
