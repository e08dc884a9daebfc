"""Weight-only quantization of weights no module swap can reach, as a parametrization.

An LSTM/GRU keeps its gate matrices as bare parameters of one fused kernel; a user's module may
pass its own parameters to ``F.linear``/``F.conv2d``; an output layer may share its weight with
the embedding; a fused ``nn.MultiheadAttention`` reads ``out_proj.weight`` itself. None of those
can be wrapped in a :class:`~nnzip.quant.modules.QuantizedLayer`, but each is read as
``module.<name>``: :class:`WeightQuantizer`, registered with ``torch.nn.utils.parametrize``,
makes that read return the quantized weight, so every reader (the fused kernel, the functional
call, both users of a tied tensor) uses the same integers. Activations stay float there: only the
weight is visible.

The quantizer has the modes of a QuantizedLayer: ``observe``/``float`` read the float weight,
``quantize`` the integers (rounded once by :meth:`WeightQuantizer.freeze`), ``train`` fakes the
rounding with the straight-through estimator (QAT). Once frozen the state dict stores the
integers bit-packed in place of the float original, as a QuantizedLayer's does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnzip.codec.bitpack import pack_bits, unpack_bits
from nnzip.quant.affine import QParams, dequantize, fake_quantize, quantize
from nnzip.quant.lowbit import (
    LowBitParams,
    LowBitScheme,
    lowbit_dequantize,
    lowbit_fake_quantize,
    lowbit_quantize,
    pack_codes,
    unpack_codes,
)
from nnzip.quant.modules import Mode, WeightRange, WeightScheme, weight_qparams


class WeightQuantizer(nn.Module):
    """Parametrization: the weight as its (fake-)quantized integers, per output channel."""

    def __init__(self, scheme: WeightScheme, weight_range: WeightRange = "minmax",
                 reason: str = "") -> None:
        super().__init__()
        self.weight_scheme = scheme
        self.weight_range = weight_range if not isinstance(scheme, LowBitScheme) else "minmax"
        #: Why this weight is quantized weight-only (for the coverage report).
        self.reason = reason
        self.mode: Mode = "observe"
        self.register_buffer("weight_int", None, persistent=False)
        self.weight_qparams: QParams | LowBitParams | None = None
        self._dequantized: torch.Tensor | None = None
        self._packed: torch.Tensor | None = None

    @property
    def low_bit(self) -> bool:
        return isinstance(self.weight_scheme, LowBitScheme)

    def freeze(self, original: torch.Tensor) -> None:
        """Round ``original`` to its integers; reads in ``quantize`` mode return them."""
        weight = original.detach()
        if self.low_bit:
            self.weight_int, self.weight_qparams = lowbit_quantize(weight, self.weight_scheme)
        else:
            self.weight_qparams = weight_qparams(weight, self.weight_scheme, self.weight_range)
            self.weight_int = quantize(weight, self.weight_qparams)
        self._dequantized = self._packed = None
        self.mode = "quantize"

    def dequantized(self, like: torch.Tensor) -> torch.Tensor:
        """The weight the kernel uses, computed once per set of integers (every read of an LSTM
        weight, every forward of a tied decoder, would otherwise dequantize it again)."""
        if self._dequantized is None:
            weight = (lowbit_dequantize(self.weight_int, self.weight_qparams) if self.low_bit
                      else dequantize(self.weight_int, self.weight_qparams))
            self._dequantized = weight.to(like.dtype)
        return self._dequantized

    def packed(self) -> torch.Tensor:
        """The integers bit-packed (one tensor, so a tied weight's two entries are one)."""
        if self._packed is None:
            scheme = self.weight_scheme
            self._packed = (pack_codes(self.weight_int, scheme) if self.low_bit
                            else pack_bits(self.weight_int, scheme.bits, scheme.qmin))
        return self._packed

    def load_packed(self, packed: torch.Tensor, scale: torch.Tensor,
                    like: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`packed` (a state dict being loaded); returns the float weight."""
        scheme = self.weight_scheme
        if self.low_bit:
            codes = unpack_codes(packed, scheme, like.numel())
            self.weight_qparams = LowBitParams(scale=scale, scheme=scheme)
        else:
            codes = unpack_bits(packed, scheme.bits, like.numel(), scheme.qmin)
            self.weight_qparams = QParams(scale=scale, scheme=scheme,
                                          zero_point=torch.zeros_like(scale, dtype=torch.int32))
        self.weight_int = codes.reshape(like.shape).to(torch.int8)
        self._dequantized = self._packed = None
        self.mode = "quantize"
        return self.dequantized(like)

    def set_mode(self, mode: Mode, original: torch.Tensor) -> None:
        if mode in ("quantize", "dynamic") and (self.weight_int is None or self.mode == "train"):
            self.freeze(original)  # after training, the trained weight is rounded again
        self.mode = mode

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        if self.mode in ("observe", "float") or (self.weight_int is None
                                                  and self.mode != "train"):
            return original
        if self.mode == "train":
            if self.low_bit:
                return lowbit_fake_quantize(original, self.weight_scheme)
            return fake_quantize(original, weight_qparams(original, self.weight_scheme,
                                                          self.weight_range))
        return self.dequantized(original)

    def extra_repr(self) -> str:
        scheme = self.weight_scheme
        text = f"w{scheme.bits} {scheme.granularity}, weight-only"
        if self.low_bit:
            text = f"{scheme.format} {text}"
        return f"{text}, mode={self.mode}"


def _packed_original(plist: nn.Module, state_dict: dict, prefix: str, _metadata) -> None:
    """State-dict hook of a ParametrizationList: frozen integers replace the float original."""
    quantizer = plist[0]
    if not isinstance(quantizer, WeightQuantizer) or quantizer.weight_int is None \
            or quantizer.mode not in ("quantize", "dynamic"):
        return
    del state_dict[prefix + "original"]
    state_dict[prefix + "original_packed"] = quantizer.packed()
    state_dict[prefix + "original_scale"] = quantizer.weight_qparams.scale.float()


def _load_packed_original(plist: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    key = prefix + "original_packed"
    quantizer = plist[0]
    if key not in state_dict or not isinstance(quantizer, WeightQuantizer):
        return
    state_dict[prefix + "original"] = quantizer.load_packed(
        state_dict.pop(key), state_dict.pop(prefix + "original_scale"), plist.original)


def attach(owners: list[tuple[nn.Module, str]], quantizer: WeightQuantizer) -> None:
    """Register ``quantizer`` on every (module, attribute) holding one tensor: a tied weight
    is read through the same quantizer, hence the same integers, by each of its users."""
    for module, attr in owners:
        parametrize.register_parametrization(module, attr, quantizer, unsafe=True)
        plist = module.parametrizations[attr]
        plist._register_state_dict_hook(_packed_original)
        plist._register_load_state_dict_pre_hook(_load_packed_original, with_module=True)


def quantized_weights(model: nn.Module) -> dict[str, tuple[WeightQuantizer, torch.Tensor]]:
    """Every WeightQuantizer of ``model`` once, by the first name of the weight it reads
    (``rnn.weight_ih_l0``), with that weight's float original."""
    found: dict[str, tuple[WeightQuantizer, torch.Tensor]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            quantizer = plist[0]
            if isinstance(quantizer, WeightQuantizer) and id(quantizer) not in seen:
                seen.add(id(quantizer))
                found[f"{name}.{attr}" if name else attr] = (quantizer, plist.original)
    return found


def remove_quantizers(model: nn.Module) -> nn.Module:
    """Turn every weight-only quantized tensor of ``model`` back into a plain parameter holding
    its quantized values (tied tensors stay one parameter), in place.

    ``torch.nn.utils.parametrize.remove_parametrizations`` deletes the weight's property from
    the injected class, which a deep copy shares with the model it was copied from: on a copy it
    would break the original. The module's own class is restored here instead.
    """
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        plists = dict(module.parametrizations.items())
        if not all(len(p) == 1 and isinstance(p[0], WeightQuantizer) for p in plists.values()):
            raise NotImplementedError(f"{type(module).__name__} has parametrizations besides "
                                      "nnzip's quantizers; remove those first")
        values = {attr: getattr(module, attr).detach().clone() for attr in plists}
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        for attr, plist in plists.items():
            original = plist.original
            with torch.no_grad():
                original.copy_(values[attr])
            module.register_parameter(attr, original)
    return model
