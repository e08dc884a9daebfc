"""Post-training quantization: static (calibrated activation ranges) and dynamic (per batch).

Static PTQ (Jacob et al. 2018; Nagel et al. 2021, "A White Paper on Neural Network
Quantization") in three steps, each a plain function:

1. :func:`prepare`: fold BatchNorm into the convolutions (the folded weights are what integer
   kernels run) and wrap every Conv/Linear in a :class:`QuantizedLayer` that observes its input;
2. :func:`calibrate`: run calibration batches (training data, never the test set);
3. :func:`convert`: fix every input range and round every weight to its integers.

At 4 bits four optional steps reduce what rounding to nearest loses (Nagel et al.
2019; Frantar et al. 2023; Lin et al. 2024), each its own module and switched on in
:class:`QuantConfig`: ``equalize`` (cross-layer equalization, after folding), ``awq``
(activation-aware scales of weight-only Linear layers, before rounding), ``rounding="gptq"``
(after convert) and ``bias_correction`` (last, so it corrects the final weights).

:func:`quantize_static` does all of it (:func:`static_ptq` also says what it did);
:func:`quantize_dynamic` is the one-call equivalent of PyTorch's
``torch.ao.quantization.quantize_dynamic`` for any model with Linear layers: int8 per-channel
weights, activation ranges computed from each batch at run time.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from nnzip.core.coverage import Coverage, MethodResult
from nnzip.core.modes import eval_mode, set_eval
from nnzip.errors import NnzipError
from nnzip.models.fold import fold_batchnorm
from nnzip.models.surgery import set_module
from nnzip.quant.affine import Granularity, QScheme
from nnzip.quant.attention import Unfused, unfuse_attention
from nnzip.quant.awq import DEFAULT_GRID, awq
from nnzip.quant.bias_correction import bias_correction
from nnzip.quant.coverage import quant_coverage
from nnzip.quant.equalize import cross_layer_equalization
from nnzip.quant.gptq import gptq
from nnzip.quant.lowbit import FIXED_BITS, WEIGHT_FORMATS, LowBitScheme, WeightFormat
from nnzip.quant.modules import (
    QUANTIZABLE,
    WEIGHT_ONLY,
    QuantizedLayer,
    WeightRange,
    WeightScheme,
    quantized_layers,
)
from nnzip.quant.observers import ObserverKind
from nnzip.quant.parametrized import WeightQuantizer, attach, quantized_weights
from nnzip.quant.plan import (
    EMBEDDING_LAYER,
    TENSOR,
    Plan,
    Target,
    bits_for,
    plan_targets,
    select,
)
from nnzip.quant.smooth import smooth_quant

Estimator = Literal["ste", "lsq"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how. Defaults: W8A8, per-channel symmetric weights, asymmetric
    unsigned per-tensor activations calibrated by min-max: the standard int8 CPU scheme.

    ``layer_bits`` overrides the weight bits of named layers (mixed precision); ``exclude`` keeps
    named layers in float; ``layers`` restricts quantization to the named layers (names, module
    prefixes or glob patterns, as every method selects layers; ``skip`` is ``exclude``'s old
    name). Names are
    module names of the layers wrapped (each ``nn.MultiheadAttention`` becomes ``q_proj``,
    ``k_proj``, ``v_proj`` and ``out_proj``) or parameter names of the tensors quantized
    weight-only (``rnn.weight_ih_l0``); module prefixes and glob patterns work too
    (:func:`nnzip.core.select_names`). See :mod:`nnzip.quant.plan` for what is quantized how.

    Better PTQ at low bits: ``equalize`` applies cross-layer equalization after folding
    BatchNorm; ``rounding="gptq"`` rounds Linear/Conv2d weights with GPTQ (``act_order``: columns
    by decreasing Hessian diagonal); ``bias_correction`` corrects each layer's mean output shift.
    GPTQ and bias correction reuse the calibration batches.

    ``weight_format`` picks affine integers or a low-bit format of :mod:`nnzip.quant.lowbit`:
    ``binary`` (1 bit) and ``ternary`` (2 bits) imply their width and ignore ``weight_bits``;
    ``pow2`` uses ``weight_bits`` (2–8). ``weight_bits=1`` (or a layer_bits entry of 1) with
    affine weights means binary. ``estimator`` is how QAT trains through the rounding: the
    straight-through estimator with scales from the weights (``ste``), or learned step sizes
    (``lsq``, QAT only).

    Transformers: ``embedding_bits`` also quantizes every ``nn.Embedding`` table, weight-only
    with one scale per row (they stay float by default); ``smoothquant_alpha`` (0.5 in Xiao et
    al. 2023) migrates activation outliers into the Linear weights before calibration
    (:mod:`nnzip.quant.smooth`), of every Linear with quantized inputs or of the named
    ``smoothquant_layers`` only (the paper smooths the layers fed by a LayerNorm: Q, K, V, FC1).

    Weight-only at low bits: ``awq`` (Lin et al. 2024, :mod:`nnzip.quant.awq`) scales the input
    channels of every weight-only Linear by mean|x|^α, α searched on ``awq_grid`` points for the
    smallest output error on the calibration batches, before rounding (to nearest or GPTQ); the
    scales are folded into the LayerNorm or Linear before where the float function allows it.
    """

    weight_bits: int = 8
    activation_bits: int | None = 8
    weight_granularity: Granularity = "channel"
    group_size: int | None = None
    activation_symmetric: bool = False
    observer: ObserverKind = "minmax"
    observer_options: dict = field(default_factory=dict)
    weight_range: WeightRange = "minmax"
    layer_bits: dict[str, int] = field(default_factory=dict)
    exclude: Sequence[str] = ()
    layers: Sequence[str] | None = None
    #: The old name of ``exclude`` (still accepted, with a warning).
    skip: Sequence[str] = ()
    fold_batchnorm: bool = True
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE
    equalize: bool = False
    bias_correction: bool = False
    rounding: Literal["nearest", "gptq"] = "nearest"
    act_order: bool = False
    weight_format: WeightFormat = "affine"
    estimator: Estimator = "ste"
    embedding_bits: int | None = None
    smoothquant_alpha: float | None = None
    smoothquant_layers: Sequence[str] | None = None
    awq: bool = False
    awq_grid: int = DEFAULT_GRID

    def _check_rounding(self) -> None:
        if self.rounding not in ("nearest", "gptq"):
            raise NnzipError(f"rounding must be 'nearest' or 'gptq', got {self.rounding!r}")
        if self.act_order and self.rounding != "gptq":
            raise NnzipError("act_order is a GPTQ option: set rounding='gptq' or drop act_order")
        if self.equalize and not self.fold_batchnorm:
            raise NnzipError("equalize needs fold_batchnorm=True: a BatchNorm between two "
                             "layers hides the pair from cross-layer equalization")
        if self.rounding == "gptq" and self.weight_format != "affine":
            raise NnzipError(f"GPTQ rounds to affine integers, not {self.weight_format} "
                             "weights: use rounding 'nearest' or weight_format 'affine'")

    def __post_init__(self) -> None:
        if self.skip:
            if self.exclude:
                raise NnzipError("give 'exclude' only: 'skip' is its old name")
            log.warning("QuantConfig: 'skip' is now called 'exclude' (the layer selection every "
                        "method shares); using it as exclude")
            object.__setattr__(self, "exclude", tuple(self.skip))
            object.__setattr__(self, "skip", ())
        self._check_formats()
        self._check_rounding()
        self._check_transformer_options()

    def _check_transformer_options(self) -> None:
        if self.embedding_bits is not None and (not isinstance(self.embedding_bits, int)
                                                or not 2 <= self.embedding_bits <= 8):
            raise NnzipError(f"embedding_bits must be an integer from 2 to 8 (or None to keep "
                             f"embeddings in float), got {self.embedding_bits!r}")
        alpha = self.smoothquant_alpha
        if alpha is not None:
            if not 0.0 < alpha < 1.0:
                raise NnzipError(f"smoothquant_alpha must lie strictly between 0 and 1 (0.5 is "
                                 f"the paper's default), got {alpha!r}")
            if self.smoothquant_layers is not None and not self.smoothquant_layers:
                raise NnzipError("smoothquant_layers is empty: name layers, or leave it at None "
                                 "to smooth every Linear")
            if self.activation_bits is None:
                raise NnzipError("SmoothQuant eases activation quantization: it needs "
                                 "activation_bits (W8A8), not weight-only quantization")
        if self.awq:
            if self.activation_bits is not None:
                raise NnzipError(f"AWQ scales weight-only quantization: set activation_bits to "
                                 f"None (got {self.activation_bits}); for quantized "
                                 "activations use smoothquant_alpha")
            if self.weight_format != "affine":
                raise NnzipError(f"AWQ searches scales for affine integer weights, not "
                                 f"{self.weight_format}: use weight_format 'affine'")
        if not isinstance(self.awq_grid, int) or self.awq_grid < 2:
            raise NnzipError(f"awq_grid is the number of α values tried (20 in the paper), at "
                             f"least 2, got {self.awq_grid!r}")

    def _check_formats(self) -> None:
        for name, bits in {"weight_bits": self.weight_bits, **{
                f"layer_bits[{layer!r}]": b for layer, b in self.layer_bits.items()}}.items():
            if not isinstance(bits, int) or not 1 <= bits <= 8:
                raise NnzipError(f"{name} must be an integer from 1 to 8 (1 is binary), got "
                                 f"{bits!r}")
        if self.weight_format not in WEIGHT_FORMATS:
            raise NnzipError(f"weight_format must be one of {', '.join(WEIGHT_FORMATS)}, got "
                             f"{self.weight_format!r}")
        if self.estimator not in ("ste", "lsq"):
            raise NnzipError(f"estimator must be 'ste' or 'lsq', got {self.estimator!r}")
        if self.weight_format in FIXED_BITS and self.layer_bits:
            raise NnzipError(f"{self.weight_format} weights have a fixed width, so layer_bits "
                             "cannot change it: use exclude to keep layers in float, or "
                             "weight_format 'affine' with layer_bits {name: 1} for binary layers")
        if self.weight_format != "affine" and self.weight_granularity != "channel":
            raise NnzipError(f"{self.weight_format} weights have one scale per output channel: "
                             "leave weight_granularity at 'channel'")
        if self.weight_format != "affine" and self.weight_range != "minmax":
            raise NnzipError(f"weight_range {self.weight_range!r} searches affine ranges; "
                             f"{self.weight_format} weights have their own scale: use 'minmax'")
        if self.weight_format == "pow2":
            for bits in (self.weight_bits, *self.layer_bits.values()):
                LowBitScheme("pow2", bits)  # says pow2 needs 2 to 8 bits
        if self.estimator == "lsq" and self.weight_format == "pow2":
            raise NnzipError("LSQ learns a real-valued step, which would break pow2's exact "
                             "powers of two: train pow2 weights with estimator 'ste'")
        self.weight_scheme()  # the scheme's own checks (granularity 'group' needs group_size)

    def weight_scheme(self, bits: int | None = None) -> WeightScheme:
        """The scheme of a layer's weight; ``bits`` overrides ``weight_bits`` (layer_bits)."""
        bits = bits or self.weight_bits
        if self.weight_format in FIXED_BITS:
            return LowBitScheme(self.weight_format)
        if self.weight_format == "pow2":
            return LowBitScheme("pow2", bits)
        if bits == 1:
            return LowBitScheme("binary")
        return QScheme(bits=bits, symmetric=True, signed=True,
                       granularity=self.weight_granularity, group_size=self.group_size)

    def input_scheme(self) -> QScheme | None:
        if self.activation_bits is None:
            return None
        return QScheme(bits=self.activation_bits, symmetric=self.activation_symmetric,
                       signed=self.activation_symmetric)


