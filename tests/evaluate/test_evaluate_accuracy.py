import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nnzip.evaluate.accuracy import accuracy, agreement, predict_logits, top_k_accuracy

LOGITS = torch.tensor([
    [0.9, 0.1, 0.0, 0.0],   # argmax 0
    [0.1, 0.8, 0.05, 0.05],  # argmax 1
    [0.5, 0.3, 0.2, 0.0],   # argmax 0, second 1, third 2
    [0.0, 0.1, 0.2, 0.7],   # argmax 3
])
LABELS = torch.tensor([0, 1, 2, 0])


def test_accuracy_is_the_fraction_of_correct_argmax():
    assert accuracy(LOGITS, LABELS) == 0.5


def test_top_k_counts_the_true_class_among_the_k_best():
    assert top_k_accuracy(LOGITS, LABELS, k=1) == 0.5
    assert top_k_accuracy(LOGITS, LABELS, k=2) == 0.5
    assert top_k_accuracy(LOGITS, LABELS, k=3) == 0.75


def test_top_k_with_fewer_classes_than_k_is_one():
    assert top_k_accuracy(LOGITS, LABELS, k=5) == 1.0


def test_agreement_compares_argmax_of_logits_or_labels():
    other = LOGITS.clone()
    other[3] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # changes one of four predictions
    assert agreement(LOGITS, other) == 0.75
    assert agreement(LOGITS, torch.tensor([0, 1, 0, 3])) == 1.0


def test_predict_logits_uses_eval_mode_and_restores_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.9)).train()
    loader = DataLoader(TensorDataset(torch.rand(10, 5), torch.zeros(10, dtype=torch.long)),
                        batch_size=4)
    first, second = predict_logits(model, loader), predict_logits(model, loader)
    assert first.shape == (10, 3)
    assert torch.equal(first, second)  # dropout off: deterministic
    assert model.training


@pytest.mark.parametrize("fn", [accuracy, top_k_accuracy])
def test_empty_inputs_do_not_divide_by_zero(fn):
    assert fn(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 0.0
