"""Mixed precision: per-layer weight bits chosen from measured sensitivity under a size budget.

Three plain functions, one per step:

1. :func:`bit_sensitivity` quantizes the weights of **one layer at a time** to each candidate
   bit width, every other layer in float, and measures on held-out batches how far the output
   moves from the float model: the KL divergence of the softmax outputs (ZeroQ, Cai et al. 2020,
   "ZeroQ: A Novel Zero Shot Quantization Framework", Sec. 3.3) and, where labels are given, the
   accuracy drop.
2. :func:`allocate_bits` picks one bit width per layer minimising the summed sensitivity under a
   budget of average weight bits or packed weight bytes: a multiple-choice knapsack, solved
   exactly as a small integer linear program (as in HAWQ-V3, Yao et al. 2021, Sec. 3.4).
3. :func:`quantize_mixed` chains both and quantizes with :func:`quantize_static`, each layer at
   its bits (``QuantConfig.layer_bits``).

Why summed per-layer KL is the objective: for small weight perturbations δ the KL divergence of
the outputs is ≈ ½ δᵀFδ (F the Fisher information), which splits into per-layer terms when the
cross-layer blocks are ignored: the same block-diagonal approximation HAWQ makes with Hessian
traces, but measured directly rather than estimated. Accuracy on a validation split moves in
steps of 1/N and is flat (zero drop) for most layers at 4 bits and more, so as an objective it
would leave the allocation to ties; it is recorded alongside for the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from nnzip.codec.bitpack import packed_bytes
from nnzip.core.coverage import MethodResult
from nnzip.core.modes import eval_mode
from nnzip.errors import NnzipError
from nnzip.quant.affine import dequantize, quantize
from nnzip.quant.modules import weight_qparams
from nnzip.quant.ptq import QuantConfig, selected_weights, static_quantization

#: Bit widths each layer is tried at by default: 8 is near lossless, 2 rarely is.
DEFAULT_CANDIDATE_BITS: tuple[int, ...] = (2, 3, 4, 8)
#: {layer: {bits: value}}, e.g. the KL divergence with that layer alone at that many bits.
BitTable = dict[str, dict[int, float]]


@dataclass(frozen=True)
class BitSensitivity:
    """What :func:`bit_sensitivity` measured, per quantizable layer and candidate bit width.

    ``kl``: mean KL(float ‖ quantized) of the softmax outputs, in nats per sample: the objective.
    ``accuracy_drop``: float accuracy minus accuracy with the layer quantized (empty without
    labels). ``params``: weight elements per layer, what the budget counts.
    """

    kl: BitTable
    accuracy_drop: BitTable
    params: dict[str, int]
    reference_accuracy: float | None


def check_candidate_bits(candidate_bits: Iterable[int]) -> tuple[int, ...]:
    """Candidate bit widths, sorted and unique; each from 2 to 8 (the affine schemes)."""
    bits = sorted(set(candidate_bits))
    if not bits:
        raise NnzipError("candidate_bits is empty: pass the bit widths to choose from, e.g. "
                         "[2, 4, 8]")
    wrong = [b for b in bits if not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8]
    if wrong:
        raise NnzipError(f"candidate bits {wrong} are not integers from 2 to 8: affine weight "
                         "quantization supports 2..8 bits, e.g. [2, 4, 8]")
    return tuple(bits)


def _split_batches(batches: Iterable) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    inputs, targets = [], []
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            inputs.append(batch[0])
            targets.append(batch[1] if len(batch) > 1 else None)
        else:
            inputs.append(batch)
            targets.append(None)
    if not inputs:
        raise NnzipError("bit_sensitivity needs held-out batches to measure on: pass e.g. the "
                         "validation split as a list of (inputs, targets) batches")
    labelled = all(t is not None for t in targets)
    return inputs, torch.cat(targets) if labelled else None


def _logits(model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(x).float() for x in inputs])


def output_kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(reference) ‖ softmax(logits)), in nats; a sequence
    model's outputs (N, L, classes) count each position as a sample."""
    logits, reference = (t.reshape(-1, t.shape[-1]) for t in (logits, reference))
    return float(F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(reference, dim=1),
                          reduction="batchmean", log_target=True).clamp(min=0.0))


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    # Classes are the last dimension: (N, classes), or (N, L, classes) with (N, L) labels.
    return float((logits.argmax(dim=-1) == targets).float().mean())


