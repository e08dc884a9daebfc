"""Distilling sentence encoders: the student learns the teacher's sentence embeddings.

With no classes there are no logits to soften: the student is trained to reproduce the teacher's
embedding of every (unlabeled) training sentence, with ``1 − cos(s, t)`` or the MSE between them
(the embedding-level objective of Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings
Multilingual using Knowledge Distillation"; DistilBERT's cosine term, Sanh et al. 2019). The
teacher is run once over the sentences, then the shared loop :func:`nnzip.train.fit_batches`
trains the student.

:func:`cosine_similarity_loss` is the supervised alternative used as the control: fit the cosine
of a pair's embeddings to its gold similarity (sentence-transformers' ``CosineSimilarityLoss``,
Reimers & Gurevych 2019), on labeled STS training pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.core.capture import run_batch
from nnzip.core.modes import eval_mode
from nnzip.errors import NnzipError
from nnzip.train import StepHook, TrainConfig, fit_batches

EmbeddingLoss = Literal["cosine", "mse"]
#: STS gold scores run from 0 to 5; CosineSimilarityLoss fits cos(u, v) to score / 5.
STS_MAX_SCORE = 5.0


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor,
                   kind: EmbeddingLoss = "cosine") -> torch.Tensor:
    """Mean ``1 − cos(student, teacher)`` (``"cosine"``) or mean squared error (``"mse"``)."""
    if student.shape != teacher.shape:
        raise NnzipError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                         f"{tuple(teacher.shape)} differ: distillation needs the same hidden "
                         "size (or a projection)")
    teacher = teacher.detach()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise NnzipError(f"unknown embedding loss {kind!r}: use 'cosine' or 'mse'")


@torch.no_grad()
def teacher_embeddings(teacher: nn.Module, batches: Sequence) -> list[torch.Tensor]:
    """The teacher's embedding of every batch, computed once in eval mode."""
    with eval_mode(teacher):
        return [run_batch(teacher, batch).detach() for batch in batches]


def distill_embeddings(student: nn.Module, teacher: nn.Module, batches: Sequence,
                       config: TrainConfig | None = None, *, loss: EmbeddingLoss = "cosine",
                       step_hook: StepHook | None = None, progress: bool = False) -> list[float]:
    """Train ``student`` in place to reproduce ``teacher``'s embeddings of ``batches``.

    ``batches`` are model inputs (token-id tensors, or keyword mappings) of unlabeled training
    sentences; the teacher is left unchanged. ``step_hook`` can keep a pruned student's zeros
    (:func:`nnzip.prune.mask_hook`). Returns the mean loss of every epoch.
    """
    if student is teacher:
        raise NnzipError("the student must be a copy of the teacher, not the teacher itself: "
                         "copy.deepcopy(model) first")
    if not batches:
        raise NnzipError("distillation needs training sentences: pass at least one batch")
    targets = teacher_embeddings(teacher, batches)

    def batch_loss(model: nn.Module, pair: tuple) -> torch.Tensor:
        inputs, target = pair
        return embedding_loss(run_batch(model, inputs), target, loss)

    return fit_batches(student, list(zip(batches, targets, strict=True)), batch_loss, config,
                       step_hook=step_hook, progress=progress, description="distill embeddings")


def cosine_similarity_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    """MSE between cos(emb(s1), emb(s2)) and gold / 5 for a batch ``(ids1, ids2, gold)``."""
    first, second, gold = batch
    similarity = F.cosine_similarity(run_batch(model, first), run_batch(model, second), dim=-1)
    return F.mse_loss(similarity, gold.to(similarity.dtype) / STS_MAX_SCORE)


def pair_batches(encoder: nn.Module, sentence1: Sequence[str], sentence2: Sequence[str],
                 scores: Sequence[float], batch_size: int = 32
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(ids1, ids2, gold)`` batches of sentence pairs, tokenized by ``encoder``."""
    if not len(sentence1) == len(sentence2) == len(scores):
        raise NnzipError("sentence1, sentence2 and scores must have the same length")
    if batch_size < 1:
        raise NnzipError(f"batch_size must be ≥ 1, got {batch_size}")
    batches = []
    for start in range(0, len(scores), batch_size):
        stop = start + batch_size
        batches.append((encoder.tokenize(sentence1[start:stop])[0],
                        encoder.tokenize(sentence2[start:stop])[0],
                        torch.tensor(scores[start:stop], dtype=torch.float32)))
    return batches


def fit_sts_pairs(model: nn.Module, batches: Sequence, config: TrainConfig | None = None, *,
                  progress: bool = False) -> list[float]:
    """Fine-tune ``model`` in place on labeled pairs with :func:`cosine_similarity_loss`."""
    return fit_batches(model, list(batches), cosine_similarity_loss, config, progress=progress,
                       description="fine-tune on STS pairs")
