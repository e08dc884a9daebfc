"""Train a student from a teacher (:func:`distill`) and the recipe stage ``distill``.

```yaml
stages:
  # a new, smaller zoo model learns from the current one (Hinton et al. 2015)
  - distill: {student: lenet5_small, temperature: 4, alpha: 0.9, finetune_epochs: 10}
  # the current model learns from the pipeline's input model, with a FitNets hint
  - distill: {hints: {conv2: conv2}, hint_weight: 0.5}
```

To recover a pruned or quantized model by distillation, give that stage the option
``distill: {temperature: 4, alpha: 0.9}`` instead: its own loop then keeps its masks or rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import nn

from nnzip.data.splits import DataSplits
from nnzip.distill.hints import FeatureRecorder, HintedStudent, build_adapters, hint_loss
from nnzip.distill.losses import (
    DistillOptions,
    Targets,
    check_same_outputs,
    distillation_loss,
    teacher_outputs,
)
from nnzip.errors import NnzipError
from nnzip.stage import Context
from nnzip.train import FinetuneOptions, StepHook, TrainConfig, TrainResult, fit


def _probe(data: DataSplits, device: torch.device) -> torch.Tensor:
    inputs, _ = next(iter(data.loader("val", batch_size=2)))
    return inputs.to(device)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def check_teacher(student: nn.Module, teacher: nn.Module, probe: torch.Tensor) -> None:
    """Fail before training when the teacher's outputs cannot be compared with the student's."""
    was_training = student.training
    student.eval()
    try:
        check_same_outputs(student(probe), teacher_outputs(teacher, probe))
    finally:
        student.train(was_training)


def distill(student: nn.Module, teacher: nn.Module, data: DataSplits,
            config: TrainConfig | None = None, options: DistillOptions | None = None, *,
            hints: Mapping[str, str] | None = None, hint_weight: float = 1.0,
            step_hook: StepHook | None = None, progress: bool = False,
            description: str = "distill") -> TrainResult:
    """Train ``student`` in place on ``data`` with the KD loss from ``teacher`` (kept frozen).

    ``hints`` maps student layer names to teacher layer names (FitNets); each pair adds
    ``hint_weight`` × MSE between the adapted student features and the teacher's. Adapters are
    trained along with the student and then dropped: the student keeps its own architecture.
    """
    if hint_weight < 0:
        raise NnzipError(f"hint_weight must be ≥ 0, got {hint_weight}")
    if teacher is student:
        # The teacher must stay what it was while the student changes.
        teacher = copy.deepcopy(teacher)
    teacher.eval()
    probe = _probe(data, _device_of(student))
    check_teacher(student, teacher, probe)
    from nnzip.tasks import task_of

    kd = distillation_loss(teacher, options, task_of(data))
    hints = dict(hints or {})
    if not hints:
        return fit(student, data, config, loss_fn=kd, step_hook=step_hook, progress=progress,
                   description=description)

    adapters = build_adapters(student, teacher, hints, probe)
    hinted = HintedStudent(student, adapters)
    with FeatureRecorder(student, list(hints), "student") as student_features, \
            FeatureRecorder(teacher, list(hints.values()), "teacher") as teacher_features:

        def loss_fn(outputs: torch.Tensor, targets: torch.Tensor,
                    inputs: torch.Tensor) -> torch.Tensor:
            loss = kd(outputs, targets, inputs)  # runs the teacher, filling teacher_features
            return loss + hint_weight * hint_loss(student_features.outputs,
                                                  teacher_features.outputs, hints,
                                                  hinted.adapters)

        def hinted_step_hook(model: nn.Module, step: int) -> None:
            step_hook(model.student, step)

        return fit(hinted, data, config, loss_fn=loss_fn,
                   step_hook=hinted_step_hook if step_hook is not None else None,
                   progress=progress, description=description)


def zero_weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Where the weights of a (pruned) model are exactly zero, for the layers that have zeros."""
    return {name: param.detach() != 0 for name, param in model.named_parameters()
            if name.endswith("weight") and param.dim() > 1 and bool((param == 0).any())}


