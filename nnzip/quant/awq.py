"""AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression
and Acceleration", MLSys): protect the weights that meet large activations before rounding them.

In weight-only quantization a few input channels matter far more than the others: those whose
activations are large. Multiplying weight column j by s_j > 1 before rounding and dividing input
channel j by s_j changes nothing in float, but shrinks that column's relative rounding error
(its values take more of the grid). AWQ takes one scale per input channel from the mean
activation magnitude,

    s_j = mean|x_j|^α,   normalised by sqrt(max s · min s),

and grid-searches α ∈ {0, 1/n, …, (n−1)/n} (n = 20 in the paper) per layer for the smallest
output error on calibration inputs, ‖Q(W·diag(s))·(x/s) − W·x‖² (α = 0 is plain rounding to
nearest, so the search never does worse than RTN on those inputs; a layer that chooses it is
left unscaled).

Where the division can go is the graph's business. When a Linear's input is exactly the output
of a LayerNorm / RMSNorm (GPT-2's ``ln_1`` → ``c_attn`` and ``ln_2`` → ``c_fc``) or of another
Linear, 1/s is folded into that module's scale and bias (rows): the quantized model costs nothing
extra. Each fold is checked on a calibration sample: the float model's output must not move
(a post-LayerNorm encoder such as BERT also uses the LayerNorm's output as its residual, so
folding there would change the function; the check catches it). Otherwise (after an activation
function, behind the attention's head merge) s stays with the layer as a per-input-channel factor
(:meth:`~nnzip.quant.modules.QuantizedLayer.smooth`, the same mechanism as SmoothQuant): one
multiply per input at run time. Linear layers sharing one input (query, key and value) share one
s, searched on their summed error.

Not done here: AWQ's second step, the search for a clipping range per group (nnzip's
``weight_range: mse`` is a related option), and folding into the value projection through the
attention (the paper's v → o pairing). Weight-only only: with quantized activations the
division would have to happen before the activation is quantized (that is SmoothQuant).

Used through ``quantize`` with ``awq: true`` (``activation_bits: null``), with rounding to
nearest or ``rounding: gptq``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnzip.core.capture import batch_inputs, feed_layers, run_batch
from nnzip.core.modes import attention_fast_path_off, eval_mode
from nnzip.data.splits import require_batches
from nnzip.errors import NnzipError
from nnzip.quant.affine import QScheme, dequantize, quantize
from nnzip.quant.modules import QuantizedLayer, WeightRange, quantized_layers, weight_qparams
from nnzip.quant.parametrized import quantized_weights

#: The paper's grid: α = 0, 0.05, ..., 0.95.
DEFAULT_GRID = 20
#: Calibration rows (tokens) per layer the α search measures the output error on; the mean
#: activation magnitude uses every row.
DEFAULT_SEARCH_ROWS = 4096
#: Smallest mean activation raised to α (the paper's clamp), so a dead channel keeps a scale.
MIN_ACTIVATION = 1e-4
#: A fold may move the float model's output by this much, relative to its largest magnitude.
FOLD_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ScaleSearch:
    """The α a group of layers chose, its per-channel scales and the output errors."""

    alpha: float
    scales: torch.Tensor
    error: float
    rtn_error: float

    @property
    def error_ratio(self) -> float:
        """AWQ's output error over plain rounding's (≤ 1 on the calibration rows)."""
        return self.error / self.rtn_error if self.rtn_error > 0 else 1.0


def activation_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^α per input channel, divided by sqrt(max s · min s) (as in the paper's code,
    so the scales straddle 1 and the weight's range does not drift)."""
    scales = mean_abs.float().clamp(min=MIN_ACTIVATION).pow(alpha)
    return scales / (scales.max() * scales.min()).sqrt()


def rounded(weight: torch.Tensor, scheme: QScheme,
            weight_range: WeightRange = "minmax") -> torch.Tensor:
    """The weight rounded to nearest on ``scheme``'s grid, back in float."""
    qparams = weight_qparams(weight, scheme, weight_range)
    return dequantize(quantize(weight, qparams), qparams)


def scaled_output_error(weights: Sequence[torch.Tensor], inputs: torch.Tensor,
                        scales: torch.Tensor, schemes: Sequence[QScheme],
                        weight_ranges: Sequence[WeightRange]) -> float:
    """Σ over the layers of mean((x/s)·Q(W·diag(s))ᵀ − x·Wᵀ)² on the rows of ``inputs`` (the
    bias cancels)."""
    total = 0.0
    scaled_inputs = inputs / scales
    for weight, scheme, weight_range in zip(weights, schemes, weight_ranges, strict=True):
        exact = inputs @ weight.T
        approximate = scaled_inputs @ rounded(weight * scales, scheme, weight_range).T
        total += float((approximate - exact).pow(2).mean())
    return total


