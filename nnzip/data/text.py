"""Causal language modelling on real text: STS Benchmark sentences as packed token blocks.

``stsb-lm`` (:func:`load_stsb_lm`) turns the STS-B sentences (:mod:`nnzip.data.sts`) into the
data a small GPT-style model learns next-token prediction from, with the tokenizer of the shipped
all-MiniLM-L6-v2 (WordPiece, 30 522 ids; nothing is downloaded):

- the distinct training sentences, in order of first appearance, are split by *sentence* into
  train and validation (a seeded draw of ``val_fraction`` of them), so no sentence is in both;
- the test split is the distinct dev sentences, never trained on: a dev sentence that also occurs
  in the training file (250 of 2 909 do) is kept out of training and validation;
- each split's sentences are tokenized without special tokens, each followed by ``[SEP]``, the
  stream starting with ``[SEP]``, and packed into blocks of ``block_size`` tokens: inputs
  ``x[i] = stream[i·L : i·L + L]`` and targets ``y[i] = stream[i·L + 1 : i·L + L + 1]`` (the
  next token at every position), both int64 of shape (N, L). The last partial block is dropped.

The splits carry ``task="lm"``: the metric is perplexity (:mod:`nnzip.evaluate.language`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nnzip.data.splits import DataSplits
from nnzip.data.sts import load_sts
from nnzip.errors import NnzipError

#: The default block length: STS-B sentences average 13 MiniLM tokens, so a block of 64 holds
#: about five of them, and logits of (batch, 64, 30 522) stay affordable on a CPU.
DEFAULT_BLOCK_SIZE = 64


@cache
def minilm_tokenizer():
    """The WordPiece tokenizer of the shipped all-MiniLM-L6-v2 (read once, from local files)."""
    from nnzip.models.hf import INSTALL_HINT, minilm_path  # the model package ships it

    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise NnzipError(f"the stsb-lm data needs transformers' tokenizer: {INSTALL_HINT}") \
            from exc
    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def token_stream(sentences: Sequence[str], tokenizer, separator: int) -> torch.Tensor:
    """``[SEP] s1 [SEP] s2 [SEP] ...``: every sentence's ids (no special tokens), one stream."""
    ids = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    stream = [separator]
    for sentence in ids:
        stream.extend(sentence)
        stream.append(separator)
    return torch.tensor(stream, dtype=torch.int64)


def pack_blocks(stream: torch.Tensor, block_size: int) -> TensorDataset:
    """Inputs ``stream[iL : iL + L]`` and next-token targets ``stream[iL + 1 : iL + L + 1]``."""
    if block_size < 1:
        raise NnzipError(f"block_size must be a positive number of tokens, got {block_size}")
    blocks = (len(stream) - 1) // block_size
    if blocks < 1:
        raise NnzipError(f"{len(stream)} tokens do not fill one block of {block_size} + 1: use "
                         "a smaller block_size or more text")
    end = blocks * block_size
    return TensorDataset(stream[:end].reshape(blocks, block_size),
                         stream[1:end + 1].reshape(blocks, block_size))


def sentence_split(sentences: Sequence[str], val_fraction: float,
                   seed: int) -> tuple[list[str], list[str]]:
    """(train, val) sentences: a seeded draw of ``val_fraction`` of them for validation, each
    part keeping the original order."""
    if not 0.0 < val_fraction < 1.0:
        raise NnzipError(f"val_fraction must be in (0, 1), got {val_fraction}")
    count = len(sentences)
    chosen = np.random.default_rng(seed).permutation(count)[:max(1, round(count * val_fraction))]
    is_val = np.zeros(count, dtype=bool)
    is_val[chosen] = True
    return ([s for s, v in zip(sentences, is_val, strict=True) if not v],
            [s for s, v in zip(sentences, is_val, strict=True) if v])


def load_stsb_lm(block_size: int = DEFAULT_BLOCK_SIZE, *, val_fraction: float = 0.1,
                 seed: int = 0, folder: str | os.PathLike | None = None) -> DataSplits:
    """STS-B sentences as next-token blocks of ``block_size`` MiniLM tokens (see the module
    docstring): ``DataSplits(task="lm", num_classes=30 522, input_shape=(block_size,))``."""
    tokenizer = minilm_tokenizer()
    separator = tokenizer.sep_token_id
    test_sentences = load_sts("dev", folder).sentences()
    held_out = set(test_sentences)
    pool = [s for s in load_sts("train", folder).sentences() if s not in held_out]
    train_sentences, val_sentences = sentence_split(pool, val_fraction, seed)
    train, val, test = (pack_blocks(token_stream(part, tokenizer, separator), block_size)
                        for part in (train_sentences, val_sentences, test_sentences))
    vocabulary = len(tokenizer)
    return DataSplits(name="stsb-lm", train=train, val=val, test=test, num_classes=vocabulary,
                      input_shape=(block_size,), input_range=(0.0, float(vocabulary - 1)),
                      task="lm")
