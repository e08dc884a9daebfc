"""Generalization under shift: the task metric on deterministic, shifted copies of the test split.

A compressed model that loses 0.02 points on the clean test split may lose several on data that
is a little different; these suites show it. Two kinds of shift:

- **Intra-dataset** (images): the test images corrupted at a few severities, in the spirit of
  MNIST-C (Mu & Gilmer 2019) and ImageNet-C (Hendrycks & Dietterich 2019): rotation,
  translation, Gaussian blur, contrast reduction, elastic deformation (Simard et al. 2003) and
  pixel noise. **Inter-dataset**: scikit-learn's 8×8 digits (other writers, another scanner),
  laid out as MNIST's digits are (:func:`nnzip.data.digits.digits_like_mnist`), for MNIST-like
  data only.
- **Text** (sentence encoders): the STS dev sentences with typos (adjacent characters swapped or
  one deleted), words dropped, or words' casing changed; the metric is STS Spearman.

Every shift is seeded and severities are nested: one seed draws the same directions, fields, noise
and edit positions for every severity, which only scales them (or raises the share of words
edited), so severity 2 is severity 1 made stronger, and every model sees exactly the same data.
The row key ``shift`` is ``{"metric", "values": {"rotate@1": ..., "digits8x8": ...}, "mean",
"samples"}`` (and ``"note"`` where part of a suite does not apply); the compressed-minus-original
difference per shift is taken in the report against its baseline row.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nnzip.errors import NnzipError
from nnzip.evaluate.config import MAX_SHIFT_SEVERITY

if TYPE_CHECKING:
    from nnzip.data.splits import DataSplits
    from nnzip.evaluate.config import EvalConfig

log = logging.getLogger(__name__)

#: The highest severity; severity 0 is the clean input.
MAX_SEVERITY = MAX_SHIFT_SEVERITY
#: The inter-dataset set's key in ``values``.
DIGITS_KEY = "digits8x8"
#: Pixel sizes below are for a 28-pixel side (MNIST) and scale with the image's side.
_REFERENCE_SIDE = 28

#: Strength of each image corruption at severities 1, 2, 3 (what the number means is in
#: :data:`IMAGE_CORRUPTIONS`' docstrings). Rotation and translation follow MNIST-C's ranges;
#: contrast and noise start at ImageNet-C's level 1 and stop short of chance on MNIST
#: (at ImageNet-C's level 5 LeNet-5 is near 13 %; noise as a share of the input range).
IMAGE_SEVERITIES: dict[str, tuple[float, float, float]] = {
    "rotate": (15.0, 30.0, 45.0),        # degrees, clockwise or anticlockwise per image
    "translate": (0.1, 0.15, 0.2),       # share of the side, in a random direction per image
    "blur": (0.75, 1.25, 2.0),           # Gaussian sigma in pixels (at a 28-pixel side)
    "contrast": (0.6, 0.45, 0.3),        # share of the contrast kept around each image's mean
    "elastic": (1.0, 1.75, 2.5),         # RMS displacement in pixels (at a 28-pixel side)
    "noise": (0.08, 0.16, 0.28),         # Gaussian sigma as a share of the input range
}
#: Smoothness of the elastic displacement field: Simard et al.'s sigma of 4 pixels on MNIST.
_ELASTIC_SMOOTHING = 4.0

#: Share of the words each text shift edits at severities 1, 2, 3.
TEXT_SEVERITIES: dict[str, tuple[float, float, float]] = {
    "typos": (0.1, 0.2, 0.4),            # words with two adjacent letters swapped or one deleted
    "word_dropout": (0.1, 0.2, 0.3),     # words removed (a sentence keeps at least one)
    "casing": (0.25, 0.5, 1.0),          # words upper-cased
}

Corruption = Callable[[torch.Tensor, float, np.random.Generator, tuple[float, float]],
                      torch.Tensor]


def shift_key(kind: str, severity: int) -> str:
    """The ``values`` key of one shifted set: ``rotate@2``."""
    return f"{kind}@{severity}"


def _side_scale(x: torch.Tensor) -> float:
    return min(x.shape[-2:]) / _REFERENCE_SIDE


def _warp(x: torch.Tensor, grid: torch.Tensor, low: float) -> torch.Tensor:
    """Sample ``x`` at ``grid`` (normalized coordinates, align_corners=False); pixels from
    outside the image are the range's low value (MNIST's black background)."""
    sampled = F.grid_sample(x - low, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return sampled + low


def _affine(x: torch.Tensor, pixel_matrix: torch.Tensor, pixel_offset: torch.Tensor,
            low: float) -> torch.Tensor:
    """Warp each image by its own affine map, given in pixels about the image centre: the input
    pixel read for output pixel p is ``pixel_matrix @ p + pixel_offset``. Converted here to
    grid_sample's normalized coordinates, so non-square images are not sheared."""
    height, width = x.shape[-2:]
    to_norm = torch.tensor([2.0 / width, 2.0 / height])
    theta = torch.empty(len(x), 2, 3)
    theta[:, :, :2] = pixel_matrix * to_norm[:, None] / to_norm[None, :]
    theta[:, :, 2] = pixel_offset * to_norm
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return _warp(x, grid, low)


