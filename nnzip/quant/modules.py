"""The quantized layer: a Conv/Linear whose weight and input are (fake-)quantized.

:class:`QuantizedLayer` wraps the float layer instead of subclassing it, so it works for any
``nn.Conv1d/2d/3d`` or ``nn.Linear`` (Hugging Face models included) and the model stays a normal
``nn.Module`` that trains, exports and saves. Its life has three modes:

- ``observe``: run in float and let the input observer watch the activations (calibration);
- ``quantize`` (after :meth:`QuantizedLayer.freeze`): the weight is rounded once to its integers
  and the input is fake-quantized with the calibrated scale; this is what the integer kernels of
  the exported model compute, simulated in float;
- ``train`` (QAT): both are fake-quantized every step with the straight-through estimator, the
  weight scale recomputed from the weight (or learned, LSQ);
- ``float``: weight and input as they are, without observing (the float reference that bias
  correction compares against).

Rounding other than to nearest (GPTQ) hands its integers to :meth:`QuantizedLayer.
set_integer_weight`: they are kept by later calls to :meth:`~QuantizedLayer.freeze`, while the
float weight stays the original one (so the weight error a report shows is the real one).

Dynamic quantization is the same layer with ``input_scheme`` but no calibrated range: each batch
computes its own.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.codec.bitpack import pack_bits, unpack_bits
from nnzip.errors import NnzipError
from nnzip.quant.affine import (
    QParams,
    QScheme,
    dequantize,
    fake_quantize,
    minmax_qparams,
    qparams_from_range,
    quantize,
)
from nnzip.quant.observers import Observer, ObserverKind, make_observer, mse_weight_qparams

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Mode = Literal["observe", "quantize", "train", "dynamic", "float"]
WeightRange = Literal["minmax", "mse"]


def weight_qparams(weight: torch.Tensor, scheme: QScheme,
                   method: WeightRange = "minmax") -> QParams:
    """Scale and zero point of a weight: its min-max range, or the MSE-optimal shrink of it."""
    if method == "mse":
        return mse_weight_qparams(weight, scheme)
    return minmax_qparams(weight, scheme)


class QuantizedLayer(nn.Module):
    """A quantizable layer with its weight scheme, input scheme and calibration state."""

    def __init__(self, layer: nn.Module, weight_scheme: QScheme,
                 input_scheme: QScheme | None = None, observer: ObserverKind = "minmax",
                 weight_range: WeightRange = "minmax", observer_options: dict | None = None
                 ) -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise NnzipError(f"{type(layer).__name__} is not quantizable: nnzip quantizes "
                             "Linear and Conv1d/2d/3d layers")
        self.layer = layer
        self.weight_scheme = weight_scheme
        self.input_scheme = input_scheme
        self.weight_range = weight_range
        self.observer: Observer | None = (
            make_observer(observer, input_scheme, **(observer_options or {}))
            if input_scheme is not None else None)
        self.mode: Mode = "observe" if input_scheme is not None else "quantize"
        self.input_qparams: QParams | None = None
        self.weight_qparams: QParams | None = None
        self.register_buffer("weight_int", None, persistent=False)
        # True when weight_int came from elsewhere (GPTQ, a loaded state dict) rather than from
        # rounding the float weight: re-rounding would undo it.
        self.weight_fixed = False
        # Once frozen, the state dict holds the integer weight bit-packed, not the float one:
        # what a user ships, and what the report's size_bytes weighs.
        self._register_state_dict_hook(_packed_state)
        self._register_load_state_dict_pre_hook(self._load_packed, with_module=False)

    # -- state -------------------------------------------------------------------------------
    def freeze(self) -> None:
        """End calibration: fix the input range and round the weight to its integers."""
        if self.input_scheme is not None and self.mode == "observe":
            self.input_qparams = self.observer.qparams()
        self.freeze_weight()
        self.mode = "quantize"

    def freeze_weight(self) -> None:
        """Round the current weight to its integers (after QAT, or for dynamic quantization).

        Integers set by :meth:`set_integer_weight` are kept: freezing again changes nothing.
        """
        if self.weight_fixed:
            return
        self.weight_qparams = weight_qparams(self.layer.weight.detach(), self.weight_scheme,
                                             self.weight_range)
        self.weight_int = quantize(self.layer.weight, self.weight_qparams)

    def set_integer_weight(self, weight_int: torch.Tensor, qparams: QParams) -> None:
        """Use integers chosen by another rounding method (GPTQ) as this layer's weight."""
        if weight_int.shape != self.layer.weight.shape:
            raise NnzipError(f"integer weight of shape {tuple(weight_int.shape)} does not match "
                             f"the layer's weight {tuple(self.layer.weight.shape)}")
        if qparams.scheme != self.weight_scheme:
            raise NnzipError(f"integer weight quantized with {qparams.scheme}, but the layer's "
                             f"scheme is {self.weight_scheme}: quantize with the layer's scheme")
        self.weight_int = weight_int
        self.weight_qparams = qparams
        self.weight_fixed = True

    def set_mode(self, mode: Mode) -> None:
        if mode == "train":
            # Training moves the float weight: its integers are recomputed when it ends.
            self.weight_fixed = False
        if mode == "quantize" and self.weight_int is None:
            self.freeze()
        self.mode = mode

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the integer kernels use, back in float."""
        if self.weight_int is None:
            self.freeze_weight()
        return dequantize(self.weight_int, self.weight_qparams).to(self.layer.weight.dtype)

    # -- forward -----------------------------------------------------------------------------
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the layer's kernel sees it; in 'observe' mode the observer records it."""
        if self.input_scheme is None or self.mode == "float":
            return x
        if self.mode == "observe":
            self.observer.update(x)
            return x
        if self.mode == "dynamic" or self.input_qparams is None:
            # Dynamic: each batch its own range (of the whole batch, as ONNX Runtime's
            # DynamicQuantizeLinear and PyTorch's quantize_dynamic do).
            return fake_quantize(x, qparams_from_range(x.detach().min(), x.detach().max(),
                                                       self.input_scheme))
        return fake_quantize(x, self.input_qparams)

    def _weight(self) -> torch.Tensor:
        if self.mode in ("observe", "float"):
            return self.layer.weight
        if self.mode == "train":
            return fake_quantize(self.layer.weight,
                                 weight_qparams(self.layer.weight, self.weight_scheme,
                                                self.weight_range))
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        weight = self._weight()
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        # Convolutions: the layer's own _conv_forward handles padding modes and groups.
        return layer._conv_forward(x, weight, layer.bias)

    def _load_packed(self, state_dict: dict, prefix: str, *args) -> None:
        key = prefix + "weight_packed"
        if key not in state_dict:
            return
        scheme = self.weight_scheme
        weight = self.layer.weight
        codes = unpack_bits(state_dict.pop(key), scheme.bits, weight.numel(), scheme.qmin)
        scale = state_dict.pop(prefix + "weight_scale")
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        self.weight_qparams = QParams(scale=scale, zero_point=zero_point, scheme=scheme)
        self.weight_int = codes.reshape(weight.shape).to(torch.int8)
        self.weight_fixed = True  # the shipped integers are the weight, whatever rounded them
        state_dict[prefix + "layer.weight"] = self.dequantized_weight()
        if prefix + "input_scale" in state_dict:
            self.input_qparams = QParams(scale=state_dict.pop(prefix + "input_scale"),
                                         zero_point=state_dict.pop(prefix + "input_zero_point"),
                                         scheme=self.input_scheme)
        self.mode = "quantize"

    def extra_repr(self) -> str:
        scheme = self.weight_scheme
        text = f"w{scheme.bits} {scheme.granularity}"
        if self.input_scheme is not None:
            text += f", a{self.input_scheme.bits}"
        return f"{text}, mode={self.mode}"


def _packed_state(module: QuantizedLayer, state_dict: dict, prefix: str, _metadata) -> None:
    """State-dict hook: replace the float weight of a frozen layer by its packed integers."""
    if module.weight_int is None or module.mode not in ("quantize", "dynamic"):
        return
    scheme = module.weight_scheme
    del state_dict[prefix + "layer.weight"]
    state_dict[prefix + "weight_packed"] = pack_bits(module.weight_int, scheme.bits, scheme.qmin)
    state_dict[prefix + "weight_scale"] = module.weight_qparams.scale.float()
    if module.input_qparams is not None and module.mode == "quantize":
        state_dict[prefix + "input_scale"] = module.input_qparams.scale.float().reshape(1)
        state_dict[prefix + "input_zero_point"] = \
            module.input_qparams.zero_point.to(torch.int32).reshape(1)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    """Every QuantizedLayer of ``model`` by module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, QuantizedLayer)}


def set_mode(model: nn.Module, mode: Mode) -> None:
    for layer in quantized_layers(model).values():
        layer.set_mode(mode)
