"""scikit-learn's 8×8 handwritten digits (Alpaydin & Kaynak 1998): a tiny, instant data set.

1 797 images with 17 grey levels, shipped inside scikit-learn, so it needs no files at all; handy
for fast tests and smoke runs of a whole recipe.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nnzip.data.splits import DataSplits, splits_from_arrays
from nnzip.errors import NnzipError

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


#: MNIST's digits were size-normalised into a 20×20 box, then centred by their centre of mass in
#: a 28×28 field (LeCun et al. 1998); :func:`digits_like_mnist` lays the 8×8 digits out the same
#: way, scaled to the field's side.
MNIST_BOX, MNIST_FIELD = 20, 28


def digits_like_mnist(size: int = MNIST_FIELD) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1 797 digits as (N, 1, size, size) float32 in [0, 1] laid out as MNIST's are, and their
    int64 labels: an inter-dataset test set for an MNIST model (other writers, another scanner).

    Each 8×8 image is resized (bilinear) into a box of ``size·20/28`` pixels, placed in the
    middle of a ``size``×``size`` field of zeros and moved by whole pixels so its centre of mass
    sits at the field's centre, as MNIST's were. The move is a roll of at most the margin, so it
    only ever wraps background (zero) pixels.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    if size < 8:
        raise NnzipError(f"digits are 8×8: resize them to a side of at least 8, got {size}")
    bunch = sklearn_load_digits()
    images = torch.as_tensor(bunch.images[:, None, :, :] / MAX_PIXEL, dtype=torch.float32)
    box = max(8, round(size * MNIST_BOX / MNIST_FIELD))
    boxed = F.interpolate(images, size=(box, box), mode="bilinear", align_corners=False)
    before = (size - box) // 2
    field = F.pad(boxed.clamp(0.0, 1.0), (before, size - box - before, before, size - box - before))
    mass = field.sum(dim=(1, 2, 3)).clamp_min(1e-12)
    coords = torch.arange(size, dtype=torch.float32)
    centre_y = (field.sum(dim=(1, 3)) * coords).sum(dim=1) / mass
    centre_x = (field.sum(dim=(1, 2)) * coords).sum(dim=1) / mass
    middle = (size - 1) / 2
    margin = min(before, size - box - before)
    moves = torch.stack([(middle - centre_y).round(), (middle - centre_x).round()], dim=1)
    moves = moves.clamp(-margin, margin).long()
    laid_out = torch.stack([torch.roll(image, shifts=(int(dy), int(dx)), dims=(1, 2))
                            for image, (dy, dx) in zip(field, moves, strict=True)])
    return laid_out.contiguous(), torch.as_tensor(bunch.target, dtype=torch.int64)
