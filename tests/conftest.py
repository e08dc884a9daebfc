"""Session-wide fixtures: the real MNIST splits and zoo models trained once on them."""

from pathlib import Path

import pytest
import torch

from nnzip.data import DataSplits, find_mnist_dir, load_digits, load_mnist
from nnzip.evaluate.latency import fixed_threads
from nnzip.models import create_model
from nnzip.train import TrainConfig, fit, train_zoo_model


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one torch thread: on the shared 2-core machine two OpenMP threads
    fighting other work ran several times slower than one (and timing was noisier)."""
    with fixed_threads(1):
        yield


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


def make_mlp(digits, seed: int = 0):
    """An untrained LeNet-300-100 sized for scikit-learn's 8×8 digits."""
    torch.manual_seed(seed)
    return create_model("lenet300", input_shape=digits.input_shape,
                        num_classes=digits.num_classes)


@pytest.fixture
def mlp(digits):
    """An untrained LeNet-300-100 sized for 8×8 digits (fresh for every test)."""
    return make_mlp(digits)


@pytest.fixture(scope="session")
def trained_mlp_state(digits):
    """Weights of a LeNet-300-100 trained for 6 epochs on digits (a second of training)."""
    model = make_mlp(digits)
    with fixed_threads(1):
        fit(model, digits, TrainConfig(epochs=6, patience=None), progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def mlp_factory():
    """``make_mlp`` for module- or session-scoped fixtures (``from conftest import`` would get
    whichever tests/**/conftest.py Python imported first under that name)."""
    return make_mlp


#: The tiny search space of the search tests, written once: prune with 1 fine-tune epoch, cluster
#: without fine-tuning, optionally encode (a trial on the digits MLP takes about two seconds).
TINY_SPACE = """\
name: {name}
finetune_epochs: 1
stages:
  - prune:
      sparsity: {{low: 0.5, high: 0.9}}
      finetune_epochs: 1
  - cluster:
      bits: {{low: 2, high: 5}}
      finetune_epochs: 0
  - encode: {{optional: true}}
"""


@pytest.fixture(scope="session")
def tiny_space_text():
    """The tiny space's YAML under a study name of the caller's choosing (tests sharing one
    PostgreSQL server take their own name)."""
    return lambda name="tiny": TINY_SPACE.format(name=name)


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory, digits, trained_mlp_state, tiny_space_text):
    """A real 4-trial search of the tiny space on the trained digits MLP (accuracy vs bytes,
    drop <= 5 points, front re-measured on the test split), run once per session:
    (model, folder holding space.yaml, out folder, SearchResult). Read it, never extend it
    (copy the out folder first)."""
    from nnzip.search import search

    model = make_mlp(digits)
    model.load_state_dict(trained_mlp_state)
    folder = tmp_path_factory.mktemp("search")
    (folder / "space.yaml").write_text(tiny_space_text())
    with fixed_threads(1):  # a session fixture runs before the autouse one-thread fixture
        result = search(model, digits, folder / "space.yaml", out=folder / "out", trials=4,
                        constraints=["accuracy_drop<=5"], progress=False)
    return model, folder, folder / "out", result


@pytest.fixture
def trained_mlp(digits, trained_mlp_state):
    """A LeNet-300-100 for 8×8 digits, trained for 6 epochs (a fresh copy for every test)."""
    model = make_mlp(digits)
    model.load_state_dict(trained_mlp_state)
    return model


@pytest.fixture(scope="session")
def minilm():
    """The shipped pretrained all-MiniLM-L6-v2, loaded once (tests must not change it in place:
    quantization works on copies)."""
    pytest.importorskip("transformers", reason="needs the transformers extra")
    from nnzip.models.hf import load_hf

    return load_hf("minilm")


@pytest.fixture(scope="module")
def tiny_encoder(minilm):
    """A one-layer BERT (hidden 64, eager attention) with MiniLM's tokenizer, randomly
    initialised: the encoder path's structure at a fraction of the cost (fresh per module)."""
    from transformers import BertConfig, BertModel

    from nnzip.models.hf import SentenceEncoder

    torch.manual_seed(0)
    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=64,
                        num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                        attn_implementation="eager")
    return SentenceEncoder(BertModel(config, add_pooling_layer=False), minilm.tokenizer).eval()
