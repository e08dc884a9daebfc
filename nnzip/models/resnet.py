"""The CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", §4.2): depth = 6n + 2.

Three stages of n BasicBlocks at widths w, 2w, 4w (w = 16), downsampling by stride 2 at the first
block of stages 2 and 3. Shortcuts that change shape are 1×1 conv + BN (the paper's option B);
the others are ``nn.Identity``, so every block's forward is the same straight-line code that
torch.fx and dependency-graph pruners can follow.
"""

from __future__ import annotations

from torch import Tensor, nn

from nnzip.errors import NnzipError


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def blocks_per_stage(depth: int) -> int:
    """n for depth = 6n + 2; any other depth is an error naming the valid ones."""
    if depth < 8 or (depth - 2) % 6:
        raise NnzipError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), "
                         f"got {depth}: pick one of those")
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    """ResNet-{8,20,32,...} for small images; ``width`` is the first stage's channel count."""

    def __init__(self, depth: int = 20, in_channels: int = 1, num_classes: int = 10,
                 width: int = 16) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        if width < 1:
            raise NnzipError(f"ResNet width must be a positive channel count, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(width, width, n, stride=1)
        self.layer2 = self._stage(width, 2 * width, n, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # He et al. 2015 initialisation, as the ResNet paper uses.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))