def rotate(x: torch.Tensor, degrees: float, rng: np.random.Generator,
           input_range: tuple[float, float]) -> torch.Tensor:
    """Rotate each image by ``degrees`` about its centre, in a random sense per image."""
    sense = rng.choice([-1.0, 1.0], size=len(x))
    angles = torch.as_tensor(np.deg2rad(degrees) * sense, dtype=torch.float32)
    cos, sin = angles.cos(), angles.sin()
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return _affine(x, matrix, torch.zeros(len(x), 2), input_range[0])


def translate(x: torch.Tensor, share: float, rng: np.random.Generator,
              input_range: tuple[float, float]) -> torch.Tensor:
    """Move each image by ``share`` of its side in a random direction per image."""
    directions = torch.as_tensor(rng.uniform(0.0, 2 * math.pi, size=len(x)), dtype=torch.float32)
    distance = share * min(x.shape[-2:])
    offset = -distance * torch.stack([directions.cos(), directions.sin()], 1)
    return _affine(x, torch.eye(2).expand(len(x), 2, 2), offset, input_range[0])


def blur(x: torch.Tensor, sigma: float, rng: np.random.Generator,
         input_range: tuple[float, float]) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels (at a 28-pixel side) over height and
    width; a weighted mean of the pixels, so it stays in range."""
    pixels = sigma * _side_scale(x)
    blurred = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, pixels, pixels), mode="nearest")
    return torch.from_numpy(blurred)


def contrast(x: torch.Tensor, kept: float, rng: np.random.Generator,
             input_range: tuple[float, float]) -> torch.Tensor:
    """Pull each image towards its own mean, keeping ``kept`` of its contrast (ImageNet-C)."""
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return mean + (x - mean) * kept


def elastic(x: torch.Tensor, rms_pixels: float, rng: np.random.Generator,
            input_range: tuple[float, float]) -> torch.Tensor:
    """Elastic deformation (Simard, Steinkraus & Platt 2003): a uniform random displacement field
    smoothed by a Gaussian of 4 pixels, scaled to ``rms_pixels`` RMS displacement (both at a
    28-pixel side). Scaled to an RMS rather than by Simard's alpha, so the number says how far
    pixels move."""
    n, _, height, width = x.shape
    scale = _side_scale(x)
    field = rng.uniform(-1.0, 1.0, size=(n, 2, height, width))
    smoothing = _ELASTIC_SMOOTHING * scale
    field = ndimage.gaussian_filter(field, sigma=(0, 0, smoothing, smoothing), mode="constant")
    rms = np.sqrt((field ** 2).mean(axis=(1, 2, 3), keepdims=True)).clip(min=1e-12)
    displacement = torch.as_tensor(field / rms * rms_pixels * scale, dtype=torch.float32)
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), list(x.shape), align_corners=False)
    to_norm = torch.tensor([2.0 / width, 2.0 / height])
    grid = base + displacement.permute(0, 2, 3, 1) * to_norm
    return _warp(x, grid, input_range[0])


def noise(x: torch.Tensor, share: float, rng: np.random.Generator,
          input_range: tuple[float, float]) -> torch.Tensor:
    """Add Gaussian noise of standard deviation ``share`` of the input range."""
    low, high = input_range
    drawn = torch.from_numpy(rng.standard_normal(size=tuple(x.shape), dtype=np.float32))
    return x + drawn * (share * (high - low))


IMAGE_CORRUPTIONS: dict[str, Corruption] = {
    "rotate": rotate, "translate": translate, "blur": blur, "contrast": contrast,
    "elastic": elastic, "noise": noise,
}


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or not \
            0 <= severity <= MAX_SEVERITY:
        raise NnzipError(f"shift severity must be a whole number from 0 (clean) to "
                         f"{MAX_SEVERITY}, got {severity!r}")


def _rng(seed: int, kind: str) -> np.random.Generator:
    # One stream per kind, the same for every severity (nested severities, see the module doc);
    # the kind's name, not its position, seeds it, so adding a kind changes no other.
    return np.random.default_rng([seed, *kind.encode()])


def corrupt(x: torch.Tensor, kind: str, severity: int, *, seed: int = 0,
            input_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``x`` (N, C, H, W floats in ``input_range``) corrupted by ``kind`` at ``severity``
    (0 = unchanged, 1–3 = :data:`IMAGE_SEVERITIES`), deterministic in ``seed``; same shape and
    dtype, values clamped to ``input_range``. ``x`` is never changed."""
    if kind not in IMAGE_CORRUPTIONS:
        raise NnzipError(f"unknown image shift {kind!r}: use one of "
                         f"{', '.join(IMAGE_CORRUPTIONS)}")
    _check_severity(severity)
    if x.dim() != 4 or not x.is_floating_point():
        raise NnzipError(f"image shifts take (N, C, H, W) float images, got shape "
                         f"{tuple(x.shape)} of {str(x.dtype).removeprefix('torch.')}: pass "
                         "image data")
    if severity == 0:
        return x.clone()
    strength = IMAGE_SEVERITIES[kind][severity - 1]
    corrupted = IMAGE_CORRUPTIONS[kind](x.detach().float().cpu(), strength, _rng(seed, kind),
                                        input_range)
    return corrupted.clamp(*input_range).to(dtype=x.dtype, device=x.device)