def search_scales(weights: Sequence[torch.Tensor], inputs: torch.Tensor,
                  mean_abs: torch.Tensor, schemes: Sequence[QScheme],
                  weight_ranges: Sequence[WeightRange] | None = None,
                  grid: int = DEFAULT_GRID) -> ScaleSearch:
    """The α of the grid (0, 1/grid, …) whose scales give the smallest output error of
    ``weights`` (each (out, in), sharing the input rows ``inputs`` (rows, in))."""
    if grid < 1:
        raise NnzipError(f"the AWQ grid needs at least one point, got {grid}")
    weights = [w.detach().float() for w in weights]
    inputs = inputs.detach().float()
    weight_ranges = list(weight_ranges or ["minmax"] * len(weights))
    best: ScaleSearch | None = None
    rtn_error = math.nan
    for step in range(grid):
        alpha = step / grid
        scales = activation_scales(mean_abs, alpha)
        error = scaled_output_error(weights, inputs, scales, schemes, weight_ranges)
        if step == 0:
            rtn_error = error
        if best is None or error < best.error:
            best = ScaleSearch(alpha, scales, error, rtn_error)
    return ScaleSearch(best.alpha, best.scales, best.error, rtn_error)


class _Statistics:
    """Mean |x| per input channel over every calibration row, and a sample of rows."""

    def __init__(self, rows_per_batch: int) -> None:
        self.rows_per_batch = rows_per_batch
        self.abs_sum: torch.Tensor | None = None
        self.rows = 0
        self.sample: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        total = rows.abs().sum(dim=0)
        self.abs_sum = total if self.abs_sum is None else self.abs_sum + total
        self.rows += rows.shape[0]
        # Evenly spaced rows: deterministic, and spread over positions and sequences.
        take = torch.linspace(0, rows.shape[0] - 1, min(self.rows_per_batch, rows.shape[0]))
        self.sample.append(rows[take.round().long()].cpu())

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / self.rows).cpu()


def _is_norm(module: nn.Module) -> bool:
    """A LayerNorm / RMSNorm with a per-channel scale: out = normalised(x) · weight (+ bias)."""
    named = type(module).__name__.endswith(("LayerNorm", "RMSNorm"))
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.LayerNorm | nn.RMSNorm) or named) \
        and isinstance(weight, nn.Parameter) and weight.dim() == 1


def _producer_params(module: nn.Module) -> list[tuple[str, nn.Parameter]] | None:
    """The parameters a fold divides by s (a norm's scale and bias, a Linear's rows and bias),
    or None when the module cannot take a fold."""
    if parametrize.is_parametrized(module):
        return None
    if isinstance(module, QuantizedLayer):
        # Its rows can take a fold until it is rounded (input factors act on its columns).
        module = module.layer if isinstance(module.layer, nn.Linear) \
            and module.weight_int is None else None
        prefix = "layer."
    else:
        prefix = ""
    if module is None or not (_is_norm(module) or isinstance(module, nn.Linear)):
        return None
    return [(prefix + name, param) for name, param in module.named_parameters(recurse=False)
            if name in ("weight", "bias")]


def _structure(model: nn.Module, layers: dict[str, QuantizedLayer], probe
               ) -> tuple[list[list[str]], dict[str, str], torch.Tensor]:
    """(groups of layers that read one input tensor, the module producing each group's input
    where it is a norm or a Linear, the model's float output on ``probe``)."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: list[tuple[str, torch.Tensor]] = []
    candidates = {name: module for name, module in model.named_modules()
                  if _producer_params(module) is not None}

    def on_input(name: str):
        def hook(_module, args):
            inputs.setdefault(name, args[0])  # held: ids of freed tensors are reused
        return hook

    def on_output(name: str):
        def hook(_module, _args, output):
            if isinstance(output, torch.Tensor):
                outputs.append((name, output))
        return hook

    handles = [layer.register_forward_pre_hook(on_input(name)) for name, layer in layers.items()]
    handles += [module.register_forward_hook(on_output(name))
                for name, module in candidates.items()]
    try:
        with eval_mode(model), torch.no_grad(), attention_fast_path_off():
            reference = run_batch(model, probe)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    for name in layers:
        if name not in inputs:
            continue
        group = next((g for g in groups if inputs[g[0]] is inputs[name]), None)
        if group is None:
            groups.append([name])
        else:
            group.append(name)
    producers = {}
    for group in groups:
        producer = next((name for name, output in outputs if output is inputs[group[0]]), None)
        if producer is not None and producer not in group:
            producers[group[0]] = producer
    return groups, producers, reference


def _close(output: torch.Tensor, reference: torch.Tensor) -> bool:
    limit = FOLD_TOLERANCE * float(reference.abs().max()) + 1e-6
    return bool((output - reference).abs().max() <= limit)


@torch.no_grad()
def _fold(model: nn.Module, producer: str, group: list[QuantizedLayer], scales: torch.Tensor,
          probe, reference: torch.Tensor) -> bool:
    """Divide ``producer``'s output by ``scales`` and multiply the group's weight columns by
    them; kept only if the float model's output on ``probe`` stays put."""
    params = _producer_params(model.get_submodule(producer))
    if params is None or any(p.shape[0] != scales.numel() for _, p in params):
        return False
    saved = [p.detach().clone() for _, p in params] + \
        [layer.layer.weight.detach().clone() for layer in group]
    for _, param in params:
        shape = (-1,) + (1,) * (param.dim() - 1)  # a Linear's rows, a norm's channels
        param.div_(scales.to(param.dtype).reshape(shape))
    for layer in group:
        layer.layer.weight.mul_(scales.to(layer.layer.weight.dtype))
    with eval_mode(model), attention_fast_path_off():
        output = run_batch(model, probe)
    if _close(output, reference):
        return True
    targets = [p for _, p in params] + [layer.layer.weight for layer in group]
    for target, value in zip(targets, saved, strict=True):
        target.copy_(value)
    return False


