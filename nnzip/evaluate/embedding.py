"""Judging sentence encoders: the STS task, and fidelity of a compressed encoder to the original.

- **STS Spearman** (Reimers & Gurevych 2019; the STS Benchmark, Cer et al. 2017): the Spearman
  rank correlation between cos(emb(s1), emb(s2)) and the gold score over all pairs.
- **fidelity**: the mean cosine between each sentence's compressed and original embeddings.
- **neighbour overlap**: for each sentence, the fraction of its top-k nearest neighbours (cosine,
  among the other sentences of the set) that the compressed encoder keeps: what a search or
  clustering built on the embeddings would notice.

:func:`encode` runs any model that maps a batch of token ids to embeddings (a
:class:`~nnzip.models.hf.SentenceEncoder`, its quantized copy, or an ONNX Runtime module), with
the tokenizer of a SentenceEncoder. Encoding thousands of sentences takes minutes on a CPU, so
``progress=True`` shows a bar over the batches, on stderr (stdout stays for results).
:func:`sts_scores` judges embeddings already computed, so one fp32 encode gives both the fp32
Spearman and the reference that the compressed encoders are compared with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from nnzip.core.modes import eval_mode
from nnzip.data.sts import STSPairs
from nnzip.errors import NnzipError


def _tokenizing_encoder(model: nn.Module, tokenizer_source: nn.Module | None) -> nn.Module:
    source = tokenizer_source if tokenizer_source is not None else model
    if not hasattr(source, "tokenize"):
        raise NnzipError(f"{type(source).__name__} cannot tokenize sentences: pass "
                         "tokenizer_source=<the SentenceEncoder it came from>")
    return source


def token_batches(encoder: nn.Module, sentences: Sequence[str], batch_size: int = 32,
                  max_length: int | None = None) -> tuple[list[torch.Tensor], list[int]]:
    """Padded ``input_ids`` batches of ``sentences`` sorted by length (less padding), and the
    order that puts the outputs back: ``outputs[order[i]]`` belongs to ``sentences[i]``."""
    if batch_size < 1:
        raise NnzipError(f"batch_size must be ≥ 1, got {batch_size}")
    if not sentences:
        raise NnzipError("no sentences to encode")
    lengths = [len(ids) for ids in encoder.tokenizer(list(sentences))["input_ids"]]
    by_length = sorted(range(len(sentences)), key=lambda i: lengths[i])
    batches = [encoder.tokenize([sentences[i] for i in by_length[start:start + batch_size]],
                                max_length)[0]
               for start in range(0, len(sentences), batch_size)]
    order = [0] * len(sentences)
    for position, index in enumerate(by_length):
        order[index] = position
    return batches, order


def batch_progress(enabled: bool) -> Progress:
    """A progress bar over batches, written to stderr (disabled: draws nothing)."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("batches"), TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), disable=not enabled,
                    transient=False)


def encode(model: nn.Module, sentences: Sequence[str], batch_size: int = 32, *,
           tokenizer_source: nn.Module | None = None, progress: bool = False,
           description: str = "encode") -> torch.Tensor:
    """Embeddings ``(len(sentences), hidden)`` of ``sentences``, in their order.

    ``model`` takes a batch of token ids (padding = the tokenizer's pad id); the tokenizer is
    ``model``'s own, or that of ``tokenizer_source`` (for an ONNX Runtime module).
    ``progress`` shows a bar named ``description`` over the batches, on stderr.
    """
    encoder = _tokenizing_encoder(model, tokenizer_source)
    batches, order = token_batches(encoder, sentences, batch_size)
    outputs = []
    with eval_mode(model), torch.no_grad(), batch_progress(progress) as bar:
        task = bar.add_task(description, total=len(batches))
        for ids in batches:
            outputs.append(model(ids).float())
            bar.advance(task)
    return torch.cat(outputs)[torch.tensor(order)]


