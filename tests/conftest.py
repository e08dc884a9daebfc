"""Session-wide fixtures: the real MNIST splits and zoo models trained once on them."""

from pathlib import Path

import pytest

from nnzip.data import DataSplits, find_mnist_dir, load_digits, load_mnist
from nnzip.evaluate.latency import fixed_threads
from nnzip.train import train_zoo_model


@pytest.fixture(scope="session")
def mnist() -> DataSplits:
    """MNIST loaded once for the session: 4 500 train / 500 val real digits, 10 000 test."""
    return load_mnist(seed=0)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return find_mnist_dir()


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """scikit-learn's 8x8 digits: real data small enough to train on in a second."""
    return load_digits(seed=0)


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory, mnist) -> Path:
    """A cache folder holding LeNet-5 and LeNet-300-100 trained with their default recipes."""
    cache = tmp_path_factory.mktemp("zoo-cache")
    # One thread: on a shared 2-core machine two OpenMP threads fighting other work made
    # training several times slower (benchmarks/prune_structured.py measured 67 s vs 5 s).
    with fixed_threads(1):
        for arch in ("lenet5", "lenet300"):
            train_zoo_model(arch, mnist, cache_dir=cache, progress=False)
    return cache


@pytest.fixture(scope="session")
def lenet5(zoo_cache, mnist):
    return train_zoo_model("lenet5", mnist, cache_dir=zoo_cache, progress=False)


@pytest.fixture(scope="session")
def lenet300(zoo_cache, mnist):
    return train_zoo_model("lenet300", mnist, cache_dir=zoo_cache, progress=False)


@pytest.fixture(scope="session")
def minilm():
    """The shipped pretrained all-MiniLM-L6-v2, loaded once (tests must not change it in place:
    quantization works on copies)."""
    pytest.importorskip("transformers", reason="needs the transformers extra")
    from nnzip.models.hf import load_hf

    return load_hf("minilm")
