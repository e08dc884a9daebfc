"""The one data type every stage sees: train / validation / test splits held in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from nnzip.errors import NnzipError

#: One (inputs, targets) mini-batch.
Batch = tuple[torch.Tensor, torch.Tensor]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class DataSplits:
    """A classification data set split three ways.

    ``val`` is carved out of the training data and is what early stopping and calibration use;
    ``test`` is only ever used for the final measurements. Inputs are float32 tensors in
    ``input_range`` (for images, pixels in [0, 1]), or int64 for integer data such as token ids
    (:attr:`input_dtype`); labels are int64 class indices.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    input_range: tuple[float, float] = (0.0, 1.0)
    augment: Augment | None = field(default=None, repr=False)
    #: Names of the classes by index, where the data has them (image folders).
    class_names: tuple[str, ...] | None = None
    #: What the data is for, which decides the metrics, the losses and the stages that fit
    #: (:mod:`nnzip.tasks`): ``classify`` (a label per sample, or per position), ``lm`` (causal
    #: language modelling: targets are the next tokens, the metric is perplexity) or ``embed``
    #: (sentence embeddings judged on STS).
    task: str = "classify"

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False,
               seed: int = 0) -> DataLoader:
        """A DataLoader over one split; shuffling is seeded so runs repeat exactly."""
        if split not in ("train", "val", "test"):
            raise NnzipError(f"unknown split {split!r}: use 'train', 'val' or 'test'")
        dataset = getattr(self, split)
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)

    @property
    def input_dtype(self) -> torch.dtype:
        """The inputs' dtype: float32, or int64 for integer data (token ids)."""
        return self.test.tensors[0].dtype

    def summary(self) -> dict:
        return {"name": self.name, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "num_classes": self.num_classes,
                "input_shape": list(self.input_shape),
                "input_dtype": str(self.input_dtype).removeprefix("torch."),
                **({} if self.task == "classify" else {"task": self.task})}


def input_dtype_for(x: np.ndarray) -> torch.dtype:
    """int64 for integer arrays (token ids index embeddings, which need int64), else float32.

    Booleans become float32 0/1, like any other feature; there is no other normalisation.
    """
    return torch.int64 if np.issubdtype(x.dtype, np.integer) else torch.float32


def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Inputs keep their kind (integer -> int64, anything else -> float32); labels are int64."""
    return TensorDataset(torch.as_tensor(x, dtype=input_dtype_for(x)),
                         torch.as_tensor(y, dtype=torch.int64))


def stratified_split(y: np.ndarray, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with every class represented in proportion; deterministic for a seed."""
    if not 0.0 < val_fraction < 1.0:
        raise NnzipError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_val = max(1, round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))


