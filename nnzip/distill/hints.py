"""Intermediate-feature distillation: FitNets hints (Romero et al. 2015, "FitNets: Hints for
Thin Deep Nets").

A named student layer (the *guided* layer) learns to predict the output of a named teacher layer
(the *hint*) through a small learned regressor, by mean squared error. The regressor is a 1×1
convolution for feature maps and a linear map for vectors, and nothing at all when the shapes
already match. Unlike the paper's two-stage schedule (hints first, then KD), nnzip adds the hint
term to the distillation loss and trains both at once, which needs no extra stage and is what
most later work does.

The adapters exist only during training: :class:`HintedStudent` holds student and adapters in
one module so the fit loop's optimizer updates both, and the caller keeps the plain student.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.errors import NnzipError


def find_layer(model: nn.Module, name: str, role: str) -> nn.Module:
    """The submodule called ``name``, or an error naming the close matches."""
    layers = dict(model.named_modules())
    if name and name in layers:
        return layers[name]
    named = [key for key in layers if key]
    close = difflib.get_close_matches(name, named, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(named[:20]) + (", ..." if len(named) > 20 else "")
    raise NnzipError(f"the {role} has no layer {name!r}{hint}: name a submodule as in "
                     f"model.named_modules(), e.g. {listed}")


class FeatureRecorder:
    """Forward hooks that keep the latest output of some named layers, while in a ``with``."""

    def __init__(self, model: nn.Module, names: list[str], role: str) -> None:
        self.layers = {name: find_layer(model, name, role) for name in names}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _keep(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise NnzipError(f"layer {name!r} returns {type(output).__name__}, not a tensor: "
                                 "pick a layer whose output is one feature tensor")
            self.outputs[name] = output
        return hook

    def __enter__(self) -> FeatureRecorder:
        self._handles = [layer.register_forward_hook(self._keep(name))
                         for name, layer in self.layers.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = {}


def make_adapter(student_shape: torch.Size, teacher_shape: torch.Size, student_layer: str,
                 teacher_layer: str) -> nn.Module:
    """The smallest map from student features to teacher features: identity, 1×1 conv or linear.

    Shapes are per batch (``N, C, H, W`` or ``N, F``); spatial sizes must already agree, since
    FitNets' regressor maps channels, not resolution.
    """
    if student_shape == teacher_shape:
        return nn.Identity()
    if len(student_shape) == len(teacher_shape) == 4 and student_shape[2:] == teacher_shape[2:]:
        return nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False)
    if len(student_shape) == len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1], bias=False)
    raise NnzipError(f"hint {student_layer!r} -> {teacher_layer!r}: student features "
                     f"{tuple(student_shape[1:])} cannot be mapped onto teacher features "
                     f"{tuple(teacher_shape[1:])} by a 1×1 conv or a linear layer: pair layers "
                     "whose feature maps have the same height and width (or two vector layers)")


class HintedStudent(nn.Module):
    """The student and its hint adapters in one module, so one optimizer trains both.

    ``forward`` is the student's; the adapters are applied only in :func:`hint_loss`.
    """

    def __init__(self, student: nn.Module, adapters: list[nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleList(adapters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


@torch.no_grad()
def build_adapters(student: nn.Module, teacher: nn.Module, hints: Mapping[str, str],
                   probe: torch.Tensor) -> list[nn.Module]:
    """One adapter per ``student layer -> teacher layer`` pair, sized by a probe forward pass."""
    if not hints:
        return []
    with FeatureRecorder(student, list(hints), "student") as student_features, \
            FeatureRecorder(teacher, list(hints.values()), "teacher") as teacher_features:
        was_training = student.training
        student.eval()
        try:
            student(probe)
        finally:
            student.train(was_training)
        teacher.eval()
        teacher(probe)
        shapes = [(student_features.outputs[s].shape, teacher_features.outputs[t].shape)
                  for s, t in hints.items()]
    device = probe.device
    return [make_adapter(s_shape, t_shape, s, t).to(device)
            for (s, t), (s_shape, t_shape) in zip(hints.items(), shapes, strict=True)]


def hint_loss(student_features: Mapping[str, torch.Tensor],
              teacher_features: Mapping[str, torch.Tensor], hints: Mapping[str, str],
              adapters: nn.ModuleList | list[nn.Module]) -> torch.Tensor:
    """Σ over pairs of MSE(adapter(student feature), teacher feature)."""
    terms = [F.mse_loss(adapter(student_features[s]), teacher_features[t].detach())
             for (s, t), adapter in zip(hints.items(), adapters, strict=True)]
    return torch.stack(terms).sum()
