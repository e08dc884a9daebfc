"""Knowledge-distillation losses (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
Neural Network").

The student learns from the teacher's softened class probabilities as well as from the labels:

    loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)

The T² factor keeps the soft term's gradients at the same scale whatever the temperature (§2 of
the paper), so α means the same thing at T = 2 and T = 8. The *hard-target* variant trains on the
teacher's top-1 label instead of its distribution (useful when only labels can be shared).
The loss hooks built here have the signature of :data:`nnzip.train.LossHook`, so any user of the
shared fit loop can distil by passing one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nnzip.core.outputs import prediction_rows
from nnzip.errors import NnzipError

Targets = Literal["soft", "hard"]


class DistillOptions(BaseModel):
    """How the student learns from the teacher's logits; ``distill: {...}`` in a recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(4.0, gt=0, description="softens both distributions (T)")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the teacher term; 1 − α on CE")
    targets: Targets = Field("soft", description="'soft': KL to the teacher's distribution; "
                                                 "'hard': CE on the teacher's top-1 label")


def check_same_outputs(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Raise a clear error unless student and teacher give logits of the same shape."""
    if student_logits.shape != teacher_logits.shape:
        raise NnzipError(f"the teacher's outputs have shape {tuple(teacher_logits.shape)} but the "
                         f"student's have {tuple(student_logits.shape)}: distillation needs a "
                         "teacher for the same task (same number of classes)")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9, targets: Targets = "soft"
            ) -> torch.Tensor:
    """α·T²·KL(p_t^T ‖ p_s^T) + (1 − α)·CE(z_s, y), averaged over the batch (Hinton et al. 2015).

    With ``targets="hard"`` the teacher term is cross-entropy on the teacher's argmax label
    (no temperature: a label has no distribution to soften).
    """
    check_same_outputs(student_logits, teacher_logits)
    if temperature <= 0:
        raise NnzipError(f"temperature must be positive, got {temperature}: try 4")
    if not 0.0 <= alpha <= 1.0:
        raise NnzipError(f"alpha weighs the teacher term and must be in [0, 1], got {alpha}")
    # Every position of a model that classifies positions (a language model) is a prediction.
    student_logits, labels = prediction_rows(student_logits, labels)
    teacher_logits = prediction_rows(teacher_logits.detach())[0]
    if targets == "hard":
        teacher_term = F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))
    else:
        teacher_term = temperature ** 2 * F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean", log_target=True)
    if alpha == 1.0:  # labels unused: skip the CE so unlabeled batches work too
        return teacher_term
    return alpha * teacher_term + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The teacher's logits, always in eval mode and without building a graph."""
    if teacher.training:
        teacher.eval()
    return teacher(inputs)


def distillation_loss(teacher: nn.Module, options: DistillOptions | None = None, task=None
                      ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss hook for :func:`nnzip.train.fit` that distils ``teacher`` into the model trained.

    The teacher runs on the same (augmented) batch as the student, in eval mode, without
    gradients; its weights are never changed. ``task`` (:mod:`nnzip.tasks`, classification by
    default) says what matching the teacher means: the KD loss on logits, ``1 − cos`` on
    sentence embeddings.
    """
    options = options or DistillOptions()
    if task is not None and task.name != "classify":
        def task_loss_fn(outputs: torch.Tensor, targets: torch.Tensor,
                         inputs: torch.Tensor) -> torch.Tensor:
            return task.distill_loss(outputs, teacher_outputs(teacher, inputs), targets, options)

        return task_loss_fn

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor,
                inputs: torch.Tensor) -> torch.Tensor:
        return kd_loss(outputs, teacher_outputs(teacher, inputs), targets,
                       options.temperature, options.alpha, options.targets)

    return loss_fn