def quantizable_layers(model: nn.Module,
                       layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE) -> list[str]:
    """Names of the layers nnzip can quantize (Linear, Conv1d/2d/3d by default)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, layer_types) and not isinstance(module, QuantizedLayer)]


def _plan(model: nn.Module, config: QuantConfig,
          refused: Mapping[str, str] | None = None) -> Plan:
    """The targets of ``model`` (a float model: attention already unfused) that ``config``
    selects, and why every other weight is left (:mod:`nnzip.quant.plan`)."""
    plan = plan_targets(model, config.layer_types, config.embedding_bits, refused)
    if config.embedding_bits is not None and not any(
            isinstance(module, WEIGHT_ONLY) for module in model.modules()):
        raise NnzipError(f"embedding_bits is set but {type(model).__name__} has no nn.Embedding:"
                         " leave embedding_bits at None")
    return select(plan, config.layers, config.exclude, config.layer_bits,
                  model_name=type(model).__name__)


def selected_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    """The names ``config`` quantizes in ``model``: modules it wraps (``fc1``, and the
    ``q_proj``/``k_proj``/``v_proj``/``out_proj`` each ``nn.MultiheadAttention`` becomes) and
    weights it quantizes weight-only (``rnn.weight_ih_l0``); an unknown name is an error that
    lists the valid ones. Embeddings (``embedding_bits``) are not listed."""
    target = copy.deepcopy(model)
    refused = unfuse_attention(target).refused
    return [t.name for t in _plan(target, config, refused).selected if t.how != EMBEDDING_LAYER]


def selected_weights(model: nn.Module, config: QuantConfig
                     ) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """The float copy quantization starts from (:func:`float_copy`) and the weight tensor of
    every name :func:`selected_layers` gives, in it (embeddings not included)."""
    target, _, unfused = float_copy(model, config)
    plan = _plan(target, config, unfused.refused)
    return target, {t.name: t.weight.param for t in plan.selected if t.how != EMBEDDING_LAYER}


@dataclass
class Prepared:
    """A prepared copy and what preparing it did (for the coverage)."""

    model: nn.Module
    equalized_pairs: int
    plan: Plan
    unfused: Unfused
    #: What the coverage adds to a target's description (a scheme adapted to it), by name.
    notes: dict[str, str] = field(default_factory=dict)


def prepare(model: nn.Module, config: QuantConfig | None = None) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded (and layers equalized if the config says so),
    attention unfused into Linears, and every selected weight ready for calibration."""
    return _prepare(model, config or QuantConfig()).model


