"""Robustness: accuracy under random input noise and under the fast gradient sign attack.

Compression can keep clean accuracy while making a model brittle; these two cheap probes show it.
Both perturb continuous inputs, so neither runs on integer inputs such as token ids
(:func:`unsupported_reason`).
FGSM is from Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples"
(ICLR 2015): ``x_adv = clamp(x + eps * sign(grad_x CE(model(x), y)))``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.core.modes import eval_mode
from nnzip.core.outputs import predicted_labels, prediction_rows
from nnzip.errors import NnzipError

if TYPE_CHECKING:
    from nnzip.data.splits import DataSplits
    from nnzip.evaluate.config import EvalConfig

log = logging.getLogger(__name__)


def _batches(x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def _key(value: float) -> str:
    return str(float(value))


def unsupported_reason(x: torch.Tensor) -> str | None:
    """Why the probes cannot run on inputs ``x`` (integer token ids, categories), else None."""
    if x.is_floating_point():
        return None
    dtype = str(x.dtype).removeprefix("torch.")
    return (f"not measured: the inputs are {dtype} (token ids or categories); Gaussian noise and "
            "FGSM perturb continuous inputs and mean nothing for discrete ones")


def _require_continuous(x: torch.Tensor) -> None:
    reason = unsupported_reason(x)
    if reason is not None:
        raise NnzipError(f"robustness probe {reason}: measure clean accuracy only")


def gaussian_noise_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            sigmas: Sequence[float], input_range: tuple[float, float],
                            seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """Accuracy on inputs with added N(0, sigma^2) noise, clamped to ``input_range``.

    Returns ``{str(sigma): accuracy}``; the noise is seeded so every model sees the same noise.
    """
    _require_continuous(x)
    lo, hi = input_range
    result = {}
    with eval_mode(model), torch.no_grad():
        for sigma in sigmas:
            generator = torch.Generator().manual_seed(seed)
            correct = 0
            for xb, yb in _batches(x, y, batch_size):
                noise = torch.randn(xb.shape, generator=generator) * sigma
                noisy = (xb + noise).clamp(lo, hi)
                correct += int((predicted_labels(model(noisy)) == yb.reshape(-1)).sum())
            result[_key(sigma)] = correct / max(y.numel(), 1)
    return result


def _input_gradient_sign(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    x_grad = xb.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(*prediction_rows(model(x_grad), yb))
    # autograd.grad with inputs=[x] returns the input gradient only: parameters' .grad stay as
    # they were and their requires_grad flags are never touched.
    (grad,) = torch.autograd.grad(loss, [x_grad])
    return grad.sign()


def fgsm_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  epsilons: Sequence[float], input_range: tuple[float, float],
                  batch_size: int = 256) -> dict[str, float]:
    """Accuracy under an untargeted FGSM attack for each ``epsilon``: ``{str(eps): accuracy}``.

    The model is attacked in eval mode; one gradient per batch serves every epsilon.
    """
    _require_continuous(x)
    lo, hi = input_range
    correct = dict.fromkeys(map(_key, epsilons), 0)
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size):
            with torch.enable_grad():
                sign = _input_gradient_sign(model, xb, yb)
            with torch.no_grad():
                for eps in epsilons:
                    adversarial = (xb + eps * sign).clamp(lo, hi)
                    predicted = predicted_labels(model(adversarial))
                    correct[_key(eps)] += int((predicted == yb.reshape(-1)).sum())
    return {key: count / max(y.numel(), 1) for key, count in correct.items()}


def robustness_report(model: nn.Module, data: DataSplits, config: EvalConfig) -> dict:
    """Accuracy under noise and FGSM on the test split; a ``note`` says why a probe has no
    figures (integer inputs, no input gradient)."""
    unmeasured_fgsm = {str(float(eps)): None for eps in config.fgsm_epsilons}
    x, y = data.test.tensors
    reason = unsupported_reason(x)
    if reason is not None:
        return {"gaussian": {str(float(sigma)): None for sigma in config.noise_sigmas},
                "fgsm": unmeasured_fgsm, "note": reason}
    if config.robustness_samples is not None:
        x, y = x[:config.robustness_samples], y[:config.robustness_samples]
    gaussian = gaussian_noise_accuracy(model, x, y, config.noise_sigmas, data.input_range,
                                       batch_size=config.eval_batch_size)
    try:
        fgsm = fgsm_accuracy(model, x, y, config.fgsm_epsilons, data.input_range,
                             batch_size=config.eval_batch_size)
    except RuntimeError as error:
        # Quantized or scripted kernels may have no backward; no gradient, no attack figure.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("FGSM not measured for %s: %s", type(model).__name__, reason)
        return {"gaussian": gaussian, "fgsm": unmeasured_fgsm,
                "note": f"FGSM not measured: no input gradient ({reason})"}
    return {"gaussian": gaussian, "fgsm": fgsm}
