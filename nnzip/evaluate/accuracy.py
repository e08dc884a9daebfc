"""Task quality: top-1 / top-k accuracy and agreement with a reference model's predictions."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from nnzip.core.modes import eval_mode
from nnzip.core.outputs import predicted_labels, prediction_rows


def predict_logits(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """Logits for every sample of ``loader`` (batches of ``(x, y)``), in loader order."""
    outputs = []
    with eval_mode(model), torch.no_grad():
        for x, *_ in loader:
            outputs.append(model(x).detach().float())
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction in [0, 1] of predictions whose highest logit is the true class (every position
    of a model that classifies positions counts)."""
    logits, y = prediction_rows(logits, y)
    if len(y) == 0:
        return 0.0
    return int((logits.argmax(dim=1) == y).sum()) / len(y)


def top_k_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest logits.

    With fewer than ``k`` classes every class is in the top k, so the result is 1.0.
    """
    logits, y = prediction_rows(logits, y)
    if len(y) == 0:
        return 0.0
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == y.unsqueeze(1)).any(dim=1).sum()) / len(y)


def _labels(pred: torch.Tensor) -> torch.Tensor:
    return predicted_labels(pred) if pred.is_floating_point() else pred.reshape(-1)


def agreement(pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    """Fraction of samples on which two models predict the same class.

    Accepts logits (argmax is taken) or class indices. It measures fidelity to a reference model
    independently of the labels: a compressed model can keep its accuracy yet change its mind.
    """
    labels_a, labels_b = _labels(pred_a), _labels(pred_b)
    if len(labels_a) == 0:
        return 1.0
    return int((labels_a == labels_b).sum()) / len(labels_a)
