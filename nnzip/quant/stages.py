"""Recipe stages ``quantize`` (static or dynamic PTQ), ``qat`` and ``mixed_precision``.

```yaml
stages:
  - quantize: {}                                    # W8A8 static, per-channel weights, min-max
  - quantize: {weight_bits: 4, observer: kl, weight_range: mse}
  - quantize: {mode: dynamic}                       # int8 Linear weights, per-batch activations
  - quantize: {weight_bits: 4, equalize: true, rounding: gptq, bias_correction: true}
  - quantize: {weight_bits: 4, activation_bits: null, granularity: group, group_size: 128,
               awq: true, rounding: gptq}           # AWQ scales, then GPTQ (weight-only)
  - quantize: {weight_format: pow2, weight_bits: 4} # signed powers of two, 4 bits
  - qat: {weight_bits: 4, estimator: lsq}           # learned step sizes
  - qat: {weight_format: binary, lr: 0.001}         # 1-bit weights (XNOR-Net's BWN)
  - mixed_precision: {average_bits: 4, candidate_bits: [2, 3, 4, 8]}   # W?A8 under a budget
```
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from nnzip.core.coverage import MethodResult
from nnzip.data.splits import calibration_batches
from nnzip.errors import NnzipError
from nnzip.quant.lowbit import FIXED_BITS
from nnzip.quant.mixed import DEFAULT_CANDIDATE_BITS, check_candidate_bits, mixed_precision
from nnzip.quant.modules import quantized_layers
from nnzip.quant.parametrized import quantized_weights
from nnzip.quant.ptq import QuantConfig, dynamic_quantization, static_quantization
from nnzip.quant.qat import qat
from nnzip.stage import Context, Stage
from nnzip.train import FinetunedStage

log = logging.getLogger(__name__)


class QuantOptions(Stage):
    """The quantization options ``quantize`` and ``qat`` share, validated and turned into a
    :class:`QuantConfig`, and the per-layer details both record."""

    renamed = {"skip": "exclude"}
    records_coverage = True

    weight_bits: int = Field(8, ge=1, le=8)
    weight_format: Literal["affine", "binary", "ternary", "pow2"] = "affine"
    activation_bits: int | None = Field(8, ge=2, le=8)
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int | None = Field(None, ge=1)
    observer: Literal["minmax", "moving_average", "percentile", "mse", "kl"] = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    calibration_batches: int = Field(8, ge=1)
    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    layer_bits: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> QuantOptions:
        # Only what QuantConfig cannot tell (was weight_bits given?) is checked here; the rest is
        # QuantConfig's own validation, run once below, so both say the same words.
        fixed = FIXED_BITS.get(self.weight_format)
        if fixed is not None and "weight_bits" in self.model_fields_set \
                and self.weight_bits != fixed:
            raise ValueError(f"{self.weight_format} weights take {fixed} bit(s), got "
                             f"weight_bits {self.weight_bits}: leave weight_bits out")
        try:  # QuantConfig's own checks (formats, granularity, estimator), at parse time
            self.config()
        except NnzipError as error:
            raise ValueError(str(error)) from None
        return self

    def config_overrides(self) -> dict[str, Any]:
        """The QuantConfig fields a subclass sets from its own options."""
        return {}

    def config(self) -> QuantConfig:
        options = {"percentile": self.percentile} if self.observer == "percentile" else {}
        return QuantConfig(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                           weight_granularity=self.granularity, group_size=self.group_size,
                           observer=self.observer, observer_options=options,
                           layer_bits=dict(self.layer_bits), exclude=tuple(self.exclude),
                           layers=self.layers, weight_format=self.weight_format,
                           **self.config_overrides())

    def calibration(self, context: Context) -> list:
        return calibration_batches(context.data, self.calibration_batches, seed=context.seed)

    @staticmethod
    def record_layers(quantized: nn.Module, context: Context) -> None:
        layers = {name: (layer, layer.layer.weight, layer.dequantized_weight())
                  for name, layer in quantized_layers(quantized).items()}
        layers.update({name: (quantizer, original, quantizer.dequantized(original))
                       for name, (quantizer, original) in quantized_weights(quantized).items()})
        context.record("layer_bits", {name: layer.weight_scheme.bits
                                      for name, (layer, _, _) in layers.items()})
        context.record("weight_format", {name: getattr(layer.weight_scheme, "format", "affine")
                                         for name, (layer, _, _) in layers.items()})
        context.record("weight_error", {name: round(_relative_error(weight, rounded), 6)
                                        for name, (_, weight, rounded) in layers.items()})


class Quantize(QuantOptions):
    """Post-training quantization of every weight nnzip reaches (or the named ``layers``):
    Conv/Linear layers and attention projections with their input activations, LSTM/GRU gates,
    functional and tied weights weight-only (:mod:`nnzip.quant.plan`). Records the coverage.

    ``mode: static`` folds BatchNorm, calibrates activation ranges with ``observer`` on
    ``calibration_batches`` training batches and rounds weights (``weight_range``: min-max or
    MSE-optimal per channel). ``activation_bits: null`` quantizes weights only. ``mode: dynamic``
    quantizes Linear weights and computes activation ranges per batch at run time (and the
    weight-only tensors as in static mode), as ``torch.ao.quantization.quantize_dynamic`` does.

    Static mode only, for 4 bits: ``equalize`` (cross-layer equalization), ``rounding: gptq``
    (with ``act_order``), ``bias_correction`` and, weight-only (``activation_bits: null``),
    ``awq`` (activation-aware scales, Lin et al. 2024, α searched on ``awq_grid`` points; the
    per-layer α is recorded in the details); see :class:`QuantConfig`.

    Transformers: ``embedding_bits`` stores every ``nn.Embedding`` table in that many bits
    (weight-only, a scale per row); ``smoothquant_alpha`` (0.5 in Xiao et al. 2023) migrates
    activation outliers into the weights before calibration, of every Linear with quantized
    inputs or of the ``smoothquant_layers`` named.
    """

    kind = "quantize"

    mode: Literal["static", "dynamic"] = "static"
    weight_range: Literal["minmax", "mse"] = "minmax"
    fold_batchnorm: bool = True
    equalize: bool = False
    bias_correction: bool = False
    rounding: Literal["nearest", "gptq"] = "nearest"
    act_order: bool = False
    embedding_bits: int | None = Field(None, ge=2, le=8)
    smoothquant_alpha: float | None = Field(None, gt=0, lt=1)
    smoothquant_layers: list[str] | None = None
    awq: bool = False
    awq_grid: int = Field(20, ge=2)

    @model_validator(mode="after")
    def _static_only(self) -> Quantize:
        better = [name for name in ("equalize", "bias_correction", "act_order",
                                    "smoothquant_alpha", "awq") if getattr(self, name)]
        better += ["rounding: gptq"] if self.rounding == "gptq" else []
        if self.mode == "dynamic" and better:
            raise ValueError(f"{', '.join(better)} need calibration: use mode: static")
        if self.act_order and self.rounding != "gptq":
            raise ValueError("act_order is a GPTQ option: add rounding: gptq")
        if self.equalize and not self.fold_batchnorm:
            raise ValueError("equalize needs fold_batchnorm: true (a BatchNorm between two "
                             "layers hides the pair)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_estimator(cls, data: Any) -> Any:
        if isinstance(data, dict) and "estimator" in data:
            raise ValueError("estimator (ste or lsq) is how QAT trains through the rounding, "
                             "and quantize does not train: use the qat stage for it")
        return data

    @model_validator(mode="after")
    def _dynamic_is_affine(self) -> Quantize:
        if self.mode == "dynamic" and (self.weight_format != "affine" or self.weight_bits < 2):
            raise ValueError("mode dynamic quantizes affine integer weights (2 to 8 bits): use "
                             "mode static for binary, ternary or pow2 weights")
        return self

    def config_overrides(self) -> dict[str, Any]:
        return {"weight_range": self.weight_range, "fold_batchnorm": self.fold_batchnorm,
                "equalize": self.equalize, "bias_correction": self.bias_correction,
                "rounding": self.rounding, "act_order": self.act_order,
                "embedding_bits": self.embedding_bits, "smoothquant_alpha": self.smoothquant_alpha,
                "smoothquant_layers": self.smoothquant_layers, "awq": self.awq,
                "awq_grid": self.awq_grid}

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        calibration = self.calibration(context) if self.mode == "static" else None
        result = quantize_model(model, self, calibration)
        for key, value in result.details.items():
            context.record(key, value)
        context.record("mode", self.mode)
        context.record("coverage", result.coverage.to_dict())
        self.record_layers(result.model, context)
        return result.model


def quantize_model(model: nn.Module, config: Quantize | None = None,
                   calibration: Iterable | None = None) -> MethodResult:
    """Quantize a copy of ``model`` as the ``quantize`` stage ``config`` says (default: static
    W8A8): the model (eval mode), its coverage (what was done to each parameter of ``model``,
    and why the others were left) and the details.

    ``calibration``: batches of training inputs (or (inputs, targets) pairs), needed by
    ``mode: static``; ``mode: dynamic`` needs none.

    ```python
    from nnzip.quant import Quantize, quantize
    result = quantize(model, Quantize(weight_bits=4, rounding="gptq"), calibration=batches)
    result.model, result.coverage.changed_fraction, result.coverage.skipped
    ```
    """
    if isinstance(model, torch.Tensor):
        raise NnzipError("quantize(model, config) quantizes a model; to round one tensor with "
                         "given qparams use nnzip.quant.affine.quantize(tensor, qparams)")
    config = Quantize() if config is None else config
    if not isinstance(config, Quantize):
        raise NnzipError(f"quantize takes a Quantize config (the quantize stage), got "
                         f"{type(config).__name__}: use quantization_aware_training for QAT, "
                         "quantize_mixed for mixed precision, or Quantize(**options)")
    if config.mode == "dynamic":
        # Linear layers, as torch.ao.quantization.quantize_dynamic: convolutions need the
        # calibrated ranges of static quantization.
        return dynamic_quantization(model, dataclasses.replace(
            config.config(), layer_types=(nn.Linear,), fold_batchnorm=False))
    if calibration is None:
        raise NnzipError("static quantization calibrates activation ranges: pass calibration="
                         "batches of training inputs (e.g. nnzip.data.calibration_batches(data, "
                         "8)), or use Quantize(mode='dynamic')")
    return static_quantization(model, calibration, config.config())


def _relative_error(weight: torch.Tensor, rounded: torch.Tensor) -> float:
    """‖W_q − W‖² / ‖W‖²: how much of the weight's energy rounding changed."""
    weight = weight.detach()
    error = (rounded.detach() - weight).pow(2).sum()
    return float(error / torch.clamp(weight.pow(2).sum(), min=1e-12))