def _eligible(model: nn.Module) -> tuple[dict[str, QuantizedLayer], dict[str, str]]:
    layers, skipped = {}, {}
    for name, layer in quantized_layers(model).items():
        if not isinstance(layer.layer, nn.Linear):
            skipped[name] = f"AWQ scales the input channels of Linear layers, not " \
                            f"{type(layer.layer).__name__}"
        elif not isinstance(layer.weight_scheme, QScheme):
            skipped[name] = "AWQ searches scales for affine integer weights, not " \
                            f"{layer.weight_scheme.format}"
        elif layer.input_scheme is not None:
            skipped[name] = "AWQ is for weight-only quantization; this layer's input is " \
                            "quantized too"
        elif layer.weight_int is not None or layer.smoothing is not None:
            skipped[name] = "already rounded or scaled: AWQ runs before rounding"
        else:
            layers[name] = layer
    for name in quantized_weights(model):
        skipped[name] = ("weight-only through a parametrization (tied, fused or functional "
                         "weight): scaling its input channels would change its other users")
    return layers, skipped


def _first_samples(batch, count: int = 2):
    """The first ``count`` samples of a calibration batch, in the batch's own form."""
    if isinstance(batch, dict):
        return {key: value[:count] for key, value in batch.items()}
    return batch_inputs(batch)[:count]


def awq(model: nn.Module, batches: Iterable, *, grid: int = DEFAULT_GRID,
        search_rows: int = DEFAULT_SEARCH_ROWS, fold: bool = True) -> dict:
    """Scale the weight-only Linear QuantizedLayers of a prepared, not yet converted model, in
    place (see the module docstring); the float function is unchanged.

    ``batches``: calibration inputs (training data). Returns the details a report records:
    ``layers`` (per layer: the α chosen, the output error relative to rounding to nearest on
    the calibration rows, and where 1/s went; α = 0 scales nothing), ``folded`` (the modules
    that took a fold:
    ``{module: [layers]}``) and ``skipped`` (the quantized weights AWQ left, with why).
    """
    layers, skipped = _eligible(model)
    if not layers:
        raise NnzipError("AWQ found no weight-only Linear layer to scale: quantize with "
                         "activation_bits: null (weights only) and Linear layers selected")
    batches = require_batches(batches, "AWQ")
    modes = {name: layer.mode for name, layer in quantized_layers(model).items()}
    for layer in quantized_layers(model).values():
        layer.mode = "float"  # weight-only layers would round themselves at their first call
    try:
        rows_per_batch = max(1, -(-search_rows // len(batches)))
        statistics = {name: _Statistics(rows_per_batch) for name in layers}
        feed_layers(model, layers, batches, lambda name, x: statistics[name].add(x))
        probe = _first_samples(batches[0])
        groups, producers, reference = _structure(model, layers, probe)
        report: dict[str, dict] = {}
        folded: dict[str, list[str]] = {}
        for group in groups:
            first = statistics[group[0]]
            search = search_scales([layers[n].layer.weight for n in group],
                                   torch.cat(first.sample), first.mean_abs,
                                   [layers[n].weight_scheme for n in group],
                                   [layers[n].weight_range for n in group], grid)
            producer = producers.get(group[0]) if fold else None
            if search.alpha == 0:  # s = 1: nothing to fold, no factor to carry
                where = "none: rounding to nearest was best (α 0)"
            elif producer is not None and _fold(model, producer, [layers[n] for n in group],
                                                search.scales, probe, reference):
                folded[producer] = list(group)
                where = f"folded into {producer}"
            else:
                for name in group:
                    layers[name].smooth(search.scales)
                where = "kept as a per-input-channel factor of the layer"
            for name in group:
                report[name] = {"alpha": search.alpha,
                                "error_ratio": round(search.error_ratio, 6),
                                "scales": where,
                                **({"shared_with": [n for n in group if n != name]}
                                   if len(group) > 1 else {})}
    finally:
        for name, layer in quantized_layers(model).items():
            layer.mode = modes[name]
    return {"layers": report, "folded": folded, "skipped": skipped, "grid": grid}
