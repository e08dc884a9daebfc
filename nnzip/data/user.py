"""The user's own data: a ``.npz`` of arrays, or a folder of images with one sub-folder per class.

Both end as :class:`DataSplits` with deterministic stratified splits. Inputs are checked up front,
so a wrong key, shape or label type fails here with a message instead of deep in a training loop.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nnzip.data.splits import DataSplits, splits_from_arrays
from nnzip.errors import NnzipError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
#: Largest image decoded (8192 × 8192), checked from the file's header before decoding: below
#: PIL's own decompression-bomb limit (89 M pixels warns, 179 M raises).
MAX_IMAGE_PIXELS = 1 << 26
#: An .npz member may inflate to at most this ratio of its compressed size once past
#: :data:`NPZ_FREE_BYTES` (np.savez_compressed gives about 1.2–10 on real data; a zip bomb of
#: zeros gives about 1000).
NPZ_MAX_RATIO = 100
NPZ_FREE_BYTES = 64 << 20
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Class indices as int64; floats are accepted only when every value is a whole number."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise NnzipError(f"{path}: {key!r} has shape {y.shape}, expected one label per sample "
                         "(N,): store class indices, not one-hot vectors")
    whole = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_) or (
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    if not whole:
        raise NnzipError(f"{path}: {key!r} holds non-integer labels (dtype {y.dtype}): "
                         "store class indices 0..K-1 as integers")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise NnzipError(f"{path}: {key!r} has negative labels: store class indices 0..K-1")
    return y


#: Axis names an .npz may give its inputs in a ``layout`` entry, N (samples) first. Without one an
#: array is read by its number of axes: 2 (N, F), 3 (N, C, L), 4 (N, C, H, W), 5 (N, C, D, H, W).
LAYOUTS = ("NF", "NL", "NCL", "NHW", "NCHW", "NCDHW")
_SHAPES = "(N, features), (N, C, L), (N, C, H, W) or (N, C, D, H, W)"


def _layout(arrays: dict[str, np.ndarray], path: Path) -> str | None:
    """The optional ``layout`` entry: one string naming the axes of ``x`` (see :data:`LAYOUTS`)."""
    if "layout" not in arrays:
        return None
    value = arrays["layout"]
    if value.dtype.kind not in "US" or value.size != 1:
        raise NnzipError(f"{path}: 'layout' is a {value.dtype} array of shape {value.shape}, "
                         "expected one string: save it as np.savez(path, x=..., y=..., "
                         "layout='NHW')")
    layout = value.reshape(()).item()
    layout = (layout.decode() if isinstance(layout, bytes) else layout).strip().upper()
    if layout not in LAYOUTS:
        raise NnzipError(f"{path}: unknown layout {layout!r}: use one of {', '.join(LAYOUTS)} "
                         "(the axes of x, N for samples first)")
    return layout


def _inputs(x: np.ndarray, key: str, path: Path, layout: str | None) -> np.ndarray:
    """Inputs with exactly the shape they have; only ``layout='NHW'`` adds a channel axis.

    Integer arrays (token ids) become int64, the index type of ``nn.Embedding``, except uint8
    (pixels), which becomes float32 with floats and booleans. Nothing is rescaled; only floats
    are checked for NaN and infinity (integers cannot hold them).
    """
    if np.issubdtype(x.dtype, np.complexfloating) or not (
            np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_)):
        raise NnzipError(f"{path}: {key!r} has dtype {x.dtype}: store real numeric arrays "
                         "(integer token ids, or float features)")
    if layout is not None and x.ndim != len(layout):
        raise NnzipError(f"{path}: {key!r} has shape {x.shape} but layout {layout!r} names "
                         f"{len(layout)} axes: fix the layout or store {key} with those axes")
    if x.ndim not in (2, 3, 4, 5):
        raise NnzipError(f"{path}: {key!r} has shape {x.shape}: use {_SHAPES}, samples first "
                         "(grey images (N, H, W) also with layout='NHW')")
    if layout == "NHW":
        x = x[:, None]
    # uint8 is how pixels are stored (every image library's default), not token ids: it stays a
    # float input, as before. Other integer types are ids.
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
        if x.dtype == np.uint64 and x.size and x.max() > np.iinfo(np.int64).max:
            raise NnzipError(f"{path}: {key!r} holds values above the int64 maximum: store "
                             "token ids that fit int64")
        return x.astype(np.int64)
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise NnzipError(f"{path}: {key!r} contains NaN or infinite values: clean the data")
    return x


def _check_pair(x: np.ndarray, y: np.ndarray, x_key: str, y_key: str, path: Path) -> None:
    if len(x) != len(y):
        raise NnzipError(f"{path}: {x_key!r} has {len(x)} samples but {y_key!r} has {len(y)}: "
                         "give one label per sample")
    if len(x) == 0:
        raise NnzipError(f"{path}: {x_key!r} is empty: store at least one sample per class")


#: What zipfile and numpy raise for a damaged archive: a flipped bit can mark a member encrypted
#: (RuntimeError) or compressed by an unknown method (NotImplementedError), or corrupt a name.
_ZIP_ERRORS = (OSError, zipfile.BadZipFile, EOFError, ValueError, SyntaxError, RuntimeError,
               NotImplementedError, zlib.error)


def _npy_header(member, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of one .npy member, from its header alone."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype, member.tell()


def check_npz_sizes(path: Path) -> None:
    """Refuse, from the zip directory and the .npy headers alone, an .npz whose arrays declare
    more bytes than they hold (``np.load`` allocates the declared shape first) or that inflates
    like a zip bomb (:data:`NPZ_MAX_RATIO`)."""
    fix = "save it with np.savez(path, x=..., y=...)"
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.file_size > max(NPZ_FREE_BYTES, NPZ_MAX_RATIO * info.compress_size):
                    raise NnzipError(f"{path}: {info.filename} inflates from "
                                     f"{info.compress_size:,} to {info.file_size:,} bytes, more "
                                     f"than {NPZ_MAX_RATIO}× (a zip bomb?): {fix} (uncompressed)")
                with archive.open(info) as member:
                    shape, dtype, offset = _npy_header(member, info)
                if dtype.hasobject:
                    continue  # refused by np.load(allow_pickle=False), with its own message
                declared = math.prod(shape) * dtype.itemsize
                if offset + declared != info.file_size:
                    raise NnzipError(f"{path}: {info.filename} declares shape {shape} of "
                                     f"{dtype} ({declared:,} bytes) but holds "
                                     f"{info.file_size - offset:,}: corrupt file; {fix}")
    except _ZIP_ERRORS as exc:
        raise NnzipError(f"{path}: not a readable .npz file ({exc}): {fix}") from exc


def load_npz(path: str | os.PathLike, val_fraction: float = 0.1, test_fraction: float = 0.2,
             seed: int = 0) -> DataSplits:
    """Load arrays ``x`` (inputs) and ``y`` (class indices), optionally ``x_test``/``y_test``.

    ``x`` keeps its shape: (N, F) features or token ids, (N, C, L) signals, (N, C, H, W) images,
    (N, C, D, H, W) volumes. An optional string ``layout`` names its axes (:data:`LAYOUTS`); only
    ``'NHW'`` changes anything: grey images (N, H, W) gain a channel axis, (N, 1, H, W). Integer
    inputs other than uint8 stay integers (int64, for embedding lookups); uint8 pixels, floats
    and booleans become float32.

    Without a test split one is carved out (``test_fraction`` of all samples); with one, it is used
    as is and never mixed into training. ``input_range`` is the observed min and max of the inputs.
    """
    path = Path(path)
    if not path.is_file():
        raise NnzipError(f"data file not found: {path}: check the path")
    check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays need pickle, which could run code
        raise NnzipError(f"{path}: holds object arrays ({exc}): save plain numeric arrays "
                         "with np.savez") from exc
    except _ZIP_ERRORS as exc:
        raise NnzipError(f"{path}: not a readable .npz file ({exc}): "
                         "save it with np.savez(path, x=..., y=...)") from exc
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise NnzipError(f"{path}: missing array(s) {', '.join(missing)} (found: "
                         f"{', '.join(sorted(arrays)) or 'none'}): save with "
                         "np.savez(path, x=inputs, y=labels[, x_test=..., y_test=...])")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise NnzipError(f"{path}: has only one of x_test / y_test: store both or neither")
    layout = _layout(arrays, path)
    x, y = _inputs(arrays["x"], "x", path, layout), _labels(arrays["y"], "y", path)
    _check_pair(x, y, "x", "y", path)
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _inputs(arrays["x_test"], "x_test", path, layout)
        y_test = _labels(arrays["y_test"], "y_test", path)
        _check_pair(x_test, y_test, "x_test", "y_test", path)
        if x_test.shape[1:] != x.shape[1:]:
            raise NnzipError(f"{path}: x_test samples have shape {x_test.shape[1:]} but x "
                             f"samples {x.shape[1:]}: store both with the same shape")
        if x_test.dtype != x.dtype:
            raise NnzipError(f"{path}: x holds {x.dtype} inputs but x_test {x_test.dtype}: store "
                             "both as integers (token ids) or both as floats")
    num_classes = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    if len(np.unique(y)) < num_classes:
        logger.warning("%s: labels do not use every index 0..%d; some classes have no training "
                       "samples", path, num_classes - 1)
    low = min(float(x.min()), float(x_test.min()) if x_test is not None else np.inf)
    high = max(float(x.max()), float(x_test.max()) if x_test is not None else -np.inf)
    return splits_from_arrays(path.stem, x, y, val_fraction=val_fraction,
                              test_fraction=test_fraction, seed=seed, num_classes=num_classes,
                              input_range=(low, high), x_test=x_test, y_test=y_test)


def _class_images(root: Path) -> list[tuple[str, list[Path]]]:
    """(class name, sorted image paths) for every visible sub-folder, classes sorted by name."""
    if not root.is_dir():
        raise NnzipError(f"image folder not found: {root}: pass a folder with one sub-folder "
                         "of images per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise NnzipError(f"{root} has no class sub-folders: put each class's images in its own "
                         "sub-folder (e.g. cats/, dogs/)")
    found = []
    for folder in classes:
        images = sorted(p for p in folder.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise NnzipError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})"
                             ": add images or remove the folder")
        found.append((folder.name, images))
    return found


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise NnzipError(f"image {path} is {width}×{height} pixels, more than the "
                                 f"{MAX_IMAGE_PIXELS:,} allowed: resize it (the model sees "
                                 "every image at one small size anyway)")
            image.load()  # decode now, so a truncated file fails here and names itself
            return image.copy()
    except Image.DecompressionBombError as exc:
        raise NnzipError(f"image {path} is too large to decode safely ({exc}): resize it") \
            from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise NnzipError(f"cannot read image {path} ({exc}): fix or remove the file") from exc


def _image_size(value: int | tuple[int, int] | None, first: Image.Image) -> tuple[int, int]:
    """Target size as PIL's (width, height)."""
    if value is None:
        return first.size
    height, width = (value, value) if isinstance(value, int) else value
    if height < 1 or width < 1:
        raise NnzipError(f"image_size must be positive, got {value}")
    return width, height