# --- text ---------------------------------------------------------------------------------


def _word_draws(sentence: str, kind: str, seed: int) -> random.Random:
    # Seeded by the sentence itself (str seeds hash with SHA-512, the same in every process), so
    # a sentence is edited the same way whatever else is in the set.
    return random.Random(f"{seed}/{kind}/{sentence}")


def _typo(word: str, draw: random.Random) -> str:
    letters = [i for i, char in enumerate(word) if char.isalpha()]
    if len(letters) < 2:
        return word
    position = draw.randrange(len(letters) - 1)
    i, following = letters[position], letters[position + 1]
    if draw.random() < 0.5:  # swap a letter with the next letter ("dont'" is no typo of "don't")
        chars = list(word)
        chars[i], chars[following] = chars[following], chars[i]
        return "".join(chars)
    return word[:i] + word[i + 1:]


def shift_sentence(sentence: str, kind: str, severity: int, seed: int = 0) -> str:
    """``sentence`` with ``kind`` (:data:`TEXT_SEVERITIES`) applied at ``severity`` (0 = as is).

    Every word draws one number (and its edit) from a stream seeded by ``seed``, ``kind`` and the
    sentence; a word is edited when its number is below the severity's share, so a higher
    severity keeps every edit of a lower one and adds more."""
    if kind not in TEXT_SEVERITIES:
        raise NnzipError(f"unknown text shift {kind!r}: use one of {', '.join(TEXT_SEVERITIES)}")
    _check_severity(severity)
    words = sentence.split()
    if severity == 0 or not words:
        return sentence
    share = TEXT_SEVERITIES[kind][severity - 1]
    draw = _word_draws(sentence, kind, seed)
    kept = []
    for word in words:
        chosen = draw.random() < share
        edited = _typo(word, random.Random(draw.random())) if kind == "typos" else word
        if not chosen:
            kept.append(word)
        elif kind == "typos":
            kept.append(edited)
        elif kind == "casing":
            kept.append(word.upper())
    return " ".join(kept or words[:1])