def float_copy(model: nn.Module, config: QuantConfig) -> tuple[nn.Module, int, Unfused]:
    """The float model quantization starts from: a copy, BatchNorm folded, layer pairs equalized
    if asked, every ``nn.MultiheadAttention`` as four Linears (same outputs)."""
    target = set_eval(copy.deepcopy(model))
    if config.fold_batchnorm and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                     for m in target.modules()):
        target = fold_batchnorm(target, inplace=True)
    pairs = cross_layer_equalization(target, inplace=True)[1] if config.equalize else 0
    # After folding and equalization, which trace the model (the unfused attention is not a
    # torch.nn leaf, nn.MultiheadAttention is).
    return target, pairs, unfuse_attention(target)


def _scheme_for(planned: Target, config: QuantConfig, notes: dict[str, str]) -> WeightScheme:
    """The target's weight scheme; per-group scales fall back to per-channel (with a note) for a
    weight whose rows the group size does not divide, rather than refusing the model."""
    scheme = config.weight_scheme(bits_for(planned, config.layer_bits))
    if isinstance(scheme, QScheme) and scheme.granularity == "group" \
            and planned.weight.input_length % scheme.group_size:
        notes[planned.name] = (f" (per-channel: group_size {scheme.group_size} does not divide "
                               f"its {planned.weight.input_length} inputs per output channel)")
        return dataclasses.replace(scheme, granularity="channel", group_size=None)
    return scheme