class QAT(QuantOptions, FinetunedStage):
    """Quantization-aware training: static PTQ, then ``finetune_epochs`` through the rounding.

    Same quantization options as ``quantize`` (static only; weight ranges are min-max) plus the
    shared fine-tune options and ``estimator``: ``ste`` (scales from the weights, gradients
    straight through the rounding) or ``lsq`` (learned step sizes, Esser et al. 2020).
    """

    kind = "qat"

    lr: float = Field(1e-4, gt=0)
    estimator: Literal["ste", "lsq"] = "ste"

    def config_overrides(self) -> dict[str, Any]:
        return {"estimator": self.estimator}

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        method, result = qat(model, context.data, self.calibration(context), self.config(),
                             self.finetune_config(context), progress=context.progress)
        quantized = method.model
        context.record("coverage", method.coverage.to_dict())
        self.record_layers(quantized, context)
        context.record("finetune_epochs", result.epochs_run)
        context.record("finetune_best_val_accuracy", round(result.best_val_accuracy, 4))
        return quantized


class MixedPrecision(QuantOptions):
    """Static PTQ with per-layer weight bits chosen from measured sensitivity under a budget.

    Each layer's weights are quantized alone to every ``candidate_bits`` width and the KL
    divergence of the outputs from the float model is measured on the validation split; the bits
    that minimise the summed KL within the budget are then found exactly (see
    :mod:`nnzip.quant.mixed`). The budget is exactly one of ``average_bits`` (mean weight bits,
    weighted by parameter count) or ``weight_bytes`` (bit-packed integer weights; scales, biases
    and headers come on top). ``layer_bits`` pins named layers (counted in the budget); the other
    options are those of ``quantize``, activations at ``activation_bits`` everywhere.
    """

    kind = "mixed_precision"

    average_bits: float | None = Field(None, gt=0, le=8)
    weight_bytes: int | None = Field(None, gt=0)
    candidate_bits: list[int] = Field(default_factory=lambda: list(DEFAULT_CANDIDATE_BITS))
    weight_range: Literal["minmax", "mse"] = "minmax"
    fold_batchnorm: bool = True

    @model_validator(mode="after")
    def _one_budget(self) -> MixedPrecision:
        if (self.average_bits is None) == (self.weight_bytes is None):
            raise ValueError("give exactly one budget: average_bits (mean weight bits, e.g. 4) "
                             "or weight_bytes (packed weight bytes)")
        if "weight_bits" in self.model_fields_set:
            raise ValueError("mixed_precision chooses the weight bits per layer: drop "
                             "weight_bits and set candidate_bits (and layer_bits to pin layers)")
        if self.weight_format != "affine":
            raise ValueError(f"mixed_precision chooses affine bit widths; {self.weight_format} "
                             "weights have one width: use the quantize or qat stage for them")
        try:
            check_candidate_bits(self.candidate_bits)
        except NnzipError as error:
            raise ValueError(str(error)) from None
        return self

    def config_overrides(self) -> dict[str, Any]:
        return {"weight_range": self.weight_range, "fold_batchnorm": self.fold_batchnorm}

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        calibration = self.calibration(context)
        validation = list(context.data.loader("val", batch_size=256))
        result = mixed_precision(
            model, calibration, validation, average_bits=self.average_bits,
            weight_bytes=self.weight_bytes, candidate_bits=self.candidate_bits,
            config=self.config(), progress=context.progress)
        quantized, plan = result.model, result.details["plan"]
        context.record("coverage", result.coverage.to_dict())
        sensitivity = plan.sensitivity
        context.record("budget", {"average_bits": self.average_bits} if self.average_bits
                       is not None else {"weight_bytes": self.weight_bytes})
        context.record("achieved_average_bits", round(plan.average_bits, 4))
        context.record("achieved_weight_bytes", plan.weight_bytes)
        context.record("candidate_bits", sorted(set(self.candidate_bits)))
        context.record("sensitivity_metric", "KL(float ‖ one layer quantized) on the validation "
                       "split; drop: validation accuracy points lost")
        context.record("calibration_samples", sum(len(batch[0]) for batch in calibration))
        context.record("layer_params", sensitivity.params)
        context.record("bit_sensitivity", _json_table(sensitivity.kl))
        if sensitivity.accuracy_drop:
            context.record("bit_accuracy_drop", _json_table(sensitivity.accuracy_drop))
        self.record_layers(quantized, context)
        return quantized


def _json_table(table: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """{layer: {bits: value}} with string keys, as JSON needs them."""
    return {name: {str(bits): float(f"{value:.6g}") for bits, value in row.items()}
            for name, row in table.items()}
