"""`evaluate` on any input a .npz can hold: token ids, signals, volumes, tables.

Each data set is written with numpy, loaded through ``load_npz`` and measured by a tiny model whose
weights are set by hand so that the expected accuracy and FLOPs are known exactly.
"""

import numpy as np
import pytest
import torch
from torch import nn

from nnzip.data import load_npz
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig, build_report, evaluate
from nnzip.evaluate.report import render_markdown
from nnzip.evaluate.robustness import fgsm_accuracy, gaussian_noise_accuracy

FAST = EvalConfig(warmup=1, repeats=3, batch_sizes=(1, 8), eval_batch_size=64)
CLASSES = 3
VOCAB = 10 * CLASSES


def _load(tmp_path, x: np.ndarray, y: np.ndarray, **extra):
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y, **extra)
    return load_npz(path, val_fraction=0.1, test_fraction=0.25, seed=0)


def _levels(shape: tuple[int, ...], samples: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Class c is a constant level c plus N(0, 0.1²) noise, in float64 as users often store it."""
    rng = np.random.default_rng(0)
    y = np.arange(samples) % CLASSES
    x = y.reshape(-1, *[1] * len(shape)) + rng.normal(0.0, 0.1, size=(samples, *shape))
    return x, y


def _level_head() -> nn.Linear:
    """Logits k * mean - k²/2 pick the level nearest the mean: exact for these data."""
    head = nn.Linear(1, CLASSES)
    with torch.no_grad():
        head.weight.copy_(torch.arange(CLASSES, dtype=torch.float32).reshape(-1, 1))
        head.bias.copy_(-torch.arange(CLASSES, dtype=torch.float32) ** 2 / 2)
    return head


class _TokenClassifier(nn.Module):
    """Embedding + mean over the sequence + linear: tokens 10c..10c+9 belong to class c."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, CLASSES)
        self.head = nn.Linear(CLASSES, CLASSES)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.eye(CLASSES).repeat_interleave(10, dim=0))
            self.head.weight.copy_(torch.eye(CLASSES))
            self.head.bias.zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).mean(dim=1))


def _tokens(samples: int = 300, length: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(samples) % CLASSES
    ids = 10 * y[:, None] + rng.integers(0, 10, size=(samples, length))
    return ids.astype(np.int64), y


def test_token_ids_evaluate_end_to_end_with_an_embedding_classifier(tmp_path):
    data = _load(tmp_path, *_tokens())
    assert data.input_dtype == torch.int64 and data.input_shape == (8,)
    entry = evaluate(_TokenClassifier(), data, name="tokens", config=FAST)
    assert entry["accuracy"] == 1.0 and entry["agreement"] == 1.0
    assert entry["flops"] == 2 * CLASSES * CLASSES  # the head; a lookup multiplies nothing
    assert entry["latency_ms"]["batch8"]["p50"] > 0
    assert entry["peak_memory_bytes"] >= 4 * entry["params"]
    robustness = entry["robustness"]
    assert set(robustness["gaussian"]) == {"0.1", "0.2", "0.3"}
    assert all(value is None for value in robustness["gaussian"].values())
    assert all(value is None for value in robustness["fgsm"].values())
    assert "not measured" in robustness["note"] and "int64" in robustness["note"]
    markdown = render_markdown(build_report([entry], {}))
    assert "tokens (baseline): not measured: the inputs are int64" in markdown


def test_robustness_probes_refuse_integer_inputs():
    ids, labels = torch.zeros(4, 8, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(NnzipError, match="int64"):
        gaussian_noise_accuracy(_TokenClassifier(), ids, labels, [0.1], (0.0, 29.0))
    with pytest.raises(NnzipError, match="int64"):
        fgsm_accuracy(_TokenClassifier(), ids, labels, [0.1], (0.0, 29.0))


def test_signal_keeps_its_shape_and_a_conv1d_model_evaluates(tmp_path):
    data = _load(tmp_path, *_levels((1, 32)))
    assert data.input_shape == (1, 32) and data.input_dtype == torch.float32
    conv = nn.Conv1d(1, 1, 5, bias=False)
    nn.init.constant_(conv.weight, 1 / 5)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool1d(1), nn.Flatten(), _level_head())
    entry = evaluate(model, data, config=FAST)
    assert entry["accuracy"] == 1.0
    assert entry["flops"] == 2 * (28 * 5) + 2 * CLASSES  # 28 outputs of a 5-tap conv + the head
    assert min(entry["robustness"]["gaussian"].values()) >= 0.9
    assert "note" not in entry["robustness"]


def test_volume_loads_and_a_conv3d_model_evaluates(tmp_path):
    data = _load(tmp_path, *_levels((2, 4, 5, 5), samples=120))
    assert data.input_shape == (2, 4, 5, 5)
    conv = nn.Conv3d(2, 1, 3, bias=False)
    nn.init.constant_(conv.weight, 1 / (2 * 27))
    model = nn.Sequential(conv, nn.AdaptiveAvgPool3d(1), nn.Flatten(), _level_head())
    entry = evaluate(model, data, config=FAST)
    assert entry["accuracy"] == 1.0
    assert entry["flops"] == 2 * (2 * 3 * 3) * (2 * 27) + 2 * CLASSES


def test_table_still_evaluates_as_float_features(tmp_path):
    data = _load(tmp_path, *_levels((4,)))
    assert data.input_shape == (4,) and data.input_dtype == torch.float32
    features = nn.Linear(4, 1, bias=False)
    nn.init.constant_(features.weight, 1 / 4)
    entry = evaluate(nn.Sequential(features, _level_head()), data, config=FAST)
    assert entry["accuracy"] == 1.0
    assert entry["flops"] == 2 * 4 + 2 * CLASSES
    assert set(entry["robustness"]["fgsm"]) == {"0.05", "0.1", "0.2"}


def test_float_model_on_token_ids_names_the_dtype_and_the_models_error(tmp_path):
    data = _load(tmp_path, *_tokens())
    with pytest.raises(NnzipError) as caught:
        evaluate(nn.Linear(8, CLASSES), data, name="mlp", config=FAST)
    message = str(caught.value)
    assert "model 'mlp' rejects the data" in message
    assert "shape (1, 8), dtype int64" in message
    assert "RuntimeError" in message and "dtype" in message.split("RuntimeError")[1]
    assert "x.astype('float32')" in message
    assert "batch of 2" not in message


def test_image_model_on_signals_names_the_shape_and_the_layout_hint(tmp_path):
    x, y = _levels((6, 6))  # grey images saved without layout='NHW': read as (N, C=6, L=6)
    data = _load(tmp_path, x, y)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, CLASSES))
    with pytest.raises(NnzipError) as caught:
        evaluate(model, data, config=FAST)
    message = str(caught.value)
    assert "shape (1, 6, 6), dtype float32" in message
    assert "RuntimeError" in message
    assert "layout='NHW'" in message
    fixed = _load(tmp_path, x, y, layout="NHW")
    assert evaluate(model, fixed, config=FAST)["accuracy"] is not None