def bit_sensitivity(model: nn.Module, batches: Iterable,
                    candidate_bits: Iterable[int] = DEFAULT_CANDIDATE_BITS,
                    config: QuantConfig | None = None, *, progress: bool = False
                    ) -> BitSensitivity:
    """Damage of quantizing each layer's weights alone to each candidate bit width.

    ``batches`` are held-out data (the validation split; (inputs, targets) pairs, or bare inputs
    to skip the accuracy column). Weights are quantized as ``config`` says (granularity, weight
    range; BatchNorm folded first) and the output is compared with the float (folded) model.

    Activations stay in float here, whatever ``config.activation_bits``: activation quantization
    is the same for every weight choice, so it would add one constant per layer to every
    candidate and not change the allocation, while costing a calibration per measurement. The
    model passed in is not changed.
    """
    config = config or QuantConfig()
    bits = check_candidate_bits(candidate_bits)
    inputs, targets = _split_batches(batches)
    # The folded, unfused weights are what quantize_static rounds, so they are what is measured.
    target, weights = selected_weights(model, config)
    names = list(weights)
    reference = _logits(target, inputs)
    reference_accuracy = None if targets is None else _accuracy(reference, targets)
    kl: BitTable = {}
    drop: BitTable = {}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[layer]}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("bit sensitivity", total=len(names) * len(bits), layer="")
        for name in names:
            weight = weights[name]
            original = weight.detach().clone()
            kl[name], drop[name] = {}, {}
            try:
                for width in bits:
                    qparams = weight_qparams(original, config.weight_scheme(width),
                                             config.weight_range)
                    with torch.no_grad():
                        weight.copy_(dequantize(quantize(original, qparams), qparams))
                    logits = _logits(target, inputs)
                    kl[name][width] = output_kl(reference, logits)
                    if targets is not None:
                        drop[name][width] = reference_accuracy - _accuracy(logits, targets)
                    bar.update(task, advance=1, layer=f"{name} @ {width} bits")
            finally:
                with torch.no_grad():
                    weight.copy_(original)
    params = {name: weights[name].numel() for name in names}
    return BitSensitivity(kl=kl, accuracy_drop=drop if targets is not None else {},
                          params=params, reference_accuracy=reference_accuracy)


def mean_weight_bits(layer_bits: Mapping[str, int], layer_params: Mapping[str, int]) -> float:
    """Mean weight bits, weighted by each layer's number of weights."""
    total = sum(layer_params[name] for name in layer_bits)
    bits = sum(layer_params[name] * width for name, width in layer_bits.items())
    return bits / total if total else math.nan


def packed_weight_bytes(layer_bits: Mapping[str, int], layer_params: Mapping[str, int]) -> int:
    """Bytes of the bit-packed integer weights (scales, biases and headers not included)."""
    return sum(packed_bytes(layer_params[name], bits) for name, bits in layer_bits.items())


def _budget(average: float | None, size: float | None) -> tuple[str, float]:
    if (average is None) == (size is None):
        raise NnzipError("give exactly one budget: average_bits (mean weight bits, e.g. 4.0) or "
                         "weight_bytes (packed weight bytes)")
    if average is not None:
        if not average > 0:
            raise NnzipError(f"average_bits must be positive, got {average}")
        return "average_bits", float(average)
    if not size > 0:
        raise NnzipError(f"weight_bytes must be positive, got {size}")
    return "weight_bytes", float(size)


def allocate_bits(sensitivity: Mapping[str, Mapping[int, float]],
                  layer_params: Mapping[str, int], *, average_bits: float | None = None,
                  weight_bytes: float | None = None) -> dict[str, int]:
    """One bit width per layer minimising the summed sensitivity within the budget. Exact.

    ``sensitivity`` maps each layer to {candidate bits: damage} (e.g. ``BitSensitivity.kl``; a
    layer with one candidate is pinned to it). The budget is exactly one of ``average_bits``
    (parameter-weighted mean) or ``weight_bytes`` (bit-packed integer weights, rounded up to
    whole bytes per layer as they are stored). The choice is a multiple-choice knapsack: binary
    x[l, b], one per layer, Σ cost·x ≤ budget, solved to optimality (zero gap) with HiGHS via
    :func:`scipy.optimize.milp`. Budget the optimum leaves over then raises layers to more bits
    wherever that does not raise their measured sensitivity (ties, and gaps below the solver's
    tolerance), so a budget of 8 bits gives every layer 8 unless fewer bits measured better.

    The measured values are used as they are, not forced to fall with more bits: an inversion
    (e.g. min-max ranges at 4 bits worse than at 3) is what that layer really does.
    """
    # Imported here: scipy.optimize is slow to import and only the allocation needs it.
    from scipy.optimize import Bounds, LinearConstraint, milp

    kind, budget = _budget(average_bits, weight_bytes)
    names = list(sensitivity)
    if not names:
        raise NnzipError("no layer to allocate bits to: the sensitivity table is empty")
    missing = [name for name in names if name not in layer_params]
    if missing:
        raise NnzipError(f"no parameter count for {missing}: pass layer_params for every layer")
    empty = [name for name in names if not sensitivity[name]]
    if empty:
        raise NnzipError(f"layers {empty} have no candidate bit width: measure them first")
    costs = {name: {int(bits): float(value) for bits, value in sensitivity[name].items()}
             for name in names}
    broken = sorted(name for name in names if not all(map(math.isfinite, costs[name].values())))
    if broken:
        raise NnzipError(f"layers {broken} have a sensitivity that is not a finite number: "
                         "measure again on batches the model handles (no NaN outputs)")

    def cost(name: str, bits: int) -> int:
        count = layer_params[name]
        return count * bits if kind == "average_bits" else packed_bytes(count, bits)

    total_params = sum(layer_params[name] for name in names)
    capacity = budget * total_params if kind == "average_bits" else budget
    cheapest = {name: min(costs[name]) for name in names}
    floor = sum(cost(name, bits) for name, bits in cheapest.items())
    if floor > capacity + 1e-9 * max(1.0, capacity):
        smallest = (f"{floor / total_params:.3f} average bits" if kind == "average_bits"
                    else f"{floor} weight bytes")
        raise NnzipError(f"the budget {kind} = {budget:g} is below the smallest achievable, "
                         f"{smallest} (every layer at its fewest candidate bits): raise the "
                         "budget or add a smaller bit width to candidate_bits")

    options = [(name, bits) for name in names for bits in sorted(costs[name])]
    objective = np.array([costs[name][bits] for name, bits in options], dtype=float)
    weights = np.array([cost(name, bits) for name, bits in options], dtype=float)
    one_per_layer = np.array([[1.0 if option[0] == name else 0.0 for option in options]
                              for name in names])
    result = milp(objective, integrality=np.ones(len(options)), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(one_per_layer, 1, 1),
                               LinearConstraint(weights[None, :], -np.inf, capacity)],
                  options={"mip_rel_gap": 0.0})
    if not result.success:  # a feasible, bounded problem: this would be a solver failure
        raise NnzipError(f"the bit allocation found no solution ({result.message}): report "
                         "this with the sensitivity table")
    chosen = {name: bits for (name, bits), x in zip(options, result.x, strict=True) if x > 0.5}
    return _fill(chosen, costs, cost, capacity)