def load_image_folder(path: str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                      grayscale: bool | None = None, val_fraction: float = 0.1,
                      test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Images in ``path/<class>/*.png|jpg|jpeg|bmp|gif`` as channel-first float32 in [0, 1].

    Class indices follow the sorted sub-folder names. Every image is resized to ``image_size``
    ((height, width) or one int; default: the first image's size). ``grayscale=None`` keeps one
    channel only when every image is grey already, otherwise images become RGB.
    """
    root = Path(path)
    classes = _class_images(root)
    images, labels = [], []
    for index, (_, files) in enumerate(classes):
        for file in files:
            images.append(_open_image(file))
            labels.append(index)
    if grayscale is None:
        grayscale = all(image.mode in _GRAY_MODES for image in images)
    mode = "L" if grayscale else "RGB"
    size = _image_size(image_size, images[0])
    pixels = []
    for image in images:
        image = image.convert(mode)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        pixels.append(np.asarray(image, dtype=np.uint8))
    x = np.stack(pixels).astype(np.float32) / 255.0
    x = x[:, None, :, :] if grayscale else x.transpose(0, 3, 1, 2)
    y = np.asarray(labels, dtype=np.int64)
    logger.debug("%s: %d images in %d classes, shape %s", root, len(x), len(classes),
                 x.shape[1:])
    return splits_from_arrays(root.name, np.ascontiguousarray(x), y, val_fraction=val_fraction,
                              test_fraction=test_fraction, seed=seed,
                              num_classes=len(classes),
                              class_names=tuple(name for name, _ in classes))
