"""Classification outputs of any rank: one logit row per prediction.

An image classifier gives ``(N, C)`` logits for ``(N,)`` labels. A language model, a token tagger
or any model that classifies every position gives ``(N, L, C)`` (Hugging Face's layout: classes
last) for ``(N, L)`` labels; a segmentation model may give ``(N, C, H, W)`` (PyTorch's layout:
classes second) for ``(N, H, W)`` labels. Losses, accuracy, agreement and distillation all see
``(predictions, C)`` rows and ``(predictions,)`` labels through :func:`prediction_rows`, so every
method that trains or measures works on all of them.
"""

from __future__ import annotations

import torch


def prediction_rows(outputs: torch.Tensor, targets: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``outputs`` as ``(predictions, classes)`` and ``targets`` as ``(predictions,)``.

    Classes are the last axis, unless the labels' shape says they are the second (the label
    tensor then has every output axis but the second, as ``F.cross_entropy`` expects).
    """
    if outputs.dim() <= 2:
        return outputs, targets
    if targets is not None and targets.shape != outputs.shape[:-1] \
            and targets.shape == outputs.shape[:1] + outputs.shape[2:]:
        outputs = outputs.movedim(1, -1)
    rows = outputs.reshape(-1, outputs.shape[-1])
    return rows, None if targets is None else targets.reshape(-1)


def predicted_labels(outputs: torch.Tensor) -> torch.Tensor:
    """The predicted class of every prediction, flattened (logits in, indices out)."""
    return prediction_rows(outputs)[0].argmax(dim=-1)