def _prepare(model: nn.Module, config: QuantConfig) -> Prepared:
    target, pairs, unfused = float_copy(model, config)
    plan = _plan(target, config, unfused.refused)
    notes: dict[str, str] = {}
    for planned in plan.selected:
        if planned.how == TENSOR:
            owners = [(target.get_submodule(name), attr) for name, attr in planned.weight.owners]
            attach(owners, WeightQuantizer(_scheme_for(planned, config, notes),
                                           config.weight_range, planned.reason))
            continue
        layer = target.get_submodule(planned.name)
        if planned.how == EMBEDDING_LAYER:
            scheme = QScheme(bits=config.embedding_bits, symmetric=True, signed=True,
                             granularity="channel")
            set_module(target, planned.name, QuantizedLayer(layer, scheme, None))
            continue
        if config.bias_correction and layer.bias is None:
            # Bias correction will give it one: create it now (zero, same function) so that
            # the corrected state dict loads into any model prepared with this config.
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0],
                                                  dtype=layer.weight.dtype))
        wrapped = QuantizedLayer(layer, _scheme_for(planned, config, notes), config.input_scheme(),
                                 observer=config.observer, weight_range=config.weight_range,
                                 observer_options=config.observer_options)
        set_module(target, planned.name, wrapped)
    return Prepared(target, pairs, plan, unfused, notes)


