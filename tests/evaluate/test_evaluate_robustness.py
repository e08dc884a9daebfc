import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnzip.evaluate.accuracy import accuracy
from nnzip.evaluate.robustness import fgsm_accuracy, gaussian_noise_accuracy

INPUT_RANGE = (0.0, 1.0)


@pytest.fixture(scope="module")
def trained_linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logistic regression on two well separated clusters in [0, 1]^20 (trains in ~50 ms)."""
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=generator)
    centers = torch.where(y.unsqueeze(1) == 1, 0.65, 0.35).expand(400, 20)
    x = (centers + 0.08 * torch.randn(400, 20, generator=generator)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Linear(20, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model, x, y


def _clean(model, x, y) -> float:
    with torch.no_grad():
        return accuracy(model(x), y)


def test_zero_noise_equals_clean_accuracy(trained_linear):
    model, x, y = trained_linear
    result = gaussian_noise_accuracy(model, x, y, [0.0, 0.3], INPUT_RANGE, seed=0, batch_size=64)
    assert result["0.0"] == _clean(model, x, y)
    assert set(result) == {"0.0", "0.3"}


def test_noise_is_seeded(trained_linear):
    model, x, y = trained_linear
    first = gaussian_noise_accuracy(model, x, y, [0.4], INPUT_RANGE, seed=1)
    assert first == gaussian_noise_accuracy(model, x, y, [0.4], INPUT_RANGE, seed=1)


def test_fgsm_zero_epsilon_is_clean_and_larger_epsilon_never_helps(trained_linear):
    model, x, y = trained_linear
    clean = _clean(model, x, y)
    assert clean > 0.95
    result = fgsm_accuracy(model, x, y, [0.0, 0.05, 0.1, 0.2], INPUT_RANGE, batch_size=64)
    assert result["0.0"] == clean
    assert clean >= result["0.05"] >= result["0.1"] >= result["0.2"]
    assert result["0.2"] < clean  # the attack must actually bite


def test_fgsm_leaves_parameters_and_their_gradients_alone(trained_linear):
    model, x, y = trained_linear
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.requires_grad_(False)
    weight_before = model.weight.detach().clone()
    try:
        fgsm_accuracy(model, x, y, [0.1], INPUT_RANGE)
        assert torch.equal(model.weight.grad, torch.ones_like(model.weight))
        assert model.bias.grad is None
        assert model.weight.requires_grad and not model.bias.requires_grad
        assert torch.equal(model.weight, weight_before)
    finally:
        model.weight.grad = None
        model.bias.requires_grad_(True)


def test_fgsm_attacks_in_eval_mode_and_restores_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9)).train()
    x, y = torch.rand(32, 4), torch.randint(0, 3, (32,))
    first = fgsm_accuracy(model, x, y, [0.1], INPUT_RANGE)
    assert first == fgsm_accuracy(model, x, y, [0.1], INPUT_RANGE)  # no dropout noise
    assert model.training


def test_fgsm_works_under_no_grad():
    model = nn.Linear(4, 2)
    x, y = torch.rand(8, 4), torch.randint(0, 2, (8,))
    with torch.no_grad():
        result = fgsm_accuracy(model, x, y, [0.1], INPUT_RANGE)
    assert 0.0 <= result["0.1"] <= 1.0
