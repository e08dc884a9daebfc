"""Distillation of a language model: the KD loss over (batch, positions, vocabulary) logits is
the temperature-softened KL over the vocabulary at every position, averaged over positions."""

import pytest
import torch
import torch.nn.functional as F

from nnzip.distill.losses import kd_loss


def test_kd_loss_is_the_mean_over_positions_of_the_softened_kl_over_the_vocabulary():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 11, generator=generator)
    teacher = torch.randn(3, 5, 11, generator=generator)
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    temperature, alpha = 2.0, 0.7
    per_position = []
    for i in range(3):
        for j in range(5):
            p_teacher = F.softmax(teacher[i, j] / temperature, dim=-1)
            log_student = F.log_softmax(student[i, j] / temperature, dim=-1)
            per_position.append(float((p_teacher * (p_teacher.log() - log_student)).sum()))
    soft = temperature ** 2 * sum(per_position) / len(per_position)
    hard = float(F.cross_entropy(student.reshape(-1, 11), labels.reshape(-1)))
    expected = alpha * soft + (1 - alpha) * hard
    assert float(kd_loss(student, teacher, labels, temperature, alpha)) == pytest.approx(
        expected, rel=1e-5)