# --- measuring ------------------------------------------------------------------------------


def _summary(metric: str, values: dict[str, float], samples: int,
             notes: Sequence[str] = ()) -> dict:
    measured = [v for v in values.values() if v is not None]
    result = {"metric": metric, "values": values,
              "mean": float(np.mean(measured)) if measured else None, "samples": samples}
    if notes:
        result["note"] = "; ".join(notes)
    return result


def _accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    from nnzip.evaluate.accuracy import accuracy, predict_logits

    return accuracy(predict_logits(model, DataLoader(TensorDataset(x, y),
                                                     batch_size=batch_size)), y)


def mnist_like(data: DataSplits) -> str | None:
    """Why the 8×8 digits are no inter-dataset set for ``data``, or None when they are: ten
    classes of one-channel square images of at least 16 pixels in [0, 1]."""
    shape = tuple(data.input_shape)
    if data.num_classes != 10 or len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2] \
            or shape[1] < 16 or tuple(data.input_range) != (0.0, 1.0):
        return (f"{DIGITS_KEY} not measured: the 8×8 digits stand in only for MNIST-like data "
                f"(10 classes of 1×H×H images in [0, 1], H ≥ 16), not {data.num_classes} classes "
                f"of {'×'.join(map(str, shape))}")
    return None


def image_shift(model: nn.Module, data: DataSplits, config: EvalConfig) -> dict:
    """Accuracy of ``model`` on every image corruption at ``config.shift_severities`` (on the
    first ``config.shift_samples`` test images) and on the 8×8 digits where the data is
    MNIST-like (a seeded draw of as many of them)."""
    from nnzip.data.digits import digits_like_mnist

    x, y = data.test.tensors
    if config.shift_samples is not None:
        x, y = x[:config.shift_samples], y[:config.shift_samples]
    values = {}
    for kind in IMAGE_CORRUPTIONS:
        for severity in config.shift_severities:
            shifted = corrupt(x, kind, severity, seed=config.shift_seed,
                              input_range=tuple(data.input_range))
            values[shift_key(kind, severity)] = _accuracy_on(model, shifted, y,
                                                             config.eval_batch_size)
    why_not = mnist_like(data)
    if why_not is None:
        digits, labels = digits_like_mnist(data.input_shape[-1])
        if config.shift_samples is not None and config.shift_samples < len(digits):
            chosen = torch.randperm(len(digits), generator=torch.Generator().manual_seed(
                config.shift_seed))[:config.shift_samples]
            digits, labels = digits[chosen], labels[chosen]
        values[DIGITS_KEY] = _accuracy_on(model, digits, labels, config.eval_batch_size)
    return _summary("accuracy", values, len(y), [why_not] if why_not else [])


def _lowercasing(encoder: nn.Module) -> bool:
    """Whether the encoder's tokenizer lowercases (an uncased BERT: casing is then no shift)."""
    ids = encoder.tokenizer(["Shift", "shift"])["input_ids"]
    return ids[0] == ids[1]