def calibrate(model: nn.Module, batches: Iterable) -> int:
    """Run ``batches`` (tensors or (inputs, targets) pairs) through a prepared model.

    Returns the number of samples seen; an empty iterable is an error.
    """
    samples = 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs)
            samples += len(inputs)
    if samples == 0:
        raise NnzipError("the calibration set is empty: pass at least one batch of training "
                         "inputs (e.g. nnzip.data.calibration_batches(data, 8))")
    return samples


def convert(model: nn.Module) -> nn.Module:
    """Freeze every QuantizedLayer (fixed input ranges, integer weights) and every weight-only
    quantized tensor (integer weights). In place."""
    layers = quantized_layers(model)
    tensors = quantized_weights(model)
    if not layers and not tensors:
        raise NnzipError("the model has no QuantizedLayer: call prepare() first")
    for layer in layers.values():
        layer.freeze()
    for quantizer, original in tensors.values():
        quantizer.freeze(original)
    return model


def quantize_static(model: nn.Module, batches: Iterable,
                    config: QuantConfig | None = None) -> nn.Module:
    """Static PTQ: a quantized copy of ``model`` calibrated on ``batches``."""
    return static_ptq(model, batches, config)[0]


def static_ptq(model: nn.Module, batches: Iterable,
               config: QuantConfig | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`quantize_static`, and what it did: calibration samples, pairs equalized, the
    layers GPTQ rounded, the largest bias correction per layer (JSON-ready, for reports)."""
    result = static_quantization(model, batches, config)
    return result.model, result.details


def static_quantization(model: nn.Module, batches: Iterable,
                        config: QuantConfig | None = None) -> MethodResult:
    """:func:`static_ptq` as a :class:`~nnzip.core.MethodResult`: the model (eval mode), what
    was done per parameter of ``model`` (coverage) and the details."""
    config = config or QuantConfig()
    if config.estimator == "lsq":
        raise NnzipError("estimator 'lsq' learns step sizes during training: use "
                         "quantization_aware_training, or estimator 'ste' for PTQ")
    # GPTQ and bias correction run the calibration batches again: a generator would be spent.
    batches = list(batches)
    prepared = _prepare(model, config)
    quantized = prepared.model
    if config.smoothquant_alpha is not None:
        smoothed = smooth_quant(quantized, batches, alpha=config.smoothquant_alpha,
                                layers=config.smoothquant_layers)
    # Before calibration: a weight-only layer rounds its weight at its first forward.
    scaled = awq(quantized, batches, grid=config.awq_grid) if config.awq else None
    details: dict[str, Any] = {"calibration_samples": calibrate(quantized, batches)}
    if scaled is not None:
        details["awq"] = scaled
    if config.smoothquant_alpha is not None:
        details["smoothed_layers"] = smoothed
    convert(quantized)
    if config.equalize:
        details["equalized_pairs"] = prepared.equalized_pairs
    notes: dict[str, str] = {}
    if config.rounding == "gptq":
        details["gptq_layers"] = (gptq(quantized, batches, act_order=config.act_order)
                                  if quantized_layers(quantized) else [])
        notes = gptq_notes(quantized, details["gptq_layers"])
    also_changed: dict[str, str] = {}
    if scaled is not None:
        notes, also_changed = awq_notes(quantized, scaled, notes)
    if config.bias_correction:
        details["bias_corrections"] = {name: round(value, 6) for name, value in
                                       bias_correction(quantized, batches).items()}
    method = "gptq" if config.rounding == "gptq" else "quantize_static"
    if config.awq:
        method = f"awq+{method}"
    return MethodResult(set_eval(quantized),
                        coverage_of(model, prepared, method, notes, also_changed), details)


def awq_notes(model: nn.Module, scaled: dict, notes: dict[str, str]
              ) -> tuple[dict[str, str], dict[str, str]]:
    """What the coverage adds for AWQ: the α of each scaled layer, and the parameters of the
    modules the scales were folded into (changed too, though nothing quantized them)."""
    notes = dict(notes)
    for name, entry in scaled["layers"].items():
        notes[name] = notes.get(name, "") + f", AWQ α {entry['alpha']:.2f} (scales: " \
            f"{entry['scales']})"
    also_changed = {}
    for producer, layers in scaled["folded"].items():
        what = f"divided by the AWQ scales of {', '.join(layers)} (same float function)"
        module = model.get_submodule(producer)
        if isinstance(module, QuantizedLayer):  # a Linear before: its rows took the fold
            notes[producer] = notes.get(producer, "") + f", rows {what}"
            module = module.layer
            attrs = ("bias",)
        else:
            attrs = ("weight", "bias")
        for attr in attrs:
            if getattr(module, attr, None) is not None:
                also_changed[f"{producer}.{attr}"] = what
    return notes, also_changed


def gptq_notes(model: nn.Module, gptq_layers: list[str]) -> dict[str, str]:
    """What the coverage adds for GPTQ: which layers it rounded, and why not the others."""
    notes = {name: ", GPTQ rounding" for name in gptq_layers}
    for name in quantized_layers(model):
        notes.setdefault(name, ", rounded to nearest (GPTQ takes Linear and Conv2d layers "
                               "with groups=1 and affine weights)")
    for name in quantized_weights(model):
        notes[name] = (", rounded to nearest (GPTQ needs the inputs of a layer it can see; "
                       "this weight is read by a fused kernel or a functional call)")
    return notes


def coverage_of(model: nn.Module, prepared: Prepared, method: str,
                notes: dict[str, str] | None = None,
                also_changed: dict[str, str] | None = None) -> Coverage:
    """The coverage of ``method`` over ``model``'s parameters, once ``prepared`` is quantized;
    ``also_changed`` names parameters changed without being quantized (AWQ's folds)."""
    notes = {name: prepared.notes.get(name, "") + (notes or {}).get(name, "")
             for name in {*prepared.notes, *(notes or {})}}
    coverage = quant_coverage(model, prepared.model, method, origins=prepared.unfused.origins,
                              skipped=prepared.plan.skipped, notes=notes,
                              also_changed=also_changed)
    for name, reason in coverage.skipped.items():  # in the coverage too: not a warning
        log.info("%s left %s: %s", method, name, reason)
    return coverage


def quantize_dynamic(model: nn.Module, bits: int = 8,
                     layer_types: tuple[type[nn.Module], ...] = (nn.Linear,),
                     granularity: Granularity = "channel",
                     embedding_bits: int | None = None) -> nn.Module:
    """Dynamic quantization in one call: int weights, activation ranges from each batch.

    nnzip's counterpart of ``torch.ao.quantization.quantize_dynamic(model, dtype=torch.qint8)``,
    and covering at least as much: Linear layers (attention projections included) get int
    weights and per-batch int8 activations; LSTM/GRU gate matrices, functional parameters and
    tied tensors get int weights (weight-only: their kernels are fused or invisible). No
    calibration data is needed. ``embedding_bits`` also quantizes embedding tables (weight-only,
    per row).
    """
    config = QuantConfig(weight_bits=bits, activation_bits=8, weight_granularity=granularity,
                         fold_batchnorm=False, layer_types=layer_types,
                         embedding_bits=embedding_bits)
    return dynamic_quantization(model, config).model


def dynamic_quantization(model: nn.Module, config: QuantConfig) -> MethodResult:
    """:func:`quantize_dynamic` with any ``config`` (its ``activation_bits`` is the width of
    the per-batch activations), as a :class:`~nnzip.core.MethodResult`."""
    if config.activation_bits is None:
        raise NnzipError("dynamic quantization computes activation ranges per batch: set "
                         "activation_bits (8), or use static quantization for weights only")
    prepared = _prepare(model, config)
    for layer in quantized_layers(prepared.model).values():
        layer.freeze_weight()
        # Embeddings are weight-only: a frozen lookup table, no activation to quantize.
        layer.set_mode("dynamic" if layer.input_scheme is not None else "quantize")
    for quantizer, original in quantized_weights(prepared.model).values():
        quantizer.freeze(original)
    return MethodResult(set_eval(prepared.model),
                        coverage_of(model, prepared, "quantize_dynamic"), {})
