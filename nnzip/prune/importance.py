"""Importance criteria: *what* to remove, kept apart from the surgery that removes it.

Every criterion returns ``Scores``, a dict from parameter name (``"fc1.weight"``) to a tensor of the
weight's shape holding non-negative importances: the lowest-scoring weights are pruned first.

- magnitude (Han et al. 2015, "Learning both Weights and Connections"): ``|w|`` (L1) or ``w²``
  (L2). Element-wise both rank weights identically; they differ once reduced over a channel.
- random: a seeded uniform draw, the baseline every criterion must beat.
- first-order Taylor (Molchanov et al. 2017, "Pruning CNNs for Resource Efficient Inference";
  2019, "Importance Estimation for Neural Network Pruning"): ``|w · ∂L/∂w|``, the first-order
  change of the loss when ``w`` is set to zero, accumulated over calibration batches.
- Hessian / Optimal Brain Damage (LeCun et al. 1990): ``½ · H_ii · w²``, the second-order change
  of the loss, with the Hessian diagonal from the empirical Fisher (mean of per-sample squared
  gradients) or from Hutchinson's estimator ``E[z ⊙ Hz]`` with Rademacher probes ``z``
  (Hutchinson 1990; used for sensitivity by Yao et al. 2020, PyHessian / HAWQ).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from nnzip.core.modes import eval_mode
from nnzip.core.outputs import prediction_rows
from nnzip.data.splits import Batch
from nnzip.errors import NnzipError
from nnzip.prune.masks import weight_lookup

Scores = dict[str, torch.Tensor]
Criterion = Literal["magnitude", "l1", "l2", "random", "taylor", "hessian"]
HessianMethod = Literal["fisher", "hutchinson"]
ChannelReduce = Literal["l1", "l2", "sum", "mean", "max"]

CRITERIA: tuple[str, ...] = ("magnitude", "l1", "l2", "random", "taylor", "hessian")
#: Criteria that need calibration data (gradients of the loss).
DATA_CRITERIA: tuple[str, ...] = ("taylor", "hessian")
#: Samples per vmap call when computing per-sample gradients for the empirical Fisher.
_FISHER_CHUNK = 32


def _parameters(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    """The tensors of ``names`` (a tied weight's alias finds the one shared tensor)."""
    params = weight_lookup(model)
    missing = [name for name in names if name not in params]
    if missing:
        raise NnzipError(f"no parameter named {missing[0]!r} in the model: valid names are "
                         f"{', '.join(dict(model.named_parameters()))}")
    return {name: params[name] for name in names}


def magnitude_scores(model: nn.Module, names: Sequence[str], p: int = 1) -> Scores:
    """``|w|`` for ``p=1`` or ``w²`` for ``p=2`` (Han et al. 2015)."""
    if p not in (1, 2):
        raise NnzipError(f"magnitude norm must be 1 or 2, got {p}")
    return {name: param.detach().abs().pow(p).clone()
            for name, param in _parameters(model, names).items()}


def random_scores(model: nn.Module, names: Sequence[str], seed: int = 0) -> Scores:
    """Uniform random importances from a seeded generator: the criterion-free baseline."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(param.shape, generator=generator).to(param.device)
            for name, param in _parameters(model, names).items()}


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every prediction, the default loss of every gradient criterion.

    A classifier gives (N, classes) with labels (N,); a language model gives (N, L, vocab) with
    labels (N, L): every position is one prediction (:func:`nnzip.core.outputs.prediction_rows`;
    ``F.cross_entropy`` alone would read the L axis as classes). Anything else is an error naming
    the shapes, never a traceback from inside torch.
    """
    if not isinstance(outputs, torch.Tensor):
        raise NnzipError(f"the gradient criteria need the model to return a tensor of logits, "
                         f"got {type(outputs).__name__}: wrap the model so that it does, or use "
                         "criterion 'magnitude'")
    logits, labels = prediction_rows(outputs, targets)
    if outputs.dim() < 2 or targets.is_floating_point() or labels.shape != logits.shape[:1]:
        raise NnzipError(f"the gradient criteria use cross-entropy over the output's classes, "
                         f"which needs integer labels of shape {tuple(outputs.shape[:-1])}; got "
                         f"outputs {tuple(outputs.shape)} and labels {tuple(targets.shape)} "
                         f"({targets.dtype}): label every prediction, or use criterion "
                         "'magnitude'")
    return F.cross_entropy(logits, labels)


def _require_batches(batches: Sequence[Batch], what: str) -> None:
    if not batches:
        raise NnzipError(f"{what} needs calibration data: pass at least one (inputs, targets) "
                         "batch (e.g. calibration_batches(data, 8))")


def taylor_scores(model: nn.Module, batches: Iterable[Batch], names: Sequence[str],
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                  ) -> Scores:
    """First-order Taylor importance ``|w · ∂L/∂w|``, averaged over calibration batches.

    Molchanov et al. (2017, 2019): the first-order estimate of the loss change when a weight is
    removed. Gradients are taken with ``torch.autograd.grad``, so ``.grad`` is left untouched.
    """
    batches = list(batches)
    _require_batches(batches, "the Taylor criterion")
    loss_fn = loss_fn or task_loss
    params = _parameters(model, names)
    device = next(iter(params.values())).device
    totals = {name: torch.zeros_like(param) for name, param in params.items()}
    with eval_mode(model):
        for inputs, targets in batches:
            loss = loss_fn(model(inputs.to(device)), targets.to(device))
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, param), gradient in zip(params.items(), grads, strict=True):
                if gradient is not None:
                    totals[name] += (param.detach() * gradient).abs()
    return {name: total / len(batches) for name, total in totals.items()}


