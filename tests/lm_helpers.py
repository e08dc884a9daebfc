"""A tiny causal-LM setting on real STS-B text, shared by the language-model tests.

The full ``stsb-lm`` data is tokenized once per session; the tests take a few of its blocks
(real MiniLM token ids, real next-token targets) and a GPT of width 32 that runs in
milliseconds.
"""

from __future__ import annotations

from functools import cache

import torch
from torch.utils.data import TensorDataset

from nnzip.data import DataSplits
from nnzip.data.text import load_stsb_lm
from nnzip.models import create_model


@cache
def stsb_lm(block_size: int = 16) -> DataSplits:
    return load_stsb_lm(block_size)


def _head(dataset: TensorDataset, count: int) -> TensorDataset:
    return TensorDataset(*(tensor[:count] for tensor in dataset.tensors))


def tiny_lm_data(block_size: int = 16, train: int = 64, val: int = 16,
                 test: int = 16) -> DataSplits:
    """The first blocks of each split of ``stsb-lm`` (full vocabulary)."""
    full = stsb_lm(block_size)
    return DataSplits(name="stsb-lm-tiny", train=_head(full.train, train),
                      val=_head(full.val, val), test=_head(full.test, test),
                      num_classes=full.num_classes, input_shape=full.input_shape,
                      input_range=full.input_range, task="lm")


def tiny_lm(data: DataSplits, seed: int = 0, **options):
    """A zoo ``gpt`` 32 wide, 2 layers of 2 heads (or ``options``), seeded, in eval mode."""
    torch.manual_seed(seed)
    settings = {"n_embd": 32, "n_layer": 2, "n_head": 2, **options}
    return create_model("gpt", input_shape=data.input_shape, num_classes=data.num_classes,
                        **settings).eval()
