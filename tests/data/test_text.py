"""stsb-lm: real STS-B sentences as next-token blocks. Targets are the inputs shifted by exactly
one token, blocks continue one stream, and the dev sentences are the test split, never trained
on."""

import pytest
import torch
from lm_helpers import stsb_lm

from nnzip.data import BUILTIN_DATASETS, load_dataset
from nnzip.data.sts import load_sts
from nnzip.data.text import minilm_tokenizer, pack_blocks, sentence_split, token_stream
from nnzip.errors import NnzipError


def _stream(dataset) -> torch.Tensor:
    """The token stream a split's blocks were cut from (inputs, then the last target)."""
    x, y = dataset.tensors
    return torch.cat([x.reshape(-1), y[-1, -1:]])


def _contains(stream: torch.Tensor, pattern: list[int]) -> bool:
    windows = stream.unfold(0, len(pattern), 1)
    return bool((windows == torch.tensor(pattern)).all(dim=1).any())


def test_targets_are_the_inputs_shifted_by_exactly_one_token():
    data = stsb_lm(16)
    assert data.task == "lm" and data.num_classes == 30522 and data.input_shape == (16,)
    for split in ("train", "val", "test"):
        x, y = getattr(data, split).tensors
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape and x.shape[1] == 16 and len(x) > 100
        assert torch.equal(y[:, :-1], x[:, 1:])       # the next token at every position
        assert torch.equal(y[:-1, -1], x[1:, 0])      # and across block boundaries
        assert int(x.max()) < data.num_classes and int(x.min()) >= 0
    tokenizer = minilm_tokenizer()
    first = tokenizer.decode(data.train.tensors[0][:2].reshape(-1))
    assert first.startswith("[SEP] a plane is taking off. [SEP]")


def test_dev_sentences_are_the_test_split_and_never_trained_on():
    data = stsb_lm(16)
    tokenizer = minilm_tokenizer()
    sep = tokenizer.sep_token_id
    dev = load_sts("dev").sentences()
    expected = token_stream(dev, tokenizer, sep)
    test_stream = _stream(data.test)
    assert torch.equal(test_stream, expected[:len(test_stream)])
    assert len(expected) - len(test_stream) < 16   # only the last partial block is dropped
    training = set(load_sts("train").sentences())
    shared = [s for s in dev if s in training]
    assert len(shared) == 250
    for sentence in shared[:5]:
        pattern = [sep, *tokenizer(sentence, add_special_tokens=False)["input_ids"], sep]
        assert _contains(test_stream, pattern)
        assert not _contains(_stream(data.train), pattern)
        assert not _contains(_stream(data.val), pattern)


def test_sentence_split_is_seeded_disjoint_and_keeps_order():
    sentences = [f"sentence {i}" for i in range(100)]
    train, val = sentence_split(sentences, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert train == sorted(train, key=sentences.index)
    assert sentence_split(sentences, 0.1, seed=0) == (train, val)
    assert sentence_split(sentences, 0.1, seed=1) != (train, val)


def test_packing_drops_only_the_last_partial_block_and_refuses_short_text():
    blocks = pack_blocks(torch.arange(10), 3)
    assert blocks.tensors[0].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert blocks.tensors[1].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(NnzipError, match="do not fill one block"):
        pack_blocks(torch.arange(3), 3)


def test_load_dataset_knows_stsb_lm():
    assert "stsb-lm" in BUILTIN_DATASETS
    data = load_dataset("stsb-lm")
    assert data.input_shape == (64,) and data.summary()["task"] == "lm"
    assert 1900 < len(data.train) < 2100 and len(data.test) == 700