def fisher_diagonal(model: nn.Module, batches: Iterable[Batch], names: Sequence[str]) -> Scores:
    """Diagonal of the empirical Fisher, ``mean_n (∂ℓ_n/∂w)²`` over every calibration sample.

    Per-sample gradients come from ``torch.func.vmap`` over ``grad`` (squaring a mini-batch mean
    gradient instead would be biased towards zero by the batch size).
    """
    batches = list(batches)
    _require_batches(batches, "the Fisher Hessian estimate")
    params = _parameters(model, names)
    device = next(iter(params.values())).device
    frozen = {name: tensor.detach() for name, tensor in model.named_parameters()
              if name not in params}
    frozen.update({name: buffer for name, buffer in model.named_buffers()})

    def sample_loss(trainable: dict[str, torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
        outputs = functional_call(model, {**frozen, **trainable}, (x.unsqueeze(0),))
        return task_loss(outputs, y.unsqueeze(0))

    per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    trainable = {name: param.detach() for name, param in params.items()}
    totals = {name: torch.zeros_like(param) for name, param in params.items()}
    count = 0
    with eval_mode(model), warnings.catch_warnings():
        # vmap has no batching rule for the fused LSTM/GRU and CPU attention kernels and falls
        # back to a loop, correctly; its "performance drop" warning is noise for a user.
        warnings.filterwarnings("ignore", message="There is a performance drop")
        for inputs, targets in batches:
            for start in range(0, len(targets), _FISHER_CHUNK):
                x = inputs[start:start + _FISHER_CHUNK].to(device)
                y = targets[start:start + _FISHER_CHUNK].to(device)
                grads = per_sample_grad(trainable, x, y)
                for name in totals:
                    totals[name] += grads[name].pow(2).sum(dim=0)
                count += len(y)
    return {name: total / count for name, total in totals.items()}


def hutchinson_diagonal(model: nn.Module, batches: Iterable[Batch], names: Sequence[str],
                        probes: int = 1, seed: int = 0) -> Scores:
    """Hutchinson's estimate of the Hessian diagonal, ``E[z ⊙ Hz]`` with Rademacher ``z``.

    ``Hz`` is a Hessian-vector product by double back-propagation; ``probes`` vectors are drawn
    per calibration batch. The result is an unbiased but noisy estimate that may be negative
    where off-diagonal terms dominate; :func:`hessian_scores` uses its magnitude.
    """
    batches = list(batches)
    _require_batches(batches, "the Hutchinson Hessian estimate")
    if probes < 1:
        raise NnzipError(f"Hutchinson needs at least one probe vector, got {probes}")
    params = _parameters(model, names)
    tensors = list(params.values())
    device = tensors[0].device
    generator = torch.Generator().manual_seed(seed)
    totals = {name: torch.zeros_like(param) for name, param in params.items()}
    with eval_mode(model):
        for inputs, targets in batches:
            loss = task_loss(model(inputs.to(device)), targets.to(device))
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            for _ in range(probes):
                probe = [(torch.randint(0, 2, t.shape, generator=generator) * 2 - 1)
                         .to(device=device, dtype=t.dtype) for t in tensors]
                hvp = torch.autograd.grad(grads, tensors, grad_outputs=probe, retain_graph=True)
                for name, z, hz in zip(params, probe, hvp, strict=True):
                    totals[name] += z * hz.detach()
    samples = len(batches) * probes
    return {name: total / samples for name, total in totals.items()}


def hessian_scores(model: nn.Module, batches: Iterable[Batch], names: Sequence[str],
                   method: HessianMethod = "fisher", seed: int = 0) -> Scores:
    """Optimal Brain Damage saliency ``½ · H_ii · w²`` (LeCun et al. 1990).

    ``method`` picks the Hessian diagonal: ``"fisher"`` (empirical Fisher, always ≥ 0) or
    ``"hutchinson"`` (its absolute value: with few probes the sign is mostly noise). A weight that
    is already zero scores exactly zero.
    """
    if method == "fisher":
        diagonal = fisher_diagonal(model, batches, names)
    elif method == "hutchinson":
        diagonal = {name: h.abs() for name, h in
                    hutchinson_diagonal(model, batches, names, seed=seed).items()}
    else:
        raise NnzipError(f"unknown Hessian estimate {method!r}: use 'fisher' or 'hutchinson'")
    params = _parameters(model, names)
    return {name: 0.5 * diagonal[name] * params[name].detach().pow(2) for name in names}


def importance_scores(model: nn.Module, criterion: Criterion, names: Sequence[str], *,
                      batches: Sequence[Batch] | None = None, hessian: HessianMethod = "fisher",
                      seed: int = 0) -> Scores:
    """Scores of ``names`` under ``criterion``; taylor and hessian need calibration ``batches``."""
    if criterion in ("magnitude", "l1"):
        return magnitude_scores(model, names, p=1)
    if criterion == "l2":
        return magnitude_scores(model, names, p=2)
    if criterion == "random":
        return random_scores(model, names, seed=seed)
    if criterion in DATA_CRITERIA and batches is None:
        raise NnzipError(f"criterion {criterion!r} needs calibration data: pass batches (or "
                         "data=) or use criterion 'magnitude'")
    if criterion == "taylor":
        return taylor_scores(model, batches, names)
    if criterion == "hessian":
        return hessian_scores(model, batches, names, method=hessian, seed=seed)
    raise NnzipError(f"unknown pruning criterion {criterion!r}: use one of {', '.join(CRITERIA)}")


def channel_scores(score: torch.Tensor, reduce: ChannelReduce = "l2") -> torch.Tensor:
    """One score per output channel / neuron: ``score`` reduced over every dim but the first.

    Pass a weight for norm-based channel importance (``"l1"``: Li et al. 2017, "Pruning Filters for
    Efficient ConvNets"; ``"l2"``) or an element-wise score (Taylor, OBD) with ``"sum"`` or
    ``"mean"`` (Molchanov et al. 2019 sum the element-wise contributions of a filter).
    """
    if score.dim() == 0:
        raise NnzipError("channel_scores needs a tensor with a channel dimension, got a scalar")
    flat = score.detach().reshape(score.shape[0], -1)
    if reduce == "l1":
        return flat.abs().sum(dim=1)
    if reduce == "l2":
        return flat.pow(2).sum(dim=1).sqrt()
    if reduce == "sum":
        return flat.sum(dim=1)
    if reduce == "mean":
        return flat.mean(dim=1)
    if reduce == "max":
        return flat.amax(dim=1)
    raise NnzipError(f"unknown channel reduction {reduce!r}: use l1, l2, sum, mean or max")
