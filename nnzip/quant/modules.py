"""The quantized layer: a Conv/Linear whose weight and input are (fake-)quantized.

:class:`QuantizedLayer` wraps the float layer instead of subclassing it, so it works for any
``nn.Conv1d/2d/3d`` or ``nn.Linear`` (Hugging Face models included) and the model stays a normal
``nn.Module`` that trains, exports and saves. Its life has three modes:

- ``observe``: run in float and let the input observer watch the activations (calibration);
- ``quantize`` (after :meth:`QuantizedLayer.freeze`): the weight is rounded once to its integers
  and the input is fake-quantized with the calibrated scale; this is what the integer kernels of
  the exported model compute, simulated in float;
- ``train`` (QAT): both are fake-quantized every step with the straight-through estimator, the
  weight scale recomputed from the weight, or learned (LSQ, after :meth:`learn_step_sizes`);
- ``float``: weight and input as they are, without observing (the float reference that bias
  correction compares against).

The weight is affine (a :class:`QScheme`) or one of the low-bit formats of
:mod:`nnzip.quant.lowbit` (a :class:`LowBitScheme`: binary, ternary, power-of-two); either way a
frozen layer holds integer codes and a scale, and its state dict stores the codes bit-packed.

Rounding other than to nearest (GPTQ) hands its integers to :meth:`QuantizedLayer.
set_integer_weight`: they are kept by later calls to :meth:`~QuantizedLayer.freeze`, while the
float weight stays the original one (so the weight error a report shows is the real one).

Dynamic quantization is the same layer with ``input_scheme`` but no calibrated range: each batch
computes its own.

Two additions serve transformers: an ``nn.Embedding`` can be wrapped too (weight-only, one scale
per row: the token table is half of a small BERT's bytes), and a Linear can carry SmoothQuant
factors (:meth:`QuantizedLayer.smooth`, Xiao et al. 2023): its input is divided by them before it
is quantized and its weight columns multiplied by them, the same function with flatter
activations (see :mod:`nnzip.quant.smooth`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.codec.bitpack import pack_bits, unpack_bits
from nnzip.errors import NnzipError
from nnzip.quant.affine import (
    MIN_SCALE,
    QParams,
    QScheme,
    dequantize,
    fake_quantize,
    grouped,
    minmax_qparams,
    qparams_from_range,
    quantize,
    ungrouped,
)
from nnzip.quant.lowbit import (
    LowBitParams,
    LowBitScheme,
    channel_rows,
    lowbit_dequantize,
    lowbit_fake_quantize,
    lowbit_quantize,
    pack_codes,
    unpack_codes,
)
from nnzip.quant.lsq import lsq_codes, lsq_fake_quantize, lsq_gradient_scale, sign_levels
from nnzip.quant.observers import Observer, ObserverKind, make_observer, mse_weight_qparams

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Layers quantized weight-only when asked (QuantConfig.embedding_bits): lookups have no
#: activation to quantize.
WEIGHT_ONLY = (nn.Embedding,)
Mode = Literal["observe", "quantize", "train", "dynamic", "float"]
WeightRange = Literal["minmax", "mse"]
WeightScheme = QScheme | LowBitScheme


def weight_qparams(weight: torch.Tensor, scheme: QScheme,
                   method: WeightRange = "minmax") -> QParams:
    """Scale and zero point of a weight: its min-max range, or the MSE-optimal shrink of it."""
    if method == "mse":
        return mse_weight_qparams(weight, scheme)
    return minmax_qparams(weight, scheme)


class QuantizedLayer(nn.Module):
    """A quantizable layer with its weight scheme, input scheme and calibration state."""

    def __init__(self, layer: nn.Module, weight_scheme: WeightScheme,
                 input_scheme: QScheme | None = None, observer: ObserverKind = "minmax",
                 weight_range: WeightRange = "minmax", observer_options: dict | None = None
                 ) -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE + WEIGHT_ONLY):
            raise NnzipError(f"{type(layer).__name__} is not quantizable: nnzip quantizes "
                             "Linear, Conv1d/2d/3d and (weights only) Embedding layers")
        if isinstance(layer, WEIGHT_ONLY) and input_scheme is not None:
            raise NnzipError("an Embedding's input is token ids, which are not quantized: "
                             "wrap it with input_scheme=None (weight-only)")
        self.layer = layer
        self.weight_scheme = weight_scheme
        self.input_scheme = input_scheme
        self.weight_range = weight_range
        self.observer: Observer | None = (
            make_observer(observer, input_scheme, **(observer_options or {}))
            if input_scheme is not None else None)
        if isinstance(weight_scheme, LowBitScheme) and weight_range != "minmax":
            raise NnzipError(f"weight_range {weight_range!r} searches affine ranges; "
                             f"{weight_scheme.format} weights have their own scale: use 'minmax'")
        self.mode: Mode = "observe" if input_scheme is not None else "quantize"
        self.input_qparams: QParams | None = None
        self.weight_qparams: QParams | LowBitParams | None = None
        self.register_buffer("weight_int", None, persistent=False)
        # SmoothQuant factors (one per input channel): None until smooth() is called.
        self.register_buffer("smoothing", None)
        # True when weight_int came from elsewhere (GPTQ, a loaded state dict) rather than from
        # rounding the float weight: re-rounding would undo it.
        self.weight_fixed = False
        # LSQ's learned steps: parameters only between learn_step_sizes() and finish_training().
        self.register_parameter("weight_step", None)
        self.register_parameter("input_step", None)
        #: Set when the input is left float although asked (see :meth:`freeze`): why.
        self.weight_only_reason: str | None = None
        # Once frozen, the state dict holds the integer weight bit-packed, not the float one:
        # what a user ships, and what the report's size_bytes weighs.
        self._register_state_dict_hook(_packed_state)
        self._register_load_state_dict_pre_hook(self._load_packed, with_module=False)

    # -- state -------------------------------------------------------------------------------
    def freeze(self) -> None:
        """End calibration: fix the input range and round the weight to its integers.

        A layer whose forward never ran during calibration (a parent reads its ``weight``
        directly, or no calibration input reached it) has no input range: it is quantized
        weight-only and says why in ``weight_only_reason``, rather than failing the model.
        """
        if self.input_scheme is not None and self.mode == "observe":
            if self.observer.batches == 0:
                self.weight_only_reason = (
                    "weight-only: its forward never ran during calibration (a parent module "
                    "reads .weight directly, or no calibration input reaches it), so its input "
                    "stays float")
                self.input_scheme = self.observer = None
            else:
                self.input_qparams = self.observer.qparams()
        self.freeze_weight()
        self.mode = "quantize"

    @property
    def low_bit(self) -> bool:
        return isinstance(self.weight_scheme, LowBitScheme)

    @property
    def weight(self) -> torch.Tensor:
        """The weight the kernel uses (float, fake-quantized or dequantized by mode), for
        parents that read ``.weight`` directly instead of calling the layer."""
        return self._weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def freeze_weight(self) -> None:
        """Round the current weight to its integers (after QAT, or for dynamic quantization).

        With learned steps (LSQ) the weight is rounded on the learned step, exactly as in
        training; otherwise the scale comes from the weight itself. Integers set by
        :meth:`set_integer_weight` are kept: freezing again changes nothing.
        """
        if self.weight_fixed:
            return
        weight = self.layer.weight.detach()
        scheme = self.weight_scheme
        if self.weight_step is not None:
            step = torch.clamp(self.weight_step.detach(), min=MIN_SCALE)  # as in training
            codes = lsq_codes(self._weight_view(weight), step, scheme.qmin, scheme.qmax,
                              levels=self._step_levels())
            self.weight_int = self._weight_unview(codes, weight)
            self.weight_qparams = (LowBitParams(scale=step, scheme=scheme) if self.low_bit else
                                   QParams(scale=step, scheme=scheme,
                                           zero_point=torch.zeros_like(step, dtype=torch.int32)))
        elif self.low_bit:
            self.weight_int, self.weight_qparams = lowbit_quantize(weight, scheme)
        else:
            self.weight_qparams = weight_qparams(weight, scheme, self.weight_range)
            self.weight_int = quantize(self.layer.weight, self.weight_qparams)

    # -- LSQ ---------------------------------------------------------------------------------
    def learn_step_sizes(self) -> None:
        """Start LSQ (Esser et al. 2020): the weight steps (one per channel, or group) and the
        input step become parameters, initialised from the frozen PTQ scales.

        The input keeps its calibrated zero point; only its step is learned.
        """
        if self.weight_qparams is None:
            raise NnzipError("learn_step_sizes() starts from calibrated scales: freeze the "
                             "layer (calibrate and convert) first")
        scheme = self.weight_scheme
        if self.low_bit and scheme.format == "pow2":
            raise NnzipError("LSQ learns a real-valued step, which would break pow2's exact "
                             "powers of two: train pow2 weights with estimator 'ste'")
        self.weight_step = nn.Parameter(self.weight_qparams.scale.detach().clone().float())
        if self.input_qparams is not None:
            self.input_step = nn.Parameter(self.input_qparams.scale.detach().clone().float())

    def finish_training(self) -> None:
        """End QAT: round the trained weight (on the learned step, if any), keep the learned
        input step, drop the step parameters and switch to ``quantize``."""
        self.freeze_weight()
        if self.input_step is not None:
            self.input_qparams = QParams(scale=torch.clamp(self.input_step.detach(),
                                                           min=MIN_SCALE),
                                         zero_point=self.input_qparams.zero_point,
                                         scheme=self.input_scheme)
        self.weight_step = None
        self.input_step = None
        self.mode = "quantize"

    def _weight_view(self, weight: torch.Tensor) -> torch.Tensor:
        """The view one weight step broadcasts against: channel rows, or affine groups."""
        return channel_rows(weight) if self.low_bit else grouped(weight, self.weight_scheme)

    def _weight_unview(self, view: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.low_bit:
            return view.reshape(weight.shape)
        return ungrouped(view, weight, self.weight_scheme)

    def _step_levels(self):
        """LSQ's level function: the sign for binary weights, rounding otherwise."""
        binary = self.low_bit and self.weight_scheme.format == "binary"
        return sign_levels if binary else torch.round

    def _lsq_weight(self) -> torch.Tensor:
        weight = self.layer.weight
        scheme = self.weight_scheme
        view = self._weight_view(weight)
        gradient_scale = lsq_gradient_scale(weight.numel() // self.weight_step.numel(),
                                            scheme.qmax)
        fake = lsq_fake_quantize(view, self.weight_step, scheme.qmin, scheme.qmax,
                                 gradient_scale=gradient_scale, levels=self._step_levels())
        return self._weight_unview(fake, weight)

    def _lsq_input(self, x: torch.Tensor) -> torch.Tensor:
        scheme, qparams = self.input_scheme, self.input_qparams
        gradient_scale = lsq_gradient_scale(max(1, x[0].numel()), scheme.qmax)
        return lsq_fake_quantize(x, self.input_step, scheme.qmin, scheme.qmax,
                                 zero_point=qparams.zero_point, gradient_scale=gradient_scale)

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

    def smooth(self, factors: torch.Tensor) -> None:
        """Migrate quantization difficulty from the input to the weight (SmoothQuant), or
        protect the weight columns that meet large inputs (AWQ): the input is divided by
        ``factors`` (one per input channel) and the weight's columns are multiplied by them, so
        the float function is unchanged. Call before calibration (before the weight is rounded,
        for a weight-only layer)."""
        if not isinstance(self.layer, nn.Linear):
            raise NnzipError(f"SmoothQuant scales the input channels of Linear layers, not "
                             f"{type(self.layer).__name__}")
        calibrated = self.input_scheme is not None and self.mode != "observe"
        if self.weight_int is not None or calibrated:
            raise NnzipError("smooth() changes the weight and the input range: call it after "
                             "prepare() and before calibration")
        factors = factors.detach().float().reshape(-1)
        if factors.numel() != self.layer.in_features or not bool((factors > 0).all()):
            raise NnzipError(f"SmoothQuant needs {self.layer.in_features} positive factors, got "
                             f"{factors.numel()}")
        with torch.no_grad():
            self.layer.weight.mul_(factors.to(self.layer.weight.dtype))
        previous = self.smoothing if self.smoothing is not None else torch.ones_like(factors)
        self.smoothing = previous * factors

    def set_mode(self, mode: Mode) -> None:
        if mode == "train":
            # Training moves the float weight: its integers are recomputed when it ends.
            self.weight_fixed = False
        if mode == "quantize" and self.weight_int is None:
            self.freeze()
        self.mode = mode

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the integer kernels use, back in float.

        Kept until the integers or their scales are replaced: a frozen embedding table or a
        large Linear is not dequantized again at every forward.
        """
        if self.weight_int is None:
            self.freeze_weight()
        cached = self.__dict__.get("_dequantized")
        if cached is not None and cached[0] is self.weight_int \
                and cached[1] is self.weight_qparams:
            return cached[2]
        if self.low_bit:
            weight = lowbit_dequantize(self.weight_int, self.weight_qparams)
        else:
            weight = dequantize(self.weight_int, self.weight_qparams)
        weight = weight.to(self.layer.weight.dtype)
        # Holding the integers and parameters themselves (not their ids) makes `is` exact.
        self.__dict__["_dequantized"] = (self.weight_int, self.weight_qparams, weight)
        return weight

    # -- forward -----------------------------------------------------------------------------
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the layer's kernel sees it; in 'observe' mode the observer records it."""
        if self.input_scheme is None or self.mode == "float":
            return x
        if self.mode == "observe":
            self.observer.update(x)
            return x
        if self.mode == "train" and self.input_step is not None:
            return self._lsq_input(x)
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
            if self.weight_step is not None:
                return self._lsq_weight()
            if self.low_bit:
                return lowbit_fake_quantize(self.layer.weight, self.weight_scheme)
            return fake_quantize(self.layer.weight,
                                 weight_qparams(self.layer.weight, self.weight_scheme,
                                                self.weight_range))
        return self.dequantized_weight()

    def smooth_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input divided by the SmoothQuant factors (unchanged without them)."""
        return x if self.smoothing is None else x / self.smoothing.to(x.dtype)

    def compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's operation with ``weight`` in place of its own."""
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        if isinstance(layer, nn.Embedding):
            return F.embedding(x, weight, layer.padding_idx, layer.max_norm, layer.norm_type,
                               layer.scale_grad_by_freq, layer.sparse)
        # Convolutions: the layer's own _conv_forward handles padding modes and groups.
        return layer._conv_forward(x, weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(self.smooth_input(x))
        return self.compute(x, self._weight())

    def _load_packed(self, state_dict: dict, prefix: str, *args) -> None:
        if prefix + "smoothing" in state_dict and self.smoothing is None:
            # A None buffer is not loaded: make room for the factors, which load as usual.
            self.smoothing = torch.ones_like(state_dict[prefix + "smoothing"], dtype=torch.float32)
        key = prefix + "weight_packed"
        if key not in state_dict:
            return
        scheme = self.weight_scheme
        weight = self.layer.weight
        scale = state_dict.pop(prefix + "weight_scale")
        if self.low_bit:
            codes = unpack_codes(state_dict.pop(key), scheme, weight.numel())
            self.weight_qparams = LowBitParams(scale=scale, scheme=scheme)
        else:
            codes = unpack_bits(state_dict.pop(key), scheme.bits, weight.numel(), scheme.qmin)
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
        if self.low_bit:
            text = f"{scheme.format} {text}"
        if self.weight_step is not None:
            text += ", lsq"
        if self.input_scheme is not None:
            text += f", a{self.input_scheme.bits}"
        return f"{text}, mode={self.mode}"


def _packed_state(module: QuantizedLayer, state_dict: dict, prefix: str, _metadata) -> None:
    """State-dict hook: replace the float weight of a frozen layer by its packed integers."""
    if module.weight_int is None or module.mode not in ("quantize", "dynamic"):
        return
    scheme = module.weight_scheme
    del state_dict[prefix + "layer.weight"]
    state_dict[prefix + "weight_packed"] = (
        pack_codes(module.weight_int, scheme) if module.low_bit
        else pack_bits(module.weight_int, scheme.bits, scheme.qmin))
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
    """Set every QuantizedLayer and every weight-only quantized tensor to ``mode``."""
    from nnzip.quant.parametrized import quantized_weights  # it builds on this module

    for layer in quantized_layers(model).values():
        layer.set_mode(mode)
    for quantizer, original in quantized_weights(model).values():
        quantizer.set_mode(mode, original)