def three_way_split(y: np.ndarray, val_fraction: float, test_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test), each stratified by class and deterministic for a seed.

    ``test_fraction`` is a fraction of all samples; ``val_fraction`` is a fraction of what remains
    after the test split, so validation is carved out of training data exactly as for MNIST.
    """
    if not 0.0 < test_fraction < 1.0:
        raise NnzipError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rest_idx, test_idx = stratified_split(y, test_fraction, seed)
    # A second, derived seed keeps the two draws independent while staying reproducible.
    train_pos, val_pos = stratified_split(y[rest_idx], val_fraction, seed + 1)
    return rest_idx[train_pos], rest_idx[val_pos], test_idx


def splits_from_arrays(name: str, x: np.ndarray, y: np.ndarray, *, val_fraction: float,
                       test_fraction: float, seed: int, num_classes: int,
                       input_range: tuple[float, float] = (0.0, 1.0),
                       x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                       augment: Augment | None = None,
                       class_names: tuple[str, ...] | None = None) -> DataSplits:
    """Build :class:`DataSplits` from in-memory arrays with deterministic stratified splits.

    When ``x_test``/``y_test`` are given they are the test split as they are and never mixed into
    training; ``test_fraction`` is then ignored and only validation is carved out of ``x``.
    """
    if x_test is None:
        train_idx, val_idx, test_idx = three_way_split(y, val_fraction, test_fraction, seed)
        x_test, y_test = x[test_idx], y[test_idx]
    else:
        train_idx, val_idx = stratified_split(y, val_fraction, seed)
    return DataSplits(name=name, train=to_dataset(x[train_idx], y[train_idx]),
                      val=to_dataset(x[val_idx], y[val_idx]), test=to_dataset(x_test, y_test),
                      num_classes=num_classes, input_shape=tuple(int(d) for d in x.shape[1:]),
                      input_range=(float(input_range[0]), float(input_range[1])),
                      augment=augment, class_names=class_names)


def probe_batch(data: DataSplits, batch_size: int = 1, split: str = "test") -> torch.Tensor:
    """The first ``batch_size`` real inputs of ``split``, its rows repeated when it has fewer.

    Every probe of a model (does it accept the data, FLOPs, latency, memory, export examples) runs
    on this: zeros or noise would be float where a model wants integer token ids, and only the
    data itself is sure to hold valid values. The same rows every call, so runs repeat.
    """
    if batch_size < 1:
        raise NnzipError(f"a probe batch needs at least one sample, got batch_size={batch_size}")
    inputs = getattr(data, split).tensors[0]
    if len(inputs) == 0:
        inputs = next((getattr(data, other).tensors[0] for other in ("test", "val", "train")
                       if len(getattr(data, other))), inputs)
    if len(inputs) == 0:
        raise NnzipError(f"data {data.name!r} has no samples to probe a model with: pass data "
                         "with at least one sample")
    return inputs[torch.arange(batch_size) % len(inputs)]


#: Logit entries one evaluation batch may hold (2^24 float32 values: 64 MiB). A language model
#: gives (batch, positions, vocabulary) logits, 200 000 times an MNIST classifier's per sample.
EVAL_LOGITS_BUDGET = 2**24


def eval_batch_size(data: DataSplits, largest: int = 256) -> int:
    """The batch size that keeps one batch's logits within :data:`EVAL_LOGITS_BUDGET`: ``largest``
    for a classifier (10 classes: 256), 8 for 64-token blocks over a 30 522-word vocabulary."""
    targets = data.test.tensors[1] if len(data.test) else data.train.tensors[1]
    per_sample = max(1, data.num_classes) * max(1, targets[0].numel() if len(targets) else 1)
    return max(1, min(largest, EVAL_LOGITS_BUDGET // per_sample))


def describe_inputs(batch: torch.Tensor) -> str:
    """'shape (2, 1, 28, 28), dtype float32': what a model was given, for error messages."""
    return f"shape {tuple(batch.shape)}, dtype {str(batch.dtype).removeprefix('torch.')}"


def calibration_batches(data: DataSplits, count: int, batch_size: int = 64,
                        seed: int = 0) -> list[Batch]:
    """The first ``count`` batches of a seeded shuffle of the training split (no augmentation).

    Calibration uses training data, never the test split; the validation split stays for choosing.
    """
    if count < 1:
        raise NnzipError(f"calibration needs at least one batch, got {count}: pass "
                         "calibration_batches >= 1")
    batches = []
    for index, batch in enumerate(data.loader("train", batch_size=batch_size, shuffle=True,
                                              seed=seed)):
        if index >= count:
            break
        batches.append((batch[0], batch[1]))
    return batches


def require_batches(batches: Iterable, method: str) -> list:
    """``batches`` as a list (methods that pass over them twice would spend a generator), or a
    clear error naming ``method`` when there are none."""
    batches = list(batches)
    if not batches:
        raise NnzipError(f"{method} needs calibration data: pass at least one batch of training "
                         "inputs (e.g. nnzip.data.calibration_batches(data, 8))")
    return batches
