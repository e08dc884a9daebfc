"""Quantization-aware training: start from static PTQ, then fine-tune through the rounding.

Jacob et al. (2018): the forward pass uses fake-quantized weights and activations, the backward
pass the straight-through estimator (clipped), so the weights learn to sit well on the integer
grid. nnzip starts from a calibrated PTQ model (activation ranges fixed by calibration), trains
with the shared :func:`nnzip.train.fit` loop, and finally rounds the trained weights to integers.
During training each weight's range is its current min-max (an MSE search every step would cost
more than the step), so QAT always uses ``weight_range="minmax"``.

With ``QuantConfig(estimator="lsq")`` the steps are learned instead (LSQ, Esser et al. 2020, see
:mod:`nnzip.quant.lsq`): one per weight channel and one per activation tensor, initialised from
the PTQ scales and trained with the weights; the final rounding uses the learned steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from torch import nn

from nnzip.core.coverage import MethodResult
from nnzip.core.modes import set_eval
from nnzip.data.splits import DataSplits
from nnzip.quant.modules import quantized_layers
from nnzip.quant.parametrized import quantized_weights
from nnzip.quant.ptq import QuantConfig, _prepare, calibrate, convert, coverage_of
from nnzip.train import TrainConfig, TrainResult, fit


def quantization_aware_training(model: nn.Module, data: DataSplits, batches: Iterable,
                                config: QuantConfig | None = None,
                                train_config: TrainConfig | None = None, *,
                                progress: bool = False) -> tuple[nn.Module, TrainResult]:
    """A quantized copy of ``model`` (eval mode): PTQ on ``batches``, then QAT with
    ``train_config``."""
    result, train_result = qat(model, data, batches, config, train_config, progress=progress)
    return result.model, train_result


def qat(model: nn.Module, data: DataSplits, batches: Iterable, config: QuantConfig | None = None,
        train_config: TrainConfig | None = None, *, progress: bool = False
        ) -> tuple[MethodResult, TrainResult]:
    """:func:`quantization_aware_training` with the coverage: a :class:`MethodResult` (model in
    eval mode) and what the fine-tune did."""
    config = dataclasses.replace(config or QuantConfig(), weight_range="minmax")
    batches = list(batches)
    prepared = _prepare(model, config)
    quantized = prepared.model
    calibrate(quantized, batches)
    convert(quantized)
    for layer in quantized_layers(quantized).values():
        if config.estimator == "lsq":
            layer.learn_step_sizes()  # before fit() builds its optimizer over the parameters
        layer.set_mode("train")
    weights = quantized_weights(quantized)
    for quantizer, original in weights.values():
        quantizer.set_mode("train", original)
    result = fit(quantized, data, train_config or TrainConfig(epochs=3, patience=None),
                 progress=progress, description="quantization-aware training")
    for layer in quantized_layers(quantized).values():
        layer.finish_training()
    for quantizer, original in weights.values():
        quantizer.set_mode("quantize", original)  # rounds the trained weight
    estimator = f", trained through the rounding ({config.estimator})"
    notes = {name: estimator for name in quantized_layers(quantized)}
    notes.update({name: ", trained through the rounding (ste)" for name in weights})
    coverage = coverage_of(model, prepared, "qat", notes)
    return MethodResult(set_eval(quantized), coverage, {"finetune_epochs": result.epochs_run}), \
        result

