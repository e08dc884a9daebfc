"""Importance criteria: shapes, signs, zero weights score zero, Fisher = per-sample squares."""

import pytest
import torch
import torch.nn.functional as F

from nnzip.errors import NnzipError
from nnzip.prune import (
    calibration_batches,
    channel_scores,
    fisher_diagonal,
    hessian_scores,
    hutchinson_diagonal,
    importance_scores,
    prunable_names,
    prune_unstructured,
    taylor_scores,
)


@pytest.fixture
def batches(digits):
    return calibration_batches(digits, 3, batch_size=32)


@pytest.mark.parametrize("criterion", ["magnitude", "l1", "l2", "random", "taylor", "hessian"])
def test_every_criterion_scores_every_weight_with_a_non_negative_number(trained_mlp, batches,
                                                                      criterion):
    names = prunable_names(trained_mlp)
    scores = importance_scores(trained_mlp, criterion, names, batches=batches)
    params = dict(trained_mlp.named_parameters())
    for name in names:
        assert scores[name].shape == params[name].shape
        assert torch.all(scores[name] >= 0) and torch.isfinite(scores[name]).all()
        assert scores[name].sum() > 0


@pytest.mark.parametrize("method", ["fisher", "hutchinson"])
def test_obd_score_is_zero_exactly_where_the_weight_is_zero(trained_mlp, batches, method):
    prune_unstructured(trained_mlp, 0.5, criterion="random")
    names = prunable_names(trained_mlp)
    scores = hessian_scores(trained_mlp, batches, names, method=method)
    for name, param in trained_mlp.named_parameters():
        if name in names:
            assert torch.all(scores[name][param == 0] == 0)
            assert (scores[name][param != 0] > 0).float().mean() > 0.5


def test_taylor_score_is_zero_where_the_weight_is_zero(trained_mlp, batches):
    prune_unstructured(trained_mlp, 0.5)
    scores = taylor_scores(trained_mlp, batches, ["fc2.weight"])
    assert torch.all(scores["fc2.weight"][trained_mlp.fc2.weight == 0] == 0)


def test_fisher_diagonal_is_the_mean_of_per_sample_squared_gradients(trained_mlp, digits):
    x, y = digits.train.tensors[0][:5], digits.train.tensors[1][:5]
    fisher = fisher_diagonal(trained_mlp, [(x, y)], ["fc3.weight"])["fc3.weight"]
    trained_mlp.eval()
    expected = torch.zeros_like(trained_mlp.fc3.weight)
    for i in range(5):
        loss = F.cross_entropy(trained_mlp(x[i:i + 1]), y[i:i + 1])
        expected += torch.autograd.grad(loss, trained_mlp.fc3.weight)[0] ** 2
    torch.testing.assert_close(fisher, expected / 5, rtol=1e-4, atol=1e-9)


def test_hutchinson_estimates_the_exact_hessian_diagonal_of_a_quadratic():
    # loss = ½ wᵀ A w has Hessian A; many probes average the off-diagonal noise away.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])) + 0.1
    batch = (torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))

    class Quadratic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, x):
            w = self.lin.weight.reshape(-1)
            # Logits whose cross-entropy against class 0 equals ½ wᵀ A w (log-sum-exp trick).
            energy = 0.5 * w @ a @ w
            return torch.stack([torch.zeros(()), torch.log(torch.expm1(energy))]).unsqueeze(0)

    quadratic = Quadratic()
    # Cross-entropy = log(1 + expm1(E)) = E exactly.
    diagonal = hutchinson_diagonal(quadratic, [batch] * 200, ["lin.weight"], probes=4)
    torch.testing.assert_close(diagonal["lin.weight"].reshape(-1), torch.diagonal(a),
                               rtol=0.1, atol=0.1)


def test_data_criteria_without_data_are_a_clear_error(mlp):
    with pytest.raises(NnzipError, match="needs calibration data"):
        importance_scores(mlp, "taylor", ["fc1.weight"])
    with pytest.raises(NnzipError, match="needs data"):
        prune_unstructured(mlp, 0.5, criterion="hessian")


def test_random_scores_repeat_for_a_seed_and_differ_across_seeds(mlp):
    names = ["fc1.weight"]
    first = importance_scores(mlp, "random", names, seed=3)["fc1.weight"]
    assert torch.equal(first, importance_scores(mlp, "random", names, seed=3)["fc1.weight"])
    assert not torch.equal(first, importance_scores(mlp, "random", names, seed=4)["fc1.weight"])


def test_channel_scores_reduce_everything_but_the_output_channel():
    weight = torch.tensor([[[[3.0, -4.0]]], [[[0.0, 0.0]]], [[[1.0, 1.0]]]])  # (3, 1, 1, 2)
    assert channel_scores(weight, "l1").tolist() == [7.0, 0.0, 2.0]
    assert channel_scores(weight, "l2").tolist() == pytest.approx([5.0, 0.0, 2 ** 0.5])
    assert channel_scores(weight.abs(), "sum").tolist() == [7.0, 0.0, 2.0]
    assert channel_scores(weight.abs(), "mean").tolist() == [3.5, 0.0, 1.0]
    assert channel_scores(weight, "max").tolist() == [3.0, 0.0, 1.0]
    assert channel_scores(torch.tensor([-2.0, 1.0]), "l1").tolist() == [2.0, 1.0]
    with pytest.raises(NnzipError, match="unknown channel reduction"):
        channel_scores(weight, "median")
