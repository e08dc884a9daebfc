import numpy as np
import pytest
import torch
from PIL import Image

from nnzip.data import load_dataset, load_image_folder, load_npz
from nnzip.errors import NnzipError


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _classes(n: int) -> np.ndarray:
    return np.arange(n) % 3


def test_npz_round_trip_adds_channel_axis_and_records_range(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2.0, 5.0, size=(60, 6, 5))
    path = _npz(tmp_path, x=x, y=_classes(60))
    data = load_npz(path, val_fraction=0.2, test_fraction=0.25, seed=0)
    assert data.input_shape == (1, 6, 5) and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (36, 9, 15)
    assert data.input_range == pytest.approx((x.min(), x.max()))
    together = torch.cat([data.train.tensors[0], data.val.tensors[0], data.test.tensors[0]])
    assert sorted(together.sum(dim=(1, 2, 3)).tolist()) == pytest.approx(
        sorted(x.astype(np.float32).sum(axis=(1, 2)).tolist()), rel=1e-5)


def test_npz_user_test_split_is_used_as_is(tmp_path):
    x, x_test = np.random.default_rng(0).normal(size=(2, 30, 4))
    path = _npz(tmp_path, x=x, y=_classes(30), x_test=x_test, y_test=_classes(30))
    data = load_npz(path, val_fraction=0.2, seed=0)
    assert data.input_shape == (4,)
    assert torch.equal(data.test.tensors[0], torch.as_tensor(x_test, dtype=torch.float32))
    assert len(data.train) + len(data.val) == 30


def test_npz_missing_key_lists_the_keys_found(tmp_path):
    path = _npz(tmp_path, inputs=np.zeros((4, 2)), y=_classes(4))
    with pytest.raises(NnzipError, match="found: inputs, y"):
        load_npz(path)


def test_npz_length_mismatch_is_an_error(tmp_path):
    with pytest.raises(NnzipError, match="10 samples"):
        load_npz(_npz(tmp_path, x=np.zeros((10, 2)), y=_classes(9)))


def test_npz_non_integer_labels_are_an_error(tmp_path):
    with pytest.raises(NnzipError, match="non-integer"):
        load_npz(_npz(tmp_path, x=np.zeros((4, 2)), y=np.array([0.0, 0.5, 1.0, 1.0])))


def test_npz_one_dimensional_inputs_are_an_error(tmp_path):
    with pytest.raises(NnzipError, match="shape"):
        load_npz(_npz(tmp_path, x=np.zeros(4), y=_classes(4)))


def _write_images(root, sizes_by_class, mode="L"):
    rng = np.random.default_rng(0)
    for name, sizes in sizes_by_class.items():
        (root / name).mkdir(parents=True)
        for i, (width, height) in enumerate(sizes):
            shape = (height, width) if mode == "L" else (height, width, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / name / f"{i}.png")


def test_image_folder_reads_sorted_classes_resized_to_first_image(tmp_path):
    sizes = [(12, 10)] * 9 + [(20, 16)]  # the odd one out is resized
    _write_images(tmp_path / "imgs", {"dog": sizes, "cat": sizes})
    data = load_image_folder(tmp_path / "imgs", seed=0)
    assert data.class_names == ("cat", "dog") and data.num_classes == 2
    assert data.input_shape == (1, 10, 12)  # grey images stay one channel; (C, H, W)
    x = torch.cat([data.train.tensors[0], data.val.tensors[0], data.test.tensors[0]])
    assert len(x) == 20 and 0.0 <= x.min() and x.max() <= 1.0


def test_image_folder_rgb_and_explicit_size(tmp_path):
    _write_images(tmp_path / "imgs", {"a": [(9, 9)] * 5, "b": [(9, 9)] * 5}, mode="RGB")
    data = load_image_folder(tmp_path / "imgs", image_size=(6, 7), val_fraction=0.2,
                             test_fraction=0.2)
    assert data.input_shape == (3, 6, 7)
    assert load_image_folder(tmp_path / "imgs", grayscale=True).input_shape == (1, 9, 9)


def test_image_folder_with_an_empty_class_is_an_error(tmp_path):
    _write_images(tmp_path / "imgs", {"a": [(8, 8)] * 3})
    (tmp_path / "imgs" / "b").mkdir()
    with pytest.raises(NnzipError, match="no images"):
        load_image_folder(tmp_path / "imgs")


def test_empty_image_folder_is_an_error(tmp_path):
    with pytest.raises(NnzipError, match="no class sub-folders"):
        load_image_folder(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    _write_images(tmp_path / "imgs", {"a": [(8, 8)] * 3})
    broken = tmp_path / "imgs" / "a" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(NnzipError, match="broken.png"):
        load_image_folder(tmp_path / "imgs")


def test_load_dataset_dispatches_on_the_spec(tmp_path):
    assert load_dataset("digits").name == "digits"
    path = _npz(tmp_path, x=np.zeros((12, 3)), y=_classes(12))
    assert load_dataset(str(path)).input_shape == (3,)
    _write_images(tmp_path / "imgs", {"a": [(8, 8)] * 5, "b": [(8, 8)] * 5})
    assert load_dataset(str(tmp_path / "imgs")).class_names == ("a", "b")


def test_load_dataset_unknown_spec_lists_choices(tmp_path):
    with pytest.raises(NnzipError, match='"mnist", "digits"'):
        load_dataset("cifar10")
    with pytest.raises(NnzipError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"))
