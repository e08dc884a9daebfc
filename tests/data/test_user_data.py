import numpy as np
import pytest
import torch
from PIL import Image

from nnzip.data import describe_inputs, load_dataset, load_image_folder, load_npz, probe_batch
from nnzip.errors import NnzipError


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _classes(n: int) -> np.ndarray:
    return np.arange(n) % 3


def test_npz_grey_images_gain_a_channel_axis_with_layout_nhw(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2.0, 5.0, size=(60, 6, 5))
    path = _npz(tmp_path, x=x, y=_classes(60), layout="NHW")
    data = load_npz(path, val_fraction=0.2, test_fraction=0.25, seed=0)
    assert data.input_shape == (1, 6, 5) and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (36, 9, 15)
    assert data.input_range == pytest.approx((x.min(), x.max()))
    together = torch.cat([data.train.tensors[0], data.val.tensors[0], data.test.tensors[0]])
    assert sorted(together.sum(dim=(1, 2, 3)).tolist()) == pytest.approx(
        sorted(x.astype(np.float32).sum(axis=(1, 2)).tolist()), rel=1e-5)


def test_npz_three_dimensional_inputs_keep_their_shape_as_signals(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 1, 16))  # (N, C, L): one-channel signals
    data = load_npz(_npz(tmp_path, x=x, y=_classes(30)), val_fraction=0.2, test_fraction=0.2)
    assert data.input_shape == (1, 16)
    assert data.test.tensors[0].shape[1:] == (1, 16)
    wide = load_npz(_npz(tmp_path, x=np.zeros((30, 6, 5)), y=_classes(30)))
    assert wide.input_shape == (6, 5)  # no axis added without layout='NHW'
    assert load_npz(_npz(tmp_path, x=x, y=_classes(30), layout="NCL")).input_shape == (1, 16)


def test_npz_volumes_load_with_five_axes(tmp_path):
    x = np.random.default_rng(0).random((24, 2, 3, 4, 5), dtype=np.float32)
    data = load_npz(_npz(tmp_path, x=x, y=_classes(24)), val_fraction=0.2, test_fraction=0.25)
    assert data.input_shape == (2, 3, 4, 5) and data.input_dtype == torch.float32
    together = torch.cat([data.train.tensors[0], data.val.tensors[0], data.test.tensors[0]])
    assert float(together.sum()) == pytest.approx(float(x.sum()), rel=1e-5)


def test_npz_integer_token_ids_stay_int64_and_unscaled(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50_000, size=(30, 12)).astype(np.int32)
    data = load_npz(_npz(tmp_path, x=ids, y=_classes(30)), val_fraction=0.2, test_fraction=0.2)
    assert data.input_dtype == torch.int64 and data.input_shape == (12,)
    together = torch.cat([data.train.tensors[0], data.val.tensors[0], data.test.tensors[0]])
    assert together.dtype == torch.int64
    assert sorted(together.sum(dim=1).tolist()) == sorted(ids.astype(np.int64).sum(axis=1).tolist())
    assert data.summary()["input_dtype"] == "int64"
    assert data.summary()["input_shape"] == [12]


@pytest.mark.parametrize(("stored", "loaded"), [
    (np.uint8, torch.float32), (np.int16, torch.int64), (np.int64, torch.int64),
    (np.float64, torch.float32), (np.float16, torch.float32), (np.bool_, torch.float32)])
def test_npz_input_dtype_follows_the_stored_kind(tmp_path, stored, loaded):
    x = (np.arange(40).reshape(10, 4) % 2).astype(stored)
    data = load_npz(_npz(tmp_path, x=x, y=_classes(10)), val_fraction=0.2, test_fraction=0.2)
    assert data.input_dtype == loaded
    assert data.summary()["input_dtype"] == str(loaded).removeprefix("torch.")


def test_npz_float_nan_is_an_error(tmp_path):
    x = np.zeros((6, 2))
    x[3, 1] = np.nan
    with pytest.raises(NnzipError, match="NaN"):
        load_npz(_npz(tmp_path, x=x, y=_classes(6)))


def test_npz_layout_must_name_the_axes_of_x(tmp_path):
    with pytest.raises(NnzipError, match="layout 'NHW' names 3 axes"):
        load_npz(_npz(tmp_path, x=np.zeros((6, 1, 4, 4)), y=_classes(6), layout="NHW"))
    with pytest.raises(NnzipError, match="unknown layout 'HWC'.*NCDHW"):
        load_npz(_npz(tmp_path, x=np.zeros((6, 4, 4)), y=_classes(6), layout="HWC"))
    with pytest.raises(NnzipError, match="expected one string"):
        load_npz(_npz(tmp_path, x=np.zeros((6, 4, 4)), y=_classes(6), layout=np.zeros(3)))


def test_npz_test_split_of_another_kind_is_an_error(tmp_path):
    path = _npz(tmp_path, x=np.zeros((6, 3), dtype=np.int64), y=_classes(6),
                x_test=np.zeros((6, 3)), y_test=_classes(6))
    with pytest.raises(NnzipError, match="x holds int64 inputs but x_test float32"):
        load_npz(path)


def test_probe_batch_is_real_rows_of_the_split_repeated_when_short(tmp_path):
    ids = np.arange(60).reshape(20, 3)
    data = load_npz(_npz(tmp_path, x=ids, y=_classes(20)), val_fraction=0.2, test_fraction=0.2)
    test_inputs = data.test.tensors[0]
    probe = probe_batch(data, 2 * len(test_inputs) + 1)
    assert probe.dtype == torch.int64
    assert torch.equal(probe[:len(test_inputs)], test_inputs)
    assert torch.equal(probe[len(test_inputs):2 * len(test_inputs)], test_inputs)
    assert torch.equal(probe[-1], test_inputs[0])
    assert torch.equal(probe_batch(data, 2, split="train"), data.train.tensors[0][:2])
    assert describe_inputs(probe[:2]) == "shape (2, 3), dtype int64"


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


def test_npz_one_or_six_dimensional_inputs_are_an_error(tmp_path):
    with pytest.raises(NnzipError, match="shape"):
        load_npz(_npz(tmp_path, x=np.zeros(4), y=_classes(4)))
    with pytest.raises(NnzipError, match=r"\(N, C, D, H, W\)"):
        load_npz(_npz(tmp_path, x=np.zeros((4, 1, 2, 2, 2, 2)), y=_classes(4)))


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
