"""Data sets as :class:`DataSplits`: shipped MNIST and digits, STS-B text for language modelling
(``stsb-lm``), or the user's .npz / image folder.

:func:`load_dataset` turns the one string a user types (``--data``) into splits; the individual
loaders are public too, for use from Python.
"""

from __future__ import annotations

import os
from pathlib import Path

from nnzip.data.digits import load_digits
from nnzip.data.mnist import find_mnist_dir, load_mnist, random_shift, read_idx
from nnzip.data.splits import (
    Batch,
    DataSplits,
    calibration_batches,
    describe_inputs,
    probe_batch,
    stratified_split,
    three_way_split,
    to_dataset,
)
from nnzip.data.text import load_stsb_lm
from nnzip.data.user import LAYOUTS, load_image_folder, load_npz
from nnzip.errors import NnzipError

__all__ = [
    "BUILTIN_DATASETS", "LAYOUTS", "Batch", "DataSplits", "calibration_batches",
    "describe_inputs", "find_mnist_dir", "load_dataset", "load_digits",
    "load_image_folder", "load_mnist", "load_npz", "load_stsb_lm", "probe_batch",
    "random_shift", "read_idx", "stratified_split", "three_way_split", "to_dataset",
]

BUILTIN_DATASETS = ("mnist", "digits", "stsb-lm")


def load_dataset(spec: str, *, mnist_dir: str | os.PathLike | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0) -> DataSplits:
    """Load the data set named by ``spec``: "mnist", "digits", "stsb-lm" (STS-B sentences as
    64-token next-token blocks, :func:`load_stsb_lm`), a ``.npz`` file or an image folder.

    The built-in names win over a file or folder of the same name. ``test_fraction`` applies only
    where the data brings no test split of its own (digits, folders, a .npz without ``x_test``).
    """
    choices = ('"mnist", "digits", "stsb-lm", a path to a .npz file (arrays x, y), or a folder '
               "with one sub-folder of images per class")
    name = spec.strip().lower()
    if name == "mnist":
        return load_mnist(mnist_dir, val_fraction=val_fraction, seed=seed)
    if name == "digits":
        return load_digits(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if name == "stsb-lm":  # its test split is the STS-B dev sentences: test_fraction unused
        return load_stsb_lm(val_fraction=val_fraction, seed=seed)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise NnzipError(f"data file not found: {path}: check the path; valid data: {choices}")
        return load_npz(path, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if path.is_dir():
        return load_image_folder(path, val_fraction=val_fraction, test_fraction=test_fraction,
                                 seed=seed)
    raise NnzipError(f"unknown data set {spec!r}: use {choices}")
