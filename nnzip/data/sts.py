"""The STS Benchmark (Cer et al. 2017): sentence pairs with a gold similarity score from 0 to 5.

Nothing is downloaded: the training (5 749 pairs) and development (1 500 pairs) splits are read
from ``shared/data/stsb/sts-{train,dev}.csv`` beside the checkout, or from ``$NNZIP_DATA/stsb``
(``NNZIP_DATA`` may also name the stsb folder itself). The files are tab-separated (genre, source
file, year, id, score, sentence 1, sentence 2, sometimes two trailing source fields) and their
sentences contain bare quote characters, so they are read with ``csv.QUOTE_NONE``.

A sentence-embedding model is judged by the Spearman correlation between the cosine similarity of
each pair's embeddings and the gold score (:mod:`nnzip.evaluate.embedding`). Calibration of a
compressed encoder uses training sentences only (:func:`calibration_sentences`).
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nnzip.data.mnist import _search_roots
from nnzip.errors import NnzipError

ENV_VAR = "NNZIP_DATA"
SPLITS = ("train", "dev")
Split = Literal["train", "dev"]


@dataclass(frozen=True)
class STSPairs:
    """One split: ``sentence1[i]`` and ``sentence2[i]`` have gold similarity ``scores[i]``."""

    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)

    def sentences(self) -> list[str]:
        """Every distinct sentence of the split, in order of first appearance."""
        return list(dict.fromkeys([*self.sentence1, *self.sentence2]))

    def head(self, count: int) -> STSPairs:
        """The first ``count`` pairs (small test and smoke runs)."""
        return STSPairs(self.sentence1[:count], self.sentence2[:count], self.scores[:count])


def find_sts_dir() -> Path:
    """The folder holding ``sts-train.csv`` and ``sts-dev.csv``.

    ``$NNZIP_DATA`` (its ``stsb`` sub-folder, or itself) wins when set; otherwise the first
    ``shared/data/stsb`` found walking up from the working directory, then from this package.
    """
    hint = f"set {ENV_VAR} to the shared data folder (the one holding stsb/sts-dev.csv)"
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        root = Path(env_dir).expanduser()
        for candidate in (root / "stsb", root):
            if (candidate / "sts-dev.csv").is_file():
                return candidate
        raise NnzipError(f"{ENV_VAR}={env_dir} holds neither stsb/sts-dev.csv nor sts-dev.csv: "
                         f"{hint}")
    candidates: list[Path] = []
    for root in _search_roots():
        for folder in (root, *root.parents):
            candidate = folder / "shared" / "data" / "stsb"
            if candidate not in candidates:
                candidates.append(candidate)
            if (candidate / "sts-dev.csv").is_file():
                return candidate
    looked = ", ".join(str(c) for c in candidates[:4])
    raise NnzipError(f"STS Benchmark files not found (looked in {looked}, ...): {hint}")


def read_sts(path: str | os.PathLike) -> STSPairs:
    """Read one STS Benchmark file; a malformed row is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise NnzipError(f"STS file not found: {path}: check the path or set {ENV_VAR}")
    sentence1, sentence2, scores = [], [], []
    with path.open(encoding="utf-8", newline="") as file:
        for line, row in enumerate(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row:
                continue
            if len(row) < 7:
                raise NnzipError(f"{path}:{line} has {len(row)} fields, expected 7 (genre, file, "
                                 "year, id, score, sentence 1, sentence 2): the file is damaged")
            try:
                score = float(row[4])
            except ValueError as exc:
                raise NnzipError(f"{path}:{line}: score {row[4]!r} is not a number: the file "
                                 "is damaged") from exc
            if not 0.0 <= score <= 5.0:
                raise NnzipError(f"{path}:{line}: score {score} is outside 0–5")
            sentence1.append(row[5])
            sentence2.append(row[6])
            scores.append(score)
    if not scores:
        raise NnzipError(f"{path} holds no sentence pairs")
    return STSPairs(sentence1, sentence2, scores)


def load_sts(split: Split = "dev", folder: str | os.PathLike | None = None) -> STSPairs:
    """The ``train`` or ``dev`` split of the STS Benchmark."""
    if split not in SPLITS:
        raise NnzipError(f"STS split must be one of {', '.join(SPLITS)}, got {split!r} (the "
                         "test split is not shipped)")
    folder = Path(folder) if folder is not None else find_sts_dir()
    return read_sts(folder / f"sts-{split}.csv")


def calibration_sentences(count: int = 256, seed: int = 0,
                          folder: str | os.PathLike | None = None) -> list[str]:
    """``count`` distinct training sentences drawn at random (never the dev split)."""
    sentences = load_sts("train", folder).sentences()
    if count > len(sentences):
        raise NnzipError(f"the training split has {len(sentences)} distinct sentences, fewer "
                         f"than the {count} asked for")
    return random.Random(seed).sample(sentences, count)
