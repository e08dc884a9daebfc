"""Language-model quality: perplexity and next-token predictions over a split.

Perplexity is exp of the mean cross-entropy (in nats) over *every* target token of the split
(Jelinek et al. 1977): for packed blocks (:mod:`nnzip.data.text`) each of the N·L positions
predicts the next token, and each counts once. Lower is better; a model that spreads its
probability evenly over a vocabulary of V words scores V.

The logits of a whole split do not fit in memory ((700, 64, 30 522) floats are 5.5 GB), so one
pass keeps only the summed loss and the predicted ids; agreement with a reference model is then
:func:`nnzip.evaluate.accuracy.agreement` on those ids (the share of positions where both models
predict the same next token). Given the reference model itself, the same pass also measures
the mean KL divergence KL(p_reference ‖ p_model) per token: how far a compressed model's whole
next-token distribution moved, which perplexity alone can hide (a change can lower the loss on
some tokens and raise it on others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.core.modes import eval_mode
from nnzip.core.outputs import prediction_rows
from nnzip.data.splits import DataSplits, eval_batch_size
from nnzip.errors import NnzipError


@dataclass(frozen=True)
class LanguageScores:
    """One pass of a language model over a split."""

    #: Mean cross-entropy per target token, in nats.
    cross_entropy: float
    #: Target tokens scored.
    tokens: int
    #: The most likely next token at every position, shaped like the split's targets.
    predictions: torch.Tensor
    #: The cross-entropy of every target token (nats), shaped like the split's targets: what
    #: a paired comparison of two models needs (:func:`perplexity_change`).
    token_losses: torch.Tensor | None = None
    #: Mean KL(p_reference ‖ p_model) per token in nats, when a reference model was given.
    kl_to_reference: float | None = None
    #: The reference model's token losses, shaped like ``token_losses``, when it was given:
    #: the paired perplexity comparison (nnzip.evaluate.confidence.perplexity_difference).
    reference_token_losses: torch.Tensor | None = None
    #: Share of target tokens predicted first / among the five most likely.
    accuracy: float | None = None
    top5: float | None = None
    #: Share of positions whose predicted next token is the reference model's, when given.
    agreement: float | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(self.cross_entropy)

    @property
    def bits_per_token(self) -> float:
        return self.cross_entropy / math.log(2)


def next_token_scores(model: nn.Module, data: DataSplits, split: str = "test",
                      batch_size: int | None = None,
                      reference: nn.Module | None = None) -> LanguageScores:
    """Cross-entropy and predicted ids of ``model`` over every target token of ``split`` (and
    the mean KL divergence from ``reference``'s next-token distribution, if given).

    ``batch_size`` defaults to what keeps one batch's logits near 64 MiB
    (:func:`nnzip.data.splits.eval_batch_size`); the result does not depend on it beyond float
    rounding. The loss is summed in float64.
    """
    if split not in ("train", "val", "test"):
        raise NnzipError(f"unknown split {split!r}: use 'train', 'val' or 'test'")
    if len(getattr(data, split)) == 0:
        raise NnzipError(f"the {split} split of {data.name!r} is empty: nothing to score")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    total, divergence, tokens, predictions, losses, reference_losses = 0.0, 0.0, 0, [], [], []
    correct, top5, agree = 0, 0, 0
    with eval_mode(model), torch.no_grad():
        for inputs, targets in data.loader(split, batch_size=batch_size or eval_batch_size(data)):
            logits = model(inputs.to(device))
            rows, labels = prediction_rows(logits, targets.to(device))
            if labels.dim() != 1 or rows.shape[0] != targets.numel():
                raise NnzipError(f"the model gives {rows.shape[0]} predictions for "
                                 f"{labels.shape[0]} target tokens (logits shape "
                                 f"{tuple(logits.shape)}, targets {tuple(targets.shape)}): a "
                                 "language model must give (batch, positions, vocabulary)")
            token_losses = F.cross_entropy(rows.float(), labels, reduction="none")
            total += float(token_losses.double().sum())
            losses.append(token_losses.reshape(targets.shape).cpu())
            tokens += labels.numel()
            predicted = rows.argmax(dim=-1)
            predictions.append(predicted.reshape(targets.shape).cpu())
            correct += int((predicted == labels).sum())
            top = rows.topk(min(5, rows.shape[-1]), dim=-1).indices
            top5 += int((top == labels[:, None]).any(dim=-1).sum())
            if reference is not None:
                batch_divergence, batch_agree, batch_losses = _compare(
                    rows, predicted, reference, inputs.to(device), labels)
                divergence += batch_divergence
                agree += batch_agree
                reference_losses.append(batch_losses.reshape(targets.shape).cpu())
    return LanguageScores(cross_entropy=total / tokens, tokens=tokens,
                          predictions=torch.cat(predictions), token_losses=torch.cat(losses),
                          kl_to_reference=divergence / tokens if reference is not None else None,
                          accuracy=correct / tokens, top5=top5 / tokens,
                          agreement=agree / tokens if reference is not None else None,
                          reference_token_losses=torch.cat(reference_losses)
                          if reference is not None else None)


def perplexity_change(scores: LanguageScores, reference: LanguageScores) -> tuple[float, float]:
    """(change of perplexity against ``reference`` in %, its standard error in %), paired by
    sequence: the standard error of the mean per-sequence loss difference over the split's
    sequences (tokens of one sequence are not independent, sequences nearly are), carried to
    perplexity to first order (d ppl / ppl = d loss)."""
    if scores.token_losses is None or reference.token_losses is None \
            or scores.token_losses.shape != reference.token_losses.shape:
        raise NnzipError("a paired perplexity change needs the token losses of both models on "
                         "the same split: score both with next_token_scores")
    per_sequence = (scores.token_losses.double() - reference.token_losses.double()).mean(dim=1)
    error = float(per_sequence.std() / math.sqrt(len(per_sequence))) if len(per_sequence) > 1 \
        else math.nan
    change = 100 * (math.exp(scores.cross_entropy - reference.cross_entropy) - 1)
    return change, 100 * error


def _compare(rows: torch.Tensor, predicted: torch.Tensor, reference: nn.Module,
             inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    """(Σ over the batch's positions of KL(p_reference ‖ p_model) in float64, positions where
    the model predicts the reference's next token, the reference's token losses)."""
    with eval_mode(reference):
        expected = prediction_rows(reference(inputs))[0]
    if expected.shape != rows.shape:
        raise NnzipError(f"the reference gives logits {tuple(expected.shape)} where the model "
                         f"gives {tuple(rows.shape)}: compare models of one vocabulary")
    divergence = float(F.kl_div(F.log_softmax(rows.float(), dim=-1),
                                F.log_softmax(expected.float(), dim=-1), reduction="sum",
                                log_target=True).double())
    return (divergence, int((predicted == expected.argmax(dim=-1)).sum()),
            F.cross_entropy(expected.float(), labels, reduction="none"))


def perplexity(model: nn.Module, data: DataSplits, split: str = "test",
               batch_size: int | None = None) -> float:
    """exp(mean cross-entropy over every target token of ``split``): see the module docstring."""
    return next_token_scores(model, data, split, batch_size).perplexity
