import numpy as np
import pytest
import torch

from nnzip.data import load_digits, three_way_split
from nnzip.errors import NnzipError


def test_digits_splits_cover_all_images_with_every_class_in_each():
    data = load_digits(val_fraction=0.1, test_fraction=0.2, seed=0)
    sizes = len(data.train), len(data.val), len(data.test)
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=10)
    assert sizes[1] == pytest.approx(0.1 * (1797 - sizes[2]), abs=10)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    for split in (data.train, data.val, data.test):
        x, y = split.tensors
        assert x.shape[1:] == (1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
        assert set(y.tolist()) == set(range(10))


def test_digits_are_deterministic_per_seed():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=5)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])


def test_three_way_split_is_a_disjoint_cover():
    y = np.repeat(np.arange(4), 25)
    train, val, test = three_way_split(y, 0.1, 0.2, seed=0)
    everything = np.concatenate([train, val, test])
    assert sorted(everything.tolist()) == list(range(100))
    assert len(test) == 20 and len(val) == 8


def test_bad_test_fraction_is_an_error():
    with pytest.raises(NnzipError, match="test_fraction"):
        load_digits(test_fraction=1.5)
