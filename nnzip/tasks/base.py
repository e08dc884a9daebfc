"""A task says what the data is for: how a batch is scored, how training and distillation are
judged, what the report measures and which stages make sense.

Every stage and measurement sees a :class:`~nnzip.data.DataSplits`; its ``task`` field names one
of the :data:`TASKS` here. Three are built in:

- ``classify``: a label per sample (or per position: a tagger, a segmenter). Cross-entropy,
  accuracy, top-5, agreement with the original, robustness to noise and FGSM.
- ``lm``: causal language modelling. The targets are the next tokens of every position; the
  metric is perplexity on held-out text (exp of the mean next-token cross-entropy), beside
  next-token accuracy and agreement with the original model's next token.
- ``embed``: sentence embeddings. The targets are the original encoder's embeddings, so training
  a compressed encoder on them *is* embedding distillation (1 − cos; Reimers & Gurevych 2020);
  the metric is STS Spearman, fidelity (cosine to the original) and neighbour overlap.

A :class:`Task` holds no data and no state: its methods take the model outputs, the targets or
the data they need, so one instance serves every run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import ClassVar

import torch
from torch import nn

from nnzip.core.modes import eval_mode
from nnzip.errors import NnzipError


class Task:
    """What one kind of data asks of a model. Subclasses set the class attributes and override
    :meth:`batch_loss`, :meth:`batch_score` and :meth:`measure`."""

    #: The name in ``DataSplits.task`` and in reports.
    name: ClassVar[str] = ""
    #: One line for people: what the model does and how it is judged.
    description: ClassVar[str] = ""
    #: The report key that ranks models of this task, and whether higher is better.
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    #: What the validation score of :meth:`batch_score` is, for progress lines and reports.
    score_name: ClassVar[str] = "accuracy"
    #: What the model's output is called in messages.
    output_name: ClassVar[str] = "logits"
    #: Recipe stages that do not fit this task: ``{stage kind: why}``.
    refused_stages: ClassVar[Mapping[str, str]] = {}

    def batch_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training objective on one batch (a scalar to minimise)."""
        raise NotImplementedError

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """(sum of the validation score over the batch's predictions, number of predictions):
        accuracy for a classifier, cosine to the target embedding for an encoder."""
        raise NotImplementedError

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                     options) -> torch.Tensor:
        """The distillation objective: the student learns ``teacher``'s outputs (and, with
        weight ``1 − options.alpha``, the task's own targets)."""
        raise NotImplementedError

    def measure(self, model: nn.Module, data, reference: nn.Module | None, config) -> dict:
        """The task's report entries for ``model`` on ``data``'s test split (see subclasses)."""
        raise NotImplementedError

    def output_shapes(self, data) -> list[tuple[int, ...]]:
        """The shapes a model's output may have for one test sample: a logit per class, and per
        position where the targets have positions (classes last, or second as PyTorch's
        segmentation models give them); the first is the one named in errors."""
        positions = tuple(data.test.tensors[1].shape[1:])
        if not positions:
            return [(1, data.num_classes)]
        return [(1, *positions, data.num_classes), (1, data.num_classes, *positions)]

    def refusal(self, stage) -> str | None:
        """Why ``stage`` (a stage config, or a stage kind) does not fit this task, else None."""
        return self.refused_stages.get(getattr(stage, "kind", stage))

    def check_stage(self, stage, label: str | None = None) -> None:
        """Raise a clear error naming the stage and the task when ``stage`` does not fit."""
        why = self.refusal(stage)
        kind = getattr(stage, "kind", stage)
        if why is not None:
            shown = kind if label in (None, kind) else f"{label} ({kind})"
            raise NnzipError(f"stage {shown} does not fit the {self.name} task ({self.description}"
                             f"): {why}")


def stream_outputs(model: nn.Module, loader, *others: nn.Module
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]:
    """``(outputs, targets, [outputs of others])`` batch by batch, in eval mode, without
    gradients: the test split of a language model does not fit in memory as one logits tensor."""
    with contextlib.ExitStack() as stack, torch.no_grad():
        for each in {id(m): m for m in (model, *others)}.values():
            stack.enter_context(eval_mode(each))
        for inputs, targets in loader:
            yield model(inputs).float(), targets, [other(inputs).float() for other in others]
