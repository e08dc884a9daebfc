"""What compression methods leave in a model, as the codec's compact values, and the plain model
those values decode to.

This is the one place that knows the method families' modules (:mod:`nnzip.share`'s shared
weights, :mod:`nnzip.quant`'s quantized layers): the codec only sees :class:`Coded` (codebook +
codes) and :class:`Integer` values, and the families never import the codec's model glue. Every
compact value is checked against the float tensor the model actually uses, so a file never holds
a weight the model did not compute with.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnzip.codec.tensors import Coded, Integer
from nnzip.errors import NnzipError
from nnzip.models.surgery import set_module

log = logging.getLogger(__name__)

Compact = torch.Tensor | Coded | Integer


class StructureChanged(NnzipError):
    """A zoo model no longer has the modules or shapes its zoo spec describes."""


def _quantized_layer_type() -> type | None:
    try:
        from nnzip.quant.modules import QuantizedLayer
    except ImportError:  # pragma: no cover - a family is a part of nnzip; only a broken install
        return None
    return QuantizedLayer


def integer_weight(module: nn.Module) -> tuple[nn.Module, Integer | torch.Tensor] | None:
    """(the wrapped float layer, its integer weight — or its exact float weight) for a
    weight-quantized layer of nnzip.quant; None for any other module.

    Relies only on a few attributes (``layer``, ``input_scheme``, ``weight_int``,
    ``weight_qparams.scale`` / ``.zero_point``, ``dequantized_weight()``) and checks, before
    trusting them, that ``(q − zero_point) · scale`` reproduces the layer's own float weight bit
    for bit. Anything else (group-wise or low-bit formats whose decoding differs) comes back as
    that exact float weight instead.
    """
    quantized_layer = _quantized_layer_type()
    if quantized_layer is None or not isinstance(module, quantized_layer):
        return None
    if getattr(module, "input_scheme", None) is not None:
        raise NnzipError("the .nnz file stores integer weights, not quantized activations: "
                         "quantize with activation_bits: null (weights only), or deploy the "
                         "activation-quantized model as ONNX (nnzip deploy)")
    with torch.no_grad():
        weight = module.dequantized_weight().detach()
        try:
            values = module.weight_int.detach().to(torch.int64)
            scale = module.weight_qparams.scale.detach().float()
            zero_point = module.weight_qparams.zero_point.detach()
            low, high = int(values.min()), int(values.max())
            bits = max(1, (high - low).bit_length())
            for view in (None, (values.shape[0], -1)):
                integer = Integer(values=values, bits=bits, low=low, scale=scale,
                                  zero_point=zero_point, scheme={}, view=view)
                try:
                    decoded = integer.dequantize()
                except RuntimeError:  # the scale does not broadcast against this view
                    continue
                if _same_bits(decoded, weight):
                    return module.layer, integer
        except (AttributeError, RuntimeError, TypeError, ValueError) as error:
            log.debug("integer weight not representable as (q - zp) * scale: %s", error)
    log.info("quantized weight stored as its exact float values (format not affine per "
             "tensor/channel)")
    return module.layer, weight


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def decoded(value: Compact) -> torch.Tensor:
    """The float tensor a compact value stands for."""
    if isinstance(value, Coded):
        return value.codebook[value.codes.reshape(-1)].reshape(value.shape)
    if isinstance(value, Integer):
        return value.dequantize()
    return value


def shared_tensors(model: nn.Module) -> dict[str, Coded]:
    """Every weight-shared tensor of ``model`` as codebook + codes, by its plain name."""
    from nnzip.share.modules import shared_weights

    return {name: Coded(codebook=table.table().detach(), codes=table.codes, bits=table.bits,
                        shape=table.shape)
            for name, table in shared_weights(model).items()}


def compact_tensors(model: nn.Module, names: list[str]) -> dict[str, Compact]:
    """Each plain state-dict name of ``model`` → its tensor, its codes or its integer weight.

    Works through the parametrizations of weight sharing and the wrappers of quantization, so
    the result holds the names of the plain architecture (a zoo model's names).
    """
    shared = shared_tensors(model)
    tensors: dict[str, Compact] = {}
    for name in names:
        module_name, _, attribute = name.rpartition(".")
        try:
            module = model.get_submodule(module_name) if module_name else model
        except AttributeError as error:
            raise StructureChanged(f"the model has no {module_name!r} any more ({error}): it "
                                   "no longer matches its zoo architecture") from error
        bridged = integer_weight(module)
        if bridged is not None:
            module, integer = bridged
            if attribute == "weight":
                tensors[name] = integer
                continue
        if name in shared:
            tensors[name] = shared[name]
            continue
        value = getattr(module, attribute, None)
        if not isinstance(value, torch.Tensor):
            raise StructureChanged(f"the model has no tensor {name!r}: it no longer matches its "
                                   "zoo architecture (e.g. after structured pruning)")
        tensors[name] = value.detach()
    return tensors


def _bake_parametrizations(model: nn.Module) -> None:
    """Replace every parametrized tensor of ``model`` (a copy) by a plain tensor holding its
    current value.

    Not ``parametrize.remove_parametrizations``: it deletes the tensor's property from the
    module's injected ``Parametrized…`` class, which a deepcopy shares with the original model,
    so the original would lose its weight. The copy is switched back to its own class instead
    (torch injects the class as a direct subclass of it). Two modules whose parametrizations
    share their original tensors and chain (a tied weight) get one tensor again.
    """
    baked: dict[tuple, torch.Tensor] = {}
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        values = {}
        with torch.no_grad():
            for tensor_name, chain in module.parametrizations.items():
                originals = [*chain.parameters(recurse=False), *chain.buffers(recurse=False)]
                key = (tuple(id(t) for t in originals), tuple(id(p) for p in chain))
                is_parameter = any(True for _ in chain.parameters(recurse=False))
                values[tensor_name] = (key, is_parameter, getattr(module, tensor_name).detach())
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        for tensor_name, (key, is_parameter, value) in values.items():
            if key not in baked:
                baked[key] = nn.Parameter(value.clone()) if is_parameter else value.clone()
            if is_parameter:
                setattr(module, tensor_name, baked[key])
            else:
                module.register_buffer(tensor_name, baked[key])


def plain_model(model: nn.Module) -> tuple[nn.Module, dict[str, Coded | Integer]]:
    """A model that computes exactly what ``model`` computes, with the methods' wrappers baked
    in, and the compact form of each baked weight by its name in that model.

    Parametrizations (weight sharing, masks) are replaced by their current values; a weight-only
    quantized layer by its float layer holding the dequantized weight (a model that quantizes
    activations is refused, as for zoo models: it deploys as ONNX). ``model`` itself comes back,
    uncopied, when there is nothing to bake.
    """
    quantized_layer = _quantized_layer_type()
    layers = [(name, module) for name, module in model.named_modules()
              if quantized_layer is not None and isinstance(module, quantized_layer)]
    for _, module in layers:
        if getattr(module, "input_scheme", None) is not None:
            integer_weight(module)  # raises: activation-quantized models deploy as ONNX
    quantized = [name for name, module in layers if getattr(module, "mode", None) == "quantize"
                 and getattr(module, "smoothing", None) is None]
    if not quantized and not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model, {}
    compact: dict[str, Coded | Integer] = dict(shared_tensors(model))
    plain = copy.deepcopy(model)
    _bake_parametrizations(plain)
    for name in quantized:
        module = plain.get_submodule(name)
        bridged = integer_weight(module)
        if bridged is None:
            continue
        layer, weight = bridged
        float_weight = decoded(weight)
        if not isinstance(getattr(layer, "weight", None), nn.Parameter) \
                or layer.weight.shape != float_weight.shape:
            continue  # not a plain layer we can hand the weight to: exported as it is
        layer.weight = nn.Parameter(float_weight.clone(), requires_grad=False)
        set_module(plain, name, layer)
        if isinstance(weight, Integer):
            compact[f"{name}.weight" if name else "weight"] = weight
    return plain, compact


def compact_if_exact(value: Coded | Integer | None, tensor: torch.Tensor) -> Compact:
    """``value`` if it decodes to ``tensor`` bit for bit, else ``tensor`` itself."""
    if value is not None and _same_bits(decoded(value), tensor.detach()):
        return value
    if value is not None:
        log.info("a compact weight does not reproduce the model's tensor exactly: stored as "
                 "its float values")
    return tensor
