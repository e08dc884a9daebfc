"""Sentence embeddings as a task: the data, the loss and the STS measurements.

The data (:func:`sentence_data`) is built from the encoder being compressed: the inputs are the
token ids of STS-B sentences, and the targets are the *original* encoder's embeddings of them,
computed once. Training a compressed encoder on those targets with ``1 − cos`` is therefore
embedding distillation from the original (Reimers & Gurevych 2020), so ``finetune`` and the
fine-tune of every compressing stage recover an encoder with no labels at all. The test split is
the distinct sentences of the STS-B pairs judged on (dev by default), in the order of
:meth:`~nnzip.data.sts.STSPairs.sentences`, so the report's STS Spearman, fidelity (mean cosine
to the original's embedding) and top-10 neighbour overlap need one encode of the compressed model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nnzip.data.splits import DataSplits
from nnzip.data.sts import STSPairs, load_sts
from nnzip.errors import NnzipError
from nnzip.tasks.base import Task, stream_outputs
from nnzip.tasks.classify import _CHANNELS

log = logging.getLogger(__name__)

#: Tokens a sentence keeps (STS-B sentences are short: 99.9 % of the 13 474 train and dev
#: sentences fit in 48 MiniLM tokens; the longest has 70).
DEFAULT_MAX_LENGTH = 48
#: Neighbours compared by the overlap metric.
NEIGHBOURS = 10


@dataclass
class SentenceSplits(DataSplits):
    """:class:`DataSplits` of an ``embed`` task, with the sentence pairs its test split judges."""

    pairs: STSPairs | None = None


class SentenceEmbedding(Task):
    name = "embed"
    description = "sentence embeddings, judged by STS Spearman and fidelity to the original"
    metric = "spearman"
    score_name = "cosine to the original"
    output_name = "an embedding"
    refused_stages = {
        "prune_channels": _CHANNELS,
        "mixed_precision": "it ranks bit widths by the KL divergence of class probabilities, and "
                           "an encoder has no classes: set layer_bits on quantize instead",
        "sensitivity": "it ranks layers by the validation accuracy of class predictions, and an "
                       "encoder has no classes",
    }

    def output_shapes(self, data) -> list[tuple[int, ...]]:
        return [(1, *data.test.tensors[1].shape[1:])]

    def batch_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(outputs, targets.to(outputs.dtype), dim=-1)).mean()

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        cosine = F.cosine_similarity(outputs.float(), targets.float(), dim=-1)
        return float(cosine.sum()), len(cosine)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                     options) -> torch.Tensor:
        """``α·(1 − cos(student, teacher)) + (1 − α)·(1 − cos(student, original))``: there is no
        distribution to soften, so the temperature does not apply."""
        if options.targets == "hard":
            raise NnzipError("distillation targets 'hard' take the teacher's top-1 class, and "
                             "a sentence embedding has none: use targets 'soft'")
        if student.shape != teacher.shape:
            raise NnzipError(f"the teacher's embeddings have shape {tuple(teacher.shape)} but "
                             f"the student's {tuple(student.shape)}: distil between encoders of "
                             "the same embedding size")
        term = self.batch_loss(student, teacher.detach())
        if options.alpha == 1.0:
            return term
        return options.alpha * term + (1.0 - options.alpha) * self.batch_loss(student, targets)

    def refusal(self, stage) -> str | None:
        why = super().refusal(stage)
        if why is None and getattr(stage, "criterion", None) in ("taylor", "hessian"):
            why = ("criteria taylor and hessian score weights by the gradient of a classification "
                   "loss: use magnitude, wanda or sparsegpt")
        if why is None and getattr(stage, "kind", stage) == "distill":
            if getattr(stage, "student", None):
                why = ("a new zoo student is an image or language model, not a sentence "
                       "encoder: distil into the current encoder (leave 'student' out)")
            elif getattr(stage, "targets", "soft") == "hard" or getattr(stage, "hints", None):
                why = ("an encoder is distilled on its embeddings (1 − cos): hard targets and "
                       "FitNets hints need class logits and named layers of a zoo model")
        return why

    def measure(self, model: nn.Module, data, reference: nn.Module | None, config) -> dict:
        """``spearman`` (STS, cosine of each pair's embeddings vs the gold score), ``fidelity``
        (mean cosine to the original encoder's embedding of each sentence) and
        ``neighbour_overlap`` (share of each sentence's top-10 cosine neighbours kept)."""
        from nnzip.evaluate.confidence import spearman_difference
        from nnzip.evaluate.embedding import (
            fidelity,
            neighbour_overlap,
            spearman,
            sts_pair_cosines,
        )

        pairs = getattr(data, "pairs", None)
        if pairs is None:
            raise NnzipError(f"data {data.name!r} has task 'embed' but no sentence pairs: build "
                             "it with nnzip.tasks.sentence_data(encoder)")
        loader = data.loader("test", batch_size=config.eval_batch_size)
        embeddings = torch.cat([outputs for outputs, _, _ in stream_outputs(model, loader)])
        original = data.test.tensors[1].float()
        sentences = pairs.sentences()
        k = min(NEIGHBOURS, len(sentences) - 1)
        cosines = sts_pair_cosines(sentences, embeddings, pairs)
        # The test targets are the reference's own embeddings (sentence_data), so the paired
        # comparison needs no second encode.
        confidence = None if reference is None or len(pairs.scores) < 3 else spearman_difference(
            cosines.numpy(), sts_pair_cosines(sentences, original, pairs).numpy(), pairs.scores)
        return {"spearman": spearman(cosines, pairs.scores),
                "fidelity": fidelity(embeddings, original),
                "neighbour_overlap": neighbour_overlap(embeddings, original, k) if k else None,
                "robustness": {"note": "not measured: noise and FGSM perturb continuous inputs, "
                                       "and an encoder reads token ids"},
                "confidence": confidence}


def _encode(encoder: nn.Module, ids: torch.Tensor, batch_size: int, progress: bool,
            what: str) -> torch.Tensor:
    from rich.progress import Progress

    loader = torch.utils.data.DataLoader(TensorDataset(ids, ids), batch_size=batch_size)
    outputs = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"encode {what}", total=len(loader))
        for batch, _, _ in stream_outputs(encoder, loader):
            outputs.append(batch)
            bar.advance(task)
    return torch.cat(outputs)


def sentence_data(encoder: nn.Module, *, split: str = "dev", train_sentences: int = 2048,
                  val_fraction: float = 0.1, pairs: int | None = None,
                  max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 128, seed: int = 0,
                  progress: bool = False) -> SentenceSplits:
    """The ``embed`` task's data for ``encoder`` (a :class:`~nnzip.models.hf.SentenceEncoder`).

    ``train_sentences`` distinct STS-B training sentences (seeded draw; ``val_fraction`` of them
    for validation) are the calibration and fine-tuning inputs; the test split is the distinct
    sentences of the STS-B ``split`` pairs (the first ``pairs`` of them when given). Every
    sentence is padded with the tokenizer's pad id to the longest of its split, at most
    ``max_length`` tokens. The targets are ``encoder``'s own embeddings (see the module doc).
    """
    from nnzip.data.sts import calibration_sentences

    if not hasattr(encoder, "tokenize"):
        raise NnzipError(f"the embed task needs a sentence encoder that tokenizes (hf:FOLDER or "
                         f"hf:minilm), not a {type(encoder).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise NnzipError(f"val_fraction must be in (0, 1), got {val_fraction}")
    judged = load_sts(split)
    if pairs is not None:
        if pairs < 2:
            raise NnzipError(f"STS Spearman needs at least 2 pairs, got pairs={pairs}")
        judged = judged.head(pairs)
    training = calibration_sentences(train_sentences, seed=seed)
    n_val = max(1, round(len(training) * val_fraction))

    def ids(sentences: list[str]) -> torch.Tensor:
        return encoder.tokenize(sentences, max_length)[0]

    train_ids, val_ids, test_ids = ids(training[n_val:]), ids(training[:n_val]), \
        ids(judged.sentences())
    targets = {name: _encode(encoder, tokens, batch_size, progress, f"{name} sentences (fp32)")
               for name, tokens in (("train", train_ids), ("val", val_ids), ("test", test_ids))}
    log.info("embed data: %d train, %d val sentences; %d %s pairs (%d sentences)",
             len(train_ids), len(val_ids), len(judged), split, len(test_ids))
    return SentenceSplits(
        name=f"stsb-{split}", train=TensorDataset(train_ids, targets["train"]),
        val=TensorDataset(val_ids, targets["val"]), test=TensorDataset(test_ids, targets["test"]),
        num_classes=int(targets["test"].shape[1]), input_shape=(int(test_ids.shape[1]),),
        input_range=(0.0, 0.0), task="embed", pairs=judged)