def cosine_pairs(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``(n, hidden)`` matrices."""
    return F.cosine_similarity(first.float(), second.float(), dim=-1)


def spearman(predicted: Sequence[float] | torch.Tensor, gold: Sequence[float]) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr)."""
    from scipy.stats import spearmanr

    predicted = torch.as_tensor(predicted).detach().cpu().double().numpy()
    if len(predicted) != len(gold):
        raise NnzipError(f"{len(predicted)} predictions for {len(gold)} gold scores")
    if len(gold) < 2:
        raise NnzipError("Spearman correlation needs at least two pairs")
    return float(spearmanr(predicted, list(gold)).statistic)


def fidelity(embeddings: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean cosine between each compressed embedding and the original one."""
    if embeddings.shape != reference.shape:
        raise NnzipError(f"embeddings {tuple(embeddings.shape)} and reference "
                         f"{tuple(reference.shape)} differ in shape: encode the same sentences")
    return float(cosine_pairs(embeddings, reference).mean())


def neighbour_overlap(embeddings: torch.Tensor, reference: torch.Tensor, k: int = 10) -> float:
    """Mean fraction of each sentence's top-``k`` cosine neighbours (itself excluded) in
    ``reference`` that are also its top-``k`` in ``embeddings``."""
    if embeddings.shape != reference.shape:
        raise NnzipError(f"embeddings {tuple(embeddings.shape)} and reference "
                         f"{tuple(reference.shape)} differ in shape: encode the same sentences")
    count = embeddings.shape[0]
    if not 1 <= k < count:
        raise NnzipError(f"k must be from 1 to {count - 1} for {count} sentences, got {k}")

    def top(matrix: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(matrix.float(), dim=-1)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(-float("inf"))
        return similarity.topk(k, dim=-1).indices

    ours, theirs = top(embeddings), top(reference)
    shared = (ours.unsqueeze(-1) == theirs.unsqueeze(-2)).any(dim=-1).sum(dim=-1)
    return float(shared.float().mean() / k)


def sts_embeddings(model: nn.Module, pairs: STSPairs, batch_size: int = 32, *,
                   tokenizer_source: nn.Module | None = None, progress: bool = False,
                   description: str = "encode") -> tuple[list[str], torch.Tensor]:
    """The distinct sentences of ``pairs`` and their embeddings (each sentence encoded once);
    ``progress`` shows a bar over the batches on stderr."""
    sentences = pairs.sentences()
    return sentences, encode(model, sentences, batch_size, tokenizer_source=tokenizer_source,
                             progress=progress, description=description)


def sts_pair_cosines(sentences: list[str], embeddings: torch.Tensor,
                     pairs: STSPairs) -> torch.Tensor:
    """cos(emb(s1), emb(s2)) of every pair, from the embeddings of ``sentences`` (which cover
    every sentence of pairs): the per-pair scores STS Spearman ranks."""
    index = {sentence: i for i, sentence in enumerate(sentences)}
    first = embeddings[[index[s] for s in pairs.sentence1]]
    second = embeddings[[index[s] for s in pairs.sentence2]]
    return cosine_pairs(first, second)


def sts_spearman(sentences: list[str], embeddings: torch.Tensor, pairs: STSPairs) -> float:
    """STS Spearman from the embeddings of ``sentences`` (which cover every sentence of pairs)."""
    return spearman(sts_pair_cosines(sentences, embeddings, pairs), pairs.scores)


def sts_scores(sentences: list[str], embeddings: torch.Tensor, pairs: STSPairs,
               reference: torch.Tensor | None = None, k: int = 10) -> dict[str, float]:
    """:func:`evaluate_sts` from embeddings already computed (``sts_embeddings``'s output), so
    one encode of the original serves as its own score and as everyone's ``reference``."""
    result = {"spearman": sts_spearman(sentences, embeddings, pairs)}
    if reference is not None:
        result["cosine_to_reference"] = fidelity(embeddings, reference)
        result["neighbour_overlap"] = neighbour_overlap(embeddings, reference, k)
    return result


def evaluate_sts(model: nn.Module, pairs: STSPairs, reference: torch.Tensor | None = None, *,
                 batch_size: int = 32, k: int = 10, tokenizer_source: nn.Module | None = None,
                 progress: bool = False) -> dict[str, float]:
    """STS Spearman of ``model`` on ``pairs``; with ``reference`` (the original encoder's
    embeddings of ``pairs.sentences()``) also fidelity and neighbour overlap at ``k``."""
    sentences, embeddings = sts_embeddings(model, pairs, batch_size,
                                           tokenizer_source=tokenizer_source, progress=progress)
    return sts_scores(sentences, embeddings, pairs, reference, k)