def _fill(chosen: dict[str, int], costs: Mapping[str, Mapping[int, float]], cost,
          capacity: float) -> dict[str, int]:
    """Spend budget the optimum left over on more bits where the layer's damage does not rise.

    Such an upgrade keeps the optimum; the most sensitive layers (at their bits) go first.
    """
    used = sum(cost(name, bits) for name, bits in chosen.items())
    for name in sorted(chosen, key=lambda n: -costs[n][chosen[n]]):
        for bits in sorted(costs[name], reverse=True):
            if bits <= chosen[name]:
                break
            extra = cost(name, bits) - cost(name, chosen[name])
            if costs[name][bits] <= costs[name][chosen[name]] and used + extra <= capacity:
                used += extra
                chosen[name] = bits
                break
    return chosen


@dataclass(frozen=True)
class MixedPrecisionPlan:
    """The measured sensitivity and the bits chosen from it."""

    sensitivity: BitSensitivity
    layer_bits: dict[str, int]

    @property
    def average_bits(self) -> float:
        return mean_weight_bits(self.layer_bits, self.sensitivity.params)

    @property
    def weight_bytes(self) -> int:
        return packed_weight_bytes(self.layer_bits, self.sensitivity.params)


def quantize_mixed(model: nn.Module, calibration: Iterable, validation: Sequence,
                   *, average_bits: float | None = None, weight_bytes: float | None = None,
                   candidate_bits: Iterable[int] = DEFAULT_CANDIDATE_BITS,
                   config: QuantConfig | None = None, progress: bool = False
                   ) -> tuple[nn.Module, MixedPrecisionPlan]:
    """Static PTQ with per-layer weight bits chosen under a budget.

    ``validation`` (held-out batches) measures :func:`bit_sensitivity`; :func:`allocate_bits`
    chooses the bits; ``calibration`` (training batches) calibrates activations as
    :func:`quantize_static` does. ``config.layer_bits`` pins named layers to their bits (they
    count against the budget); ``config.weight_bits`` is not used.
    """
    result = mixed_precision(model, calibration, validation, average_bits=average_bits,
                             weight_bytes=weight_bytes, candidate_bits=candidate_bits,
                             config=config, progress=progress)
    return result.model, result.details["plan"]


def mixed_precision(model: nn.Module, calibration: Iterable, validation: Sequence,
                    *, average_bits: float | None = None, weight_bytes: float | None = None,
                    candidate_bits: Iterable[int] = DEFAULT_CANDIDATE_BITS,
                    config: QuantConfig | None = None, progress: bool = False
                    ) -> MethodResult:
    """:func:`quantize_mixed` as a :class:`~nnzip.core.MethodResult` (``details["plan"]`` is the
    :class:`MixedPrecisionPlan`; the coverage gives each weight's chosen bits)."""
    config = config or QuantConfig()
    sensitivity = bit_sensitivity(model, validation, candidate_bits, config, progress=progress)
    pinned = dict(config.layer_bits)
    table = {name: ({pinned[name]: 0.0} if name in pinned else curve)
             for name, curve in sensitivity.kl.items()}
    layer_bits = allocate_bits(table, sensitivity.params, average_bits=average_bits,
                               weight_bytes=weight_bytes)
    result = static_quantization(model, calibration, replace(config, layer_bits=layer_bits))
    plan = MixedPrecisionPlan(sensitivity=sensitivity, layer_bits=layer_bits)
    coverage = replace(result.coverage, method="mixed_precision")
    return MethodResult(result.model, coverage, {**result.details, "plan": plan})
