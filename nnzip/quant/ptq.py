"""Post-training quantization: static (calibrated activation ranges) and dynamic (per batch).

Static PTQ (Jacob et al. 2018; Nagel et al. 2021, "A White Paper on Neural Network
Quantization") in three steps, each a plain function:

1. :func:`prepare`: fold BatchNorm into the convolutions (the folded weights are what integer
   kernels run) and wrap every Conv/Linear in a :class:`QuantizedLayer` that observes its input;
2. :func:`calibrate`: run calibration batches (training data, never the test set);
3. :func:`convert`: fix every input range and round every weight to its integers.

:func:`quantize_static` does all three; :func:`quantize_dynamic` is the one-call equivalent of
PyTorch's ``torch.ao.quantization.quantize_dynamic`` for any model with Linear layers: int8
per-channel weights, activation ranges computed from each batch at run time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate._modes import eval_mode
from nnzip.models.fold import fold_batchnorm
from nnzip.models.surgery import set_module
from nnzip.quant.affine import Granularity, QScheme
from nnzip.quant.modules import QUANTIZABLE, QuantizedLayer, WeightRange, quantized_layers
from nnzip.quant.observers import ObserverKind


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how. Defaults: W8A8, per-channel symmetric weights, asymmetric
    unsigned per-tensor activations calibrated by min-max: the standard int8 CPU scheme.

    ``layer_bits`` overrides the weight bits of named layers (mixed precision); ``skip`` keeps
    named layers in float; ``layers`` restricts quantization to the named layers.
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
    skip: Sequence[str] = ()
    layers: Sequence[str] | None = None
    fold_batchnorm: bool = True
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE

    def weight_scheme(self, bits: int | None = None) -> QScheme:
        return QScheme(bits=bits or self.weight_bits, symmetric=True, signed=True,
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


def selected_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    """The layers ``config`` quantizes; an unknown name is an error listing the valid ones."""
    available = quantizable_layers(model, config.layer_types)
    if not available:
        kinds = ", ".join(t.__name__ for t in config.layer_types)
        raise NnzipError(f"{type(model).__name__} has no quantizable layer ({kinds}): nothing "
                         "to quantize")
    named = [*(config.layers or []), *config.skip, *config.layer_bits]
    unknown = sorted(set(named) - set(available))
    if unknown:
        raise NnzipError(f"unknown or unquantizable layers {unknown}; quantizable layers are: "
                         f"{', '.join(available)}")
    chosen = list(config.layers) if config.layers is not None else available
    return [name for name in chosen if name not in set(config.skip)]


def prepare(model: nn.Module, config: QuantConfig | None = None) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded and its layers wrapped for calibration."""
    config = config or QuantConfig()
    target = copy.deepcopy(model).eval()
    if config.fold_batchnorm and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                     for m in target.modules()):
        target = fold_batchnorm(target, inplace=True)
    for name in selected_layers(target, config):
        layer = target.get_submodule(name)
        wrapped = QuantizedLayer(layer, config.weight_scheme(config.layer_bits.get(name)),
                                 config.input_scheme(), observer=config.observer,
                                 weight_range=config.weight_range,
                                 observer_options=config.observer_options)
        set_module(target, name, wrapped)
    return target


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
    """Freeze every QuantizedLayer: fixed input ranges and integer weights. In place."""
    layers = quantized_layers(model)
    if not layers:
        raise NnzipError("the model has no QuantizedLayer: call prepare() first")
    for layer in layers.values():
        layer.freeze()
    return model


def quantize_static(model: nn.Module, batches: Iterable,
                    config: QuantConfig | None = None) -> nn.Module:
    """Static PTQ: a quantized copy of ``model`` calibrated on ``batches``."""
    prepared = prepare(model, config)
    calibrate(prepared, batches)
    return convert(prepared)


def quantize_dynamic(model: nn.Module, bits: int = 8,
                     layer_types: tuple[type[nn.Module], ...] = (nn.Linear,),
                     granularity: Granularity = "channel") -> nn.Module:
    """Dynamic quantization in one call: int weights, activation ranges from each batch.

    nnzip's counterpart of ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear},
    dtype=torch.qint8)``, for any model with Linear layers. No calibration data is needed.
    """
    config = QuantConfig(weight_bits=bits, activation_bits=8, weight_granularity=granularity,
                         fold_batchnorm=False, layer_types=layer_types)
    prepared = prepare(model, config)
    for layer in quantized_layers(prepared).values():
        layer.freeze_weight()
        layer.set_mode("dynamic")
    return prepared
