"""The two LeNets of the Deep Compression paper (Han et al. 2016, Table 1 and §3).

LeNet-300-100 is the fully connected net of LeCun et al. (1998); LeNet-5 here is the Caffe variant
Deep Compression prunes (20 and 50 5×5 filters, a 500-unit hidden layer, ReLU only after it).
Layers are named attributes applied in a fixed order, so torch.fx traces them without guards.
"""

from __future__ import annotations

from torch import Tensor, nn

from nnzip.errors import NnzipError


class LeNet300100(nn.Module):
    """Flatten → 300 → ReLU → 100 → ReLU → classes (266 610 parameters for MNIST)."""

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


def _lenet5_feature_size(size: int) -> int:
    """Side length after conv5 → pool2 → conv5 → pool2 (no padding, floor division)."""
    return ((size - 4) // 2 - 4) // 2


LENET5_MIN_INPUT_SIZE = 16


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv5×5·20 → pool → conv5×5·50 → pool → fc 500 → ReLU → fc classes.

    431 080 parameters at 28×28. ``input_size`` is one int or (height, width). ``channels``
    (filters of the two convs) and ``hidden`` (units of fc1) make narrower variants, such as the
    zoo's ``lenet5_small`` distillation student.
    """

    def __init__(self, in_channels: int = 1, input_size: int | tuple[int, int] = 28,
                 num_classes: int = 10, channels: tuple[int, int] | list[int] = (20, 50),
                 hidden: int = 500) -> None:
        super().__init__()
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        if min(height, width) < LENET5_MIN_INPUT_SIZE:
            raise NnzipError(f"LeNet-5 needs inputs of at least {LENET5_MIN_INPUT_SIZE}×"
                             f"{LENET5_MIN_INPUT_SIZE} pixels, got {height}×{width}: "
                             "use lenet300 or resnet8 for small images")
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise NnzipError(f"LeNet-5 needs two positive conv widths and a positive hidden "
                             f"size, got channels={list(channels)}, hidden={hidden}: "
                             "e.g. channels: [20, 50], hidden: 500")
        conv1_channels, conv2_channels = channels
        self.conv1 = nn.Conv2d(in_channels, conv1_channels, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(conv1_channels, conv2_channels, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        flat = conv2_channels * _lenet5_feature_size(height) * _lenet5_feature_size(width)
        self.fc1 = nn.Linear(flat, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)