def text_shift(model: nn.Module, data, reference: nn.Module | None, config: EvalConfig) -> dict:
    """STS Spearman of a sentence encoder on the dev pairs (the first ``config.shift_samples``
    of them) with every sentence shifted by each :data:`TEXT_SEVERITIES` kind; casing is left out
    for a tokenizer that lowercases (it would change nothing)."""
    from nnzip.evaluate.embedding import encode, sts_spearman

    pairs = getattr(data, "pairs", None)
    tokenizer_source = next((m for m in (model, reference) if hasattr(m, "tokenize")), None)
    if pairs is None or tokenizer_source is None:
        return _summary("spearman", {}, 0, ["not measured: the text shifts need the STS pairs "
                                            "and a model that tokenizes"])
    if config.shift_samples is not None:
        pairs = pairs.head(max(2, config.shift_samples))
    sentences = pairs.sentences()
    values, notes = {}, []
    kinds = list(TEXT_SEVERITIES)
    if _lowercasing(tokenizer_source):
        kinds.remove("casing")
        notes.append("casing not measured: the tokenizer lowercases, so it would change nothing")
    for kind in kinds:
        for severity in config.shift_severities:
            shifted = [shift_sentence(s, kind, severity, config.shift_seed) for s in sentences]
            embeddings = encode(model, shifted, config.eval_batch_size,
                                tokenizer_source=tokenizer_source)
            values[shift_key(kind, severity)] = sts_spearman(sentences, embeddings, pairs)
    return _summary("spearman", values, len(pairs), notes)


def shift_report(model: nn.Module, data: DataSplits, reference: nn.Module | None,
                 config: EvalConfig) -> dict | None:
    """The row's ``shift`` entry: the image suite for a classifier of images (one label per
    image), the text suite for a sentence encoder, a note for anything else; None when
    ``config.shift_severities`` is empty (shift measurement off)."""
    if not config.shift_severities:
        return None
    x, y = data.test.tensors
    if data.task == "embed":
        return text_shift(model, data, reference, config)
    if data.task == "classify" and x.dim() == 4 and x.is_floating_point() and y.dim() == 1:
        return image_shift(model, data, config)
    return _summary("accuracy" if data.task == "classify" else "perplexity", {}, 0,
                    [f"not measured: the shift suites cover image classifiers (one label per "
                     f"N×C×H×W image) and sentence encoders, not {data.task} data of "
                     f"{'×'.join(map(str, data.input_shape))}"])


# --- report ---------------------------------------------------------------------------------


def is_shift_entry(value: object) -> bool:
    """Whether ``value`` is a row's ``shift`` as :func:`shift_report` writes it (or null): what
    ``nnzip report`` checks in a report.json before rendering it."""
    def number(item: object) -> bool:
        return isinstance(item, int | float) and not isinstance(item, bool)

    if value is None:
        return True
    if not isinstance(value, dict) or not isinstance(value.get("metric"), str) \
            or not isinstance(value.get("values"), dict):
        return False
    return (all(isinstance(k, str) and (v is None or number(v))
                for k, v in value["values"].items())
            and (value.get("mean") is None or number(value["mean"]))
            and (value.get("samples") is None or number(value["samples"]))
            and isinstance(value.get("note", ""), str))


