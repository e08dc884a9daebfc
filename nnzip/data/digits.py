"""scikit-learn's 8×8 handwritten digits (Alpaydin & Kaynak 1998): a tiny, instant data set.

1 797 images with 17 grey levels, shipped inside scikit-learn, so it needs no files at all; handy
for fast tests and smoke runs of a whole recipe.
"""

from __future__ import annotations

import numpy as np

from nnzip.data.splits import DataSplits, splits_from_arrays

MAX_PIXEL = 16.0


def load_digits(val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0) -> DataSplits:
    """The digits as (N, 1, 8, 8) float32 in [0, 1], split train/val/test stratified by class.

    ``test_fraction`` is of all images, ``val_fraction`` of the rest (see
    :func:`nnzip.data.splits.three_way_split`).
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    x = (bunch.images[:, None, :, :] / MAX_PIXEL).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return splits_from_arrays("digits", x, y, val_fraction=val_fraction,
                              test_fraction=test_fraction, seed=seed,
                              num_classes=int(y.max()) + 1)