def keep_zeros_hook(masks: dict[str, torch.Tensor]) -> StepHook:
    """A step hook that puts the masked weights back to zero after every optimizer step."""
    def hook(model: nn.Module, step: int) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask)
    return hook


class Distill(FinetuneOptions):
    """Distil a teacher into a student with the KD loss and optional FitNets hints.

    Without ``student`` the current model is the student and ``context.teacher`` (the
    pipeline's input model) the teacher; weights that are exactly zero stay zero (so a pruned
    model stays pruned) unless ``keep_zeros: false``. With ``student`` (a zoo architecture and
    its ``student_options``) a new model of that kind is trained from scratch with the current
    model as teacher, and replaces it. ``hints`` maps student layer names to teacher layer names.
    ``finetune_epochs`` (default: the pipeline's fine-tune budget) is the length of training.
    """

    kind = "distill"

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    targets: Targets = "soft"
    hints: dict[str, str] = Field(default_factory=dict)
    hint_weight: float = Field(1.0, ge=0)
    student: str | None = None
    student_options: dict[str, Any] = Field(default_factory=dict)
    keep_zeros: bool = True

    def check(self, model: nn.Module) -> None:
        """The teacher layers ``hints`` names (and, for the current model as student, its
        layers too) exist."""
        super().check(model)
        from nnzip.distill.hints import find_layer

        for student_layer, teacher_layer in self.hints.items():
            find_layer(model, teacher_layer, "teacher")
            if self.student is None:
                find_layer(model, student_layer, "student")
        if self.student is not None:
            import difflib

            from nnzip.models import ZOO

            if self.student not in ZOO:
                close = difflib.get_close_matches(self.student, list(ZOO), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise NnzipError(f"student {self.student!r} is not a zoo architecture{hint}: "
                                 f"choose one of {', '.join(ZOO)}")
        if self.student is None:
            if self.student_options:
                raise NnzipError("student_options configure a new student: set 'student' to a "
                                 "zoo architecture too, or drop student_options")

    def keeps_layer_names(self) -> bool:
        return self.student is None  # a new student has its own layers

    def options(self) -> DistillOptions:
        return DistillOptions(temperature=self.temperature, alpha=self.alpha,
                              targets=self.targets)

    def _student_and_teacher(self, model: nn.Module,
                             context: Context) -> tuple[nn.Module, nn.Module, str]:
        if self.student is not None:
            from nnzip.models import create_model

            torch.manual_seed(context.seed)
            student = create_model(self.student, input_shape=context.data.input_shape,
                                   num_classes=context.data.num_classes, **self.student_options)
            return student.to(_device_of(model)), model, "current model"
        if self.student_options:
            raise NnzipError("student_options configure a new student: set 'student' to a zoo "
                             "architecture too, or drop student_options")
        if context.teacher is None:
            raise NnzipError("the distill stage needs a teacher: run it in a pipeline (the model "
                             "before compression is the teacher), pass Context(teacher=...), or "
                             "set 'student' to train a new model from the current one")
        return model, context.teacher, "model before compression"

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        student, teacher, teacher_name = self._student_and_teacher(model, context)
        masks = zero_weight_masks(student) if self.keep_zeros and self.student is None else {}
        config = self.train_config(context)
        result = distill(student, teacher, context.data, config, self.options(),
                         hints=self.hints, hint_weight=self.hint_weight,
                         step_hook=keep_zeros_hook(masks) if masks else None,
                         progress=context.progress)
        context.record("teacher", teacher_name)
        context.record("student", self.student or "current model")
        context.record("temperature", self.temperature)
        context.record("alpha", self.alpha)
        context.record("targets", self.targets)
        context.record("hints", dict(self.hints))
        context.record("teacher_params", sum(p.numel() for p in teacher.parameters()))
        context.record("student_params", sum(p.numel() for p in student.parameters()))
        context.record("kept_zero_layers", sorted(masks))
        context.record("epochs", result.epochs_run)
        context.record("best_val_accuracy", round(result.best_val_accuracy, 4))
        return student
