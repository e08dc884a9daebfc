"""Recipe stage ``quantize``: static (calibrated) or dynamic post-training quantization.

```yaml
stages:
  - quantize: {}                                    # W8A8 static, per-channel weights, min-max
  - quantize: {weight_bits: 4, observer: kl, weight_range: mse}
  - quantize: {mode: dynamic}                       # int8 Linear weights, per-batch activations
```
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from nnzip.data.splits import calibration_batches
from nnzip.quant.modules import quantized_layers
from nnzip.quant.ptq import QuantConfig, calibrate, convert, prepare, quantize_dynamic
from nnzip.quant.qat import quantization_aware_training
from nnzip.stage import Context, Stage
from nnzip.train import FinetunedStage


class Quantize(Stage):
    """Post-training quantization of every Conv/Linear (or the named ``layers``).

    ``mode: static`` folds BatchNorm, calibrates activation ranges with ``observer`` on
    ``calibration_batches`` training batches and rounds weights (``weight_range``: min-max or
    MSE-optimal per channel). ``activation_bits: null`` quantizes weights only. ``mode: dynamic``
    quantizes Linear weights and computes activation ranges per batch at run time.
    """

    kind = "quantize"

    mode: Literal["static", "dynamic"] = "static"
    weight_bits: int = Field(8, ge=2, le=8)
    activation_bits: int | None = Field(8, ge=2, le=8)
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int | None = Field(None, ge=1)
    observer: Literal["minmax", "moving_average", "percentile", "mse", "kl"] = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    weight_range: Literal["minmax", "mse"] = "minmax"
    calibration_batches: int = Field(8, ge=1)
    layers: list[str] | None = None
    skip: list[str] = Field(default_factory=list)
    layer_bits: dict[str, int] = Field(default_factory=dict)
    fold_batchnorm: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Quantize:
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("granularity 'group' needs group_size, e.g. group_size: 64")
        for name, bits in self.layer_bits.items():
            if not 2 <= bits <= 8:
                raise ValueError(f"layer_bits[{name!r}] must be from 2 to 8, got {bits}")
        return self

    def config(self) -> QuantConfig:
        options = {"percentile": self.percentile} if self.observer == "percentile" else {}
        return QuantConfig(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                           weight_granularity=self.granularity, group_size=self.group_size,
                           observer=self.observer, observer_options=options,
                           weight_range=self.weight_range, layer_bits=dict(self.layer_bits),
                           skip=tuple(self.skip), layers=self.layers,
                           fold_batchnorm=self.fold_batchnorm)

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        if self.mode == "dynamic":
            quantized = quantize_dynamic(model, self.weight_bits, granularity=self.granularity)
        else:
            quantized = prepare(model, self.config())
            batches = calibration_batches(context.data, self.calibration_batches,
                                          seed=context.seed)
            context.record("calibration_samples", calibrate(quantized, batches))
            convert(quantized)
        layers = quantized_layers(quantized)
        context.record("mode", self.mode)
        context.record("layer_bits", {name: layer.weight_scheme.bits
                                      for name, layer in layers.items()})
        context.record("weight_error", {name: round(_relative_error(layer), 6)
                                        for name, layer in layers.items()})
        return quantized


def _relative_error(layer) -> float:
    """‖W_q − W‖² / ‖W‖²: how much of the weight's energy rounding changed."""
    weight = layer.layer.weight.detach()
    error = (layer.dequantized_weight() - weight).pow(2).sum()
    return float(error / torch.clamp(weight.pow(2).sum(), min=1e-12))


class QAT(FinetunedStage):
    """Quantization-aware training: static PTQ, then ``finetune_epochs`` through the rounding.

    Same quantization options as ``quantize`` (static only; weight ranges are min-max).
    """

    kind = "qat"

    weight_bits: int = Field(8, ge=2, le=8)
    activation_bits: int | None = Field(8, ge=2, le=8)
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int | None = Field(None, ge=1)
    observer: Literal["minmax", "moving_average", "percentile", "mse", "kl"] = "minmax"
    calibration_batches: int = Field(8, ge=1)
    layers: list[str] | None = None
    skip: list[str] = Field(default_factory=list)
    layer_bits: dict[str, int] = Field(default_factory=dict)
    lr: float = Field(1e-4, gt=0)

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        config = QuantConfig(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                             weight_granularity=self.granularity, group_size=self.group_size,
                             observer=self.observer, layer_bits=dict(self.layer_bits),
                             skip=tuple(self.skip), layers=self.layers)
        batches = calibration_batches(context.data, self.calibration_batches, seed=context.seed)
        quantized, result = quantization_aware_training(
            model, context.data, batches, config, self.finetune_config(context),
            progress=context.progress)
        layers = quantized_layers(quantized)
        context.record("layer_bits", {name: layer.weight_scheme.bits
                                      for name, layer in layers.items()})
        context.record("weight_error", {name: round(_relative_error(layer), 6)
                                        for name, layer in layers.items()})
        context.record("finetune_epochs", result.epochs_run)
        context.record("finetune_best_val_accuracy", round(result.best_val_accuracy, 4))
        return quantized
