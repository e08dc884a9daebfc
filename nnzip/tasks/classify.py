"""Classification, and causal language modelling as classification of every next token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.core.outputs import prediction_rows
from nnzip.tasks.base import Task

_CHANNELS = ("it removes whole channels of convolution and MLP chains; a transformer's units are "
             "its heads, FFN neurons and layers: use prune_heads or drop_layers")


class Classification(Task):
    name = "classify"
    description = "a label per sample (or per position), judged by accuracy"
    metric = "accuracy"

    def batch_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(*prediction_rows(outputs, targets))

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        logits, labels = prediction_rows(outputs, targets)
        return float((logits.argmax(dim=1) == labels).sum()), len(labels)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                     options) -> torch.Tensor:
        from nnzip.distill.losses import kd_loss

        return kd_loss(student, teacher, targets, options.temperature, options.alpha,
                       options.targets)

    def measure(self, model: nn.Module, data, reference: nn.Module | None, config) -> dict:
        """``accuracy``, ``top5``, ``agreement`` (share of predictions equal to the
        reference's), ``robustness`` (accuracy under noise and FGSM) and ``confidence`` (the
        accuracy difference against the reference, with its interval and p-value)."""
        from nnzip.evaluate.accuracy import accuracy, agreement, predict_logits, top_k_accuracy
        from nnzip.evaluate.confidence import accuracy_difference, correct_per_sample
        from nnzip.evaluate.robustness import robustness_report

        loader = data.loader("test", batch_size=config.eval_batch_size)
        logits = predict_logits(model, loader)
        labels = data.test.tensors[1]
        fidelity, confidence = 1.0, None
        if reference is not None:
            reference_logits = predict_logits(reference, loader)
            fidelity = agreement(logits, reference_logits)
            confidence = accuracy_difference(correct_per_sample(logits, labels),
                                             correct_per_sample(reference_logits, labels))
        return {"accuracy": accuracy(logits, labels), "top5": top_k_accuracy(logits, labels, 5),
                "agreement": fidelity, "robustness": robustness_report(model, data, config),
                "confidence": confidence}


class LanguageModeling(Classification):
    """Causal language modelling: the targets are the next token of every position.

    Perplexity is exp of the mean next-token cross-entropy over every target token of the test
    split; ``accuracy`` and ``top5`` are next-token accuracies and ``agreement`` the share of
    positions where the model's next token is the reference's. The test split is streamed batch
    by batch: (tokens × vocabulary) logits of a whole split would not fit in memory.
    """

    name = "lm"
    description = "causal language modelling, judged by perplexity on held-out text"
    metric = "perplexity"
    higher_is_better = False
    score_name = "next-token accuracy"
    refused_stages = {"prune_channels": _CHANNELS}

    def measure(self, model: nn.Module, data, reference: nn.Module | None, config) -> dict:
        """``perplexity`` (and its log, ``loss``), next-token ``accuracy`` / ``top5``,
        ``agreement`` with the reference's next token and ``kl_to_reference`` (mean
        KL(p_reference ‖ p_model) per token, what perplexity alone can hide), in one pass over
        batches whose logits stay small (:func:`nnzip.data.splits.eval_batch_size`); and
        ``robustness`` (a note: the probes perturb continuous inputs, token ids are not)."""
        from nnzip.data.splits import eval_batch_size
        from nnzip.evaluate.language import next_token_scores
        from nnzip.evaluate.robustness import robustness_report

        scores = next_token_scores(model, data, reference=reference,
                                   batch_size=min(config.eval_batch_size, eval_batch_size(data)))
        from nnzip.evaluate.confidence import perplexity_difference

        confidence = None if reference is None else perplexity_difference(
            scores.token_losses.numpy(), scores.reference_token_losses.numpy())
        return {"perplexity": scores.perplexity, "loss": scores.cross_entropy,
                "accuracy": scores.accuracy, "top5": scores.top5,
                "agreement": 1.0 if reference is None else scores.agreement,
                "kl_to_reference": 0.0 if reference is None else scores.kl_to_reference,
                "robustness": robustness_report(model, data, config), "confidence": confidence}