def _shift_keys(models: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for model in models:
        keys.update(dict.fromkeys((model.get("shift") or {}).get("values") or {}))
    return list(keys)


def _shift_scale(models: list[dict]) -> tuple[Callable, float, int, str]:
    """(format of a value, scale of a difference, its decimals, the unit's name) for the metric
    the shift entries report: accuracy in percent and points, Spearman as is."""
    from nnzip.evaluate.tables import fmt_percent, fmt_plain

    metric = next(((m.get("shift") or {}).get("metric") for m in models if m.get("shift")),
                  "accuracy")
    return (fmt_percent, 100.0, 2, "points") if metric == "accuracy" else (fmt_plain, 1.0, 4, "")


def shift_table(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the shift section: one row per shifted set (and the clean test split
    and the mean), the metric of every model, then each model's difference from the baseline
    row (:func:`~nnzip.evaluate.tables.baseline_index`); empty when no model measured a shift."""
    from nnzip.evaluate.tables import NA, baseline_index, model_labels

    keys = _shift_keys(models)
    if not keys:
        return [], []
    fmt, scale, digits, unit = _shift_scale(models)
    base = baseline_index(models)
    labels = model_labels(models)
    others = [i for i in range(len(models)) if i != base]
    metric = next((m["shift"]["metric"] for m in models if m.get("shift")), "accuracy")

    def value(model: dict, key: str) -> float | None:
        if key == "clean":
            return model.get(metric)
        shift = model.get("shift") or {}
        return shift.get("mean") if key == "mean" else (shift.get("values") or {}).get(key)

    def difference(index: int, key: str) -> str:
        mine, theirs = value(models[index], key), value(models[base], key)
        return NA if mine is None or theirs is None else f"{scale * (mine - theirs):+.{digits}f}"

    columns = ["Shift", *labels,
               *[f"Δ {labels[i]}" + (f" ({unit})" if unit else "") for i in others]]
    samples = next((m["shift"].get("samples") for m in models if m.get("shift")), None)
    shown = {"clean": "clean (whole test split)",
             "mean": "mean of shifts" + (f" ({samples} samples each)" if samples else "")}
    rows = [[shown.get(key, key), *[fmt(value(model, key)) for model in models],
             *[difference(i, key) for i in others]] for key in ("clean", *keys, "mean")]
    return columns, rows


def shift_notes(models: list[dict]) -> list[str]:
    """'name (stage): why' for every model whose shift suite is (partly) not measured."""
    return [f"{model['name']} ({model['stage']}): {model['shift']['note']}"
            for model in models if (model.get("shift") or {}).get("note")]


def shift_chart(models: list[dict]) -> bytes | None:
    """The metric on every shifted set per model (left) and each model's difference from the
    baseline row (right): where compression keeps generalization and where it loses it."""
    from matplotlib.figure import Figure

    from nnzip.evaluate.figures import model_colors, to_png
    from nnzip.evaluate.tables import baseline_index, short_labels

    keys = _shift_keys(models)
    if not keys:
        return None
    _, scale, _, unit = _shift_scale(models)
    base = baseline_index(models)
    colors, labels = model_colors(len(models)), short_labels(models)
    positions = list(range(len(keys)))

    def series(model: dict) -> list[float]:
        values = (model.get("shift") or {}).get("values") or {}
        return [math.nan if values.get(k) is None else scale * values[k] for k in keys]

    panels = 2 if len(models) > 1 else 1
    fig = Figure(figsize=(max(6.0, 0.32 * len(keys)) * panels / 1.4 + 1, 3.6),
                 layout="constrained")
    metric_name = "accuracy (%)" if scale == 100.0 else "STS Spearman"
    # One line per kind across its severities: a line from rotate@3 to translate@1 means nothing.
    groups: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key.split("@")[0], []).append(position)

    def draw(axis, values: list[float], color, label: str) -> None:
        for number, group in enumerate(groups.values()):
            axis.plot(group, [values[i] for i in group], marker="o", markersize=3, linewidth=1,
                      color=color, label=label if number == 0 else None)

    ax = fig.add_subplot(1, panels, 1)
    for color, label, model in zip(colors, labels, models, strict=True):
        draw(ax, series(model), color, label)
    ax.set_ylabel(metric_name)
    ax.set_title("Under shift", fontsize=9, loc="left")
    if panels == 2:
        delta = fig.add_subplot(1, panels, 2)
        reference = series(models[base])
        for index, (color, label, model) in enumerate(zip(colors, labels, models, strict=True)):
            if index != base:
                draw(delta, [a - b for a, b in zip(series(model), reference, strict=True)],
                     color, label)
        delta.axhline(0.0, color="#57606a", linewidth=0.8)
        delta.set_ylabel(f"Δ vs baseline{f' ({unit})' if unit else ''}")
        delta.set_title(f"Compressed minus {labels[base]}", fontsize=9, loc="left")
    for axis in fig.axes:
        axis.set_xticks(positions, keys, rotation=60, ha="right", fontsize=7)
        axis.grid(alpha=0.3)
        axis.spines[["top", "right"]].set_visible(False)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8,
               ncol=min(len(models), 4), frameon=False)
    return to_png(fig)
