"""Distillation: KD loss, FitNets hints, the distill stage, distillation as a fine-tune loss."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnzip.distill import (
    DistillOptions,
    FeatureRecorder,
    HintedStudent,
    build_adapters,
    distill,
    distillation_loss,
    kd_loss,
)
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.models import create_model
from nnzip.pipeline import compress
from nnzip.prune.stages import Prune
from nnzip.quant.stages import QAT
from nnzip.recipe import parse_recipe
from nnzip.stage import Context
from nnzip.train import TrainConfig, fit

FAST = EvalConfig(warmup=1, repeats=3, robustness_samples=200)


@pytest.fixture(scope="module")
def teacher(digits):
    """LeNet-300-100 trained for a few epochs on the 8×8 digits (~93 % test accuracy)."""
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=digits.input_shape,
                         num_classes=digits.num_classes)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        fit(model, digits, TrainConfig(epochs=8, patience=None), progress=False)
    return model.eval()


def _small_mlp(digits, hidden: int = 32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                         nn.Linear(hidden, digits.num_classes))


def _test_accuracy(model, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", 512)), data.test.tensors[1])


def test_kd_loss_has_zero_gradient_when_student_equals_teacher_at_the_same_temperature():
    torch.manual_seed(0)
    logits = 3 * torch.randn(16, 10)
    labels = torch.randint(0, 10, (16,))
    student = logits.clone().requires_grad_()
    loss = kd_loss(student, logits, labels, temperature=4.0, alpha=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert student.grad.abs().max().item() < 1e-7
    # ... and a student that differs does get pulled towards the teacher.
    moved = (logits + torch.randn(16, 10)).requires_grad_()
    kd_loss(moved, logits, labels, temperature=4.0, alpha=1.0).backward()
    assert moved.grad.abs().max().item() > 1e-3


def test_kd_hook_gives_a_copied_model_zero_gradients_on_every_parameter(teacher, digits):
    student = copy.deepcopy(teacher).train()
    teacher.zero_grad(set_to_none=True)  # fit leaves the last step's gradients
    inputs, labels = next(iter(digits.loader("train", batch_size=32)))
    loss_fn = distillation_loss(teacher, DistillOptions(temperature=2.0, alpha=1.0))
    loss_fn(student(inputs), labels, inputs).backward()
    assert max(p.grad.abs().max().item() for p in student.parameters()) < 1e-6
    assert all(p.grad is None for p in teacher.parameters()), "the teacher gets no gradients"


def test_kd_loss_is_hintons_formula():
    torch.manual_seed(1)
    student, teacher_logits = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    temperature, alpha = 3.0, 0.7
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / temperature, dim=1))).sum(1)
    expected = (alpha * temperature ** 2 * kl.mean()
                + (1 - alpha) * F.cross_entropy(student, labels))
    got = kd_loss(student, teacher_logits, labels, temperature, alpha)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(student, teacher_logits, labels, alpha=0.0).item() == pytest.approx(
        F.cross_entropy(student, labels).item(), rel=1e-6)
    hard = kd_loss(student, teacher_logits, labels, alpha=1.0, targets="hard")
    assert hard.item() == pytest.approx(
        F.cross_entropy(student, teacher_logits.argmax(1)).item(), rel=1e-6)


def test_a_teacher_with_another_output_shape_is_a_clear_error(digits):
    wrong_teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    with pytest.raises(NnzipError, match=r"teacher's outputs have shape \(2, 7\).*\(2, 10\)"):
        distill(_small_mlp(digits), wrong_teacher, digits, TrainConfig(epochs=1))
    with pytest.raises(NnzipError, match="same number of classes"):
        kd_loss(torch.zeros(4, 10), torch.zeros(4, 7), torch.zeros(4, dtype=torch.long))


def test_an_unknown_hint_layer_is_a_clear_error_with_a_suggestion(teacher, digits):
    with pytest.raises(NnzipError, match=r"teacher has no layer 'fc11'.*did you mean 'fc1'"):
        distill(_small_mlp(digits), teacher, digits, TrainConfig(epochs=1),
                hints={"1": "fc11"})
    with pytest.raises(NnzipError, match="student has no layer 'fc1'"):
        distill(_small_mlp(digits), teacher, digits, TrainConfig(epochs=1), hints={"fc1": "fc1"})


def test_adapters_match_widths_and_are_trained_with_the_student(teacher, digits):
    student = _small_mlp(digits)
    probe = digits.train.tensors[0][:2]
    adapters = build_adapters(student, teacher, {"1": "fc1", "3": "fc3"}, probe)
    assert isinstance(adapters[0], nn.Linear) and adapters[0].weight.shape == (300, 32)
    assert isinstance(adapters[1], nn.Identity), "same widths need no adapter"
    hinted = HintedStudent(student, adapters)
    trained = {id(p) for p in hinted.parameters()}
    assert {id(p) for p in adapters[0].parameters()} <= trained, "fit's optimizer sees adapters"
    conv_student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(),
                                 nn.Linear(256, digits.num_classes))
    conv_teacher = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.Flatten(),
                                 nn.Linear(768, digits.num_classes))
    conv_adapter, = build_adapters(conv_student, conv_teacher, {"0": "0"}, probe)
    assert isinstance(conv_adapter, nn.Conv2d) and conv_adapter.kernel_size == (1, 1)
    assert (conv_adapter.in_channels, conv_adapter.out_channels) == (4, 12)


def test_distillation_with_hints_trains_the_plain_student_and_frees_the_hooks(teacher, digits):
    student = _small_mlp(digits)
    keys = list(student.state_dict())
    teacher_before = copy.deepcopy(teacher.state_dict())
    # T = 1: a tiny student trained this briefly learns slowly from flat T = 4 targets.
    result = distill(student, teacher, digits, TrainConfig(epochs=4, patience=None),
                     DistillOptions(temperature=1.0, alpha=0.9), hints={"1": "fc1"},
                     hint_weight=0.5)
    assert result.epochs_run == 4
    assert list(student.state_dict()) == keys, "adapters are dropped, the student is unchanged"
    assert _test_accuracy(student, digits) > 0.5
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not teacher.training
    assert not student[1]._forward_hooks and not teacher.fc1._forward_hooks


def test_feature_recorder_keeps_the_named_outputs_only_inside_the_block(teacher, digits):
    x = digits.test.tensors[0][:3]
    with FeatureRecorder(teacher, ["fc2"], "teacher") as recorder:
        teacher(x)
        assert recorder.outputs["fc2"].shape == (3, 100)
    assert not teacher.fc2._forward_hooks


class _CountingTeacher(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize("with_distill", [False, True])
def test_prune_fine_tunes_by_distillation_only_when_asked(teacher, digits, with_distill):
    counting = _CountingTeacher(teacher)
    options = {"distill": {"temperature": 4, "alpha": 0.9}} if with_distill else {}
    stage = Prune(sparsity=0.8, finetune_epochs=1, **options)
    pruned = stage.apply(copy.deepcopy(teacher),
                         Context(data=digits, teacher=counting, progress=False))
    assert (counting.calls > 0) == with_distill
    weights = [p for n, p in pruned.named_parameters() if n.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=0.01), "distillation keeps the pruning masks"
    assert _test_accuracy(pruned, digits) > 0.8


def test_qat_fine_tunes_by_distillation_from_the_teacher(teacher, digits):
    counting = _CountingTeacher(teacher)
    stage = QAT(weight_bits=4, finetune_epochs=1, distill={"alpha": 1.0})
    stage.apply(copy.deepcopy(teacher), Context(data=digits, teacher=counting, progress=False))
    assert counting.calls > 0


def test_distillation_as_fine_tune_loss_without_a_teacher_is_a_clear_error(teacher, digits):
    stage = Prune(sparsity=0.5, finetune_epochs=1, distill={})
    with pytest.raises(NnzipError, match="no teacher"):
        stage.apply(copy.deepcopy(teacher), Context(data=digits, progress=False))


def test_distill_stage_in_a_recipe_trains_a_new_student_from_the_input_model(teacher, digits):
    recipe = parse_recipe({"stages": [
        {"distill": {"student": "lenet300", "temperature": 2, "alpha": 0.9,
                     "finetune_epochs": 3, "hints": {"fc2": "fc2"}}},
        {"prune": {"sparsity": 0.5, "finetune_epochs": 1, "distill": {"alpha": 0.5}}},
        {"distill": {"label": "polish", "finetune_epochs": 1}}]})
    result = compress(copy.deepcopy(teacher), recipe, digits, eval_config=FAST, progress=False)
    stages = result.report["stages"]
    assert [s["kind"] for s in stages] == ["distill", "prune", "distill"]
    assert stages[0]["details"]["teacher"] == "current model"
    assert stages[0]["details"]["hints"] == {"fc2": "fc2"}
    assert stages[2]["details"]["teacher"] == "model before compression"
    assert "fc1.weight" in stages[2]["details"]["kept_zero_layers"]
    rows = result.report["models"]
    assert rows[1]["accuracy"] > 0.75 and rows[-1]["accuracy"] > 0.75
    pruned_fc1 = stages[1]["details"]["layer_sparsity"]["fc1.weight"]
    assert pruned_fc1 > 0.2
    assert (result.model.fc1.weight == 0).float().mean().item() == pytest.approx(pruned_fc1), \
        "the polish kept the pruned zeros"


def test_recipe_options_of_distillation_are_validated_up_front():
    with pytest.raises(NnzipError, match="temperature"):
        parse_recipe({"stages": [{"distill": {"temperature": 0}}]})
    with pytest.raises(NnzipError, match="alpha"):
        parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "distill": {"alpha": 2}}}]})
    with pytest.raises(NnzipError,
                       match="unknown option 'distill.temprature'.*did you mean 'temperature'"):
        parse_recipe({"stages": [{"qat": {"distill": {"temprature": 4}}}]})
