"""Models written the way users write them, outside the zoo: the generality suite's families.

Each is small (tens of thousands of parameters), deterministic for a seed, and exercises one
structure a compression method must handle or refuse by name: grouped convolutions with a channel
shuffle, DenseNet concatenation, attention on ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer``, LSTM/GRU language models whose output layer is tied to the
embedding, parameters used through ``F.linear``/``F.conv2d``, Conv1d signals, Conv3d volumes, and
one layer called twice. ``tests/generality`` runs every public method on every one of them, and
``benchmarks/coverage.py`` compares nnzip's coverage with PyTorch's own tools on the same models.

:func:`example_model` returns the model and a batch of inputs of the right dtype and shape (token
ids are int64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.errors import NnzipError


class ShuffleNetLike(nn.Module):
    """Grouped 1×1 conv → channel shuffle → depthwise 3×3 → grouped 1×1 (ShuffleNet v1 unit).

    The shuffle interleaves the groups' channels, so removing output channel ``c`` of the first
    conv removes an input channel of a *different* group of the next: a pruner that ignores the
    permutation removes live channels and keeps dead ones.
    """

    def __init__(self, in_channels: int = 3, width: int = 24, groups: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.groups = groups
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.expand = nn.Conv2d(width, width, 1, groups=groups)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.project = nn.Conv2d(width, width, 1, groups=groups)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.expand(x))
        batch, channels, height, width = x.shape
        x = x.view(batch, self.groups, channels // self.groups, height, width) \
            .transpose(1, 2).reshape(batch, channels, height, width)
        x = F.relu(self.project(self.depthwise(x)))
        return self.head(x.mean(dim=(2, 3)))


class DenseNetLike(nn.Module):
    """Two dense layers, each concatenating its output to its input (Huang et al. 2017)."""

    def __init__(self, in_channels: int = 3, growth: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.dense1 = nn.Conv2d(16, growth, 3, padding=1)
        self.dense2 = nn.Conv2d(16 + growth, growth, 3, padding=1)
        self.transition = nn.Conv2d(16 + 2 * growth, 16, 1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.dense1(x))], dim=1)
        x = torch.cat([x, F.relu(self.dense2(x))], dim=1)
        x = F.relu(self.transition(x))
        return self.head(x.mean(dim=(2, 3)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A vision transformer on ``nn.MultiheadAttention``: patch conv, class token, positions."""

    def __init__(self, in_channels: int = 1, image_size: int = 16, patch: int = 4, dim: int = 32,
                 heads: int = 4, depth: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class TextTransformer(nn.Module):
    """Token classifier on ``nn.TransformerEncoder`` (PyTorch's own encoder layer)."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, depth: int = 2,
                 num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class RNNLanguageModel(nn.Module):
    """Embedding → LSTM or GRU → output layer tied to the embedding (Press & Wolf 2017)."""

    def __init__(self, cell: str = "lstm", vocab: int = 100, dim: int = 32, layers: int = 2
                 ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(dim, dim, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)
        self.decoder.weight = self.embed.weight  # tied: one tensor, two names

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(tokens))
        return self.decoder(hidden)


class FunctionalNet(nn.Module):
    """Weights held as bare parameters and used through ``F.conv2d`` / ``F.linear``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_weight = nn.Parameter(torch.randn(8, in_channels, 3, 3) * 0.3)
        self.conv_bias = nn.Parameter(torch.zeros(8))
        self.fc_weight = nn.Parameter(torch.randn(num_classes, 8) * 0.3)
        self.fc_bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.conv_weight, self.conv_bias, padding=1))
        return F.linear(x.mean(dim=(2, 3)), self.fc_weight, self.fc_bias)


class SignalNet(nn.Module):
    """Conv1d classifier for ``(N, C, L)`` signals."""

    def __init__(self, in_channels: int = 2, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 5, padding=2, groups=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class VolumeNet(nn.Module):
    """Conv3d classifier for ``(N, C, D, H, W)`` volumes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, 8, 3, padding=1), nn.ReLU(),
            nn.Conv3d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class SharedLayerNet(nn.Module):
    """One Linear called twice in a forward pass (weight reuse across depth)."""

    def __init__(self, features: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(features, 32)
        self.shared = nn.Linear(32, 32)
        self.out = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.inp(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.out(x)


@dataclass(frozen=True)
class ExampleFamily:
    build: Callable[[], nn.Module]
    make_inputs: Callable[[torch.Generator, int], torch.Tensor]
    description: str


def _images(channels: int, size: int) -> Callable[[torch.Generator, int], torch.Tensor]:
    return lambda gen, n: torch.randn(n, channels, size, size, generator=gen)


def _tokens(vocab: int, length: int) -> Callable[[torch.Generator, int], torch.Tensor]:
    return lambda gen, n: torch.randint(0, vocab, (n, length), generator=gen)


#: Every family of the generality suite, by name.
EXAMPLES: dict[str, ExampleFamily] = {
    "shufflenet": ExampleFamily(ShuffleNetLike, _images(3, 16),
                                "grouped 1x1 convs around a channel shuffle"),
    "densenet": ExampleFamily(DenseNetLike, _images(3, 16), "DenseNet concatenation"),
    "vit": ExampleFamily(TinyViT, _images(1, 16), "ViT on nn.MultiheadAttention"),
    "text_transformer": ExampleFamily(TextTransformer, _tokens(100, 12),
                                      "nn.TransformerEncoder over token ids"),
    "lstm_lm": ExampleFamily(lambda: RNNLanguageModel("lstm"), _tokens(100, 12),
                             "LSTM language model, output tied to the embedding"),
    "gru_lm": ExampleFamily(lambda: RNNLanguageModel("gru"), _tokens(100, 12),
                            "GRU language model, output tied to the embedding"),
    "functional": ExampleFamily(FunctionalNet, _images(1, 12),
                                "parameters used through F.conv2d / F.linear"),
    "conv1d": ExampleFamily(SignalNet, lambda gen, n: torch.randn(n, 2, 64, generator=gen),
                            "Conv1d (one grouped) on (N, C, L) signals"),
    "conv3d": ExampleFamily(VolumeNet, lambda gen, n: torch.randn(n, 1, 8, 8, 8, generator=gen),
                            "Conv3d on (N, C, D, H, W) volumes"),
    "shared_layer": ExampleFamily(SharedLayerNet, lambda gen, n: torch.randn(n, 32, generator=gen),
                                  "one Linear called twice"),
}


def example_model(name: str, *, seed: int = 0, batch: int = 8
                  ) -> tuple[nn.Module, torch.Tensor]:
    """A freshly initialised example model (eval mode) and ``batch`` inputs for it."""
    if name not in EXAMPLES:
        raise NnzipError(f"unknown example model {name!r}: choose one of "
                         f"{', '.join(EXAMPLES)}")
    family = EXAMPLES[name]
    torch.manual_seed(seed)
    model = family.build().eval()
    generator = torch.Generator().manual_seed(seed + 1)
    return model, family.make_inputs(generator, batch)
