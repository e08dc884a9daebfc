"""The coverage of a quantization method, in the names of the model the user passed in.

A quantized model differs from its float original in structure (BatchNorm folded, attention
unfused into four Linears, layers wrapped), so :func:`quant_coverage` maps every quantized weight
back to the parameter it came from (``blocks.0.attn.q_proj.weight`` to the q rows of
``blocks.0.attn.in_proj_weight``) and says per parameter what was done ("int8 per-channel
weights, int8 activations", "weight-only int8 per-channel (activations float: the LSTM kernel is
fused)") or why it was left.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from nnzip.core.coverage import Coverage, build_coverage
from nnzip.quant.modules import QuantizedLayer, quantized_layers
from nnzip.quant.parametrized import WeightQuantizer, quantized_weights


def _weights_text(scheme) -> str:
    if getattr(scheme, "format", "affine") in ("binary", "ternary"):
        return f"{scheme.format} per-channel weights"
    prefix = "pow2 " if getattr(scheme, "format", "affine") == "pow2" else "int"
    granularity = {"tensor": "per-tensor", "channel": "per-channel"}.get(
        scheme.granularity, f"group-{getattr(scheme, 'group_size', '')}")
    return f"{prefix}{scheme.bits} {granularity} weights"


def describe_layer(layer: QuantizedLayer) -> str:
    """What a QuantizedLayer does to its weight and input, in words."""
    weights = _weights_text(layer.weight_scheme)
    if isinstance(layer.layer, nn.Embedding):
        return f"weight-only {weights.removesuffix(' weights')} (embedding rows)"
    if layer.weight_only_reason is not None:
        return f"{weights}, {layer.weight_only_reason}"
    if layer.input_scheme is None:
        return f"weight-only {weights.removesuffix(' weights')}"
    activations = f"int{layer.input_scheme.bits} activations"
    if layer.mode == "dynamic":
        activations = f"int{layer.input_scheme.bits} dynamic (per-batch) activations"
    return f"{weights}, {activations}"


def describe_weight(quantizer: WeightQuantizer) -> str:
    weights = _weights_text(quantizer.weight_scheme).removesuffix(" weights")
    return f"weight-only {weights} ({quantizer.reason})" if quantizer.reason \
        else f"weight-only {weights}"


def _merge(parts: dict[str, str]) -> str:
    """One note for a parameter several projections came from (in_proj_weight: q, k, v)."""
    if list(parts) == [""]:
        return parts[""]
    notes = set(parts.values())
    if len(notes) == 1:
        return f"{', '.join(parts)} projections: {notes.pop()}"
    return "; ".join(f"{part}: {note}" for part, note in parts.items())


def quant_coverage(original: nn.Module, quantized: nn.Module, method: str, *,
                   origins: Mapping[str, tuple[str, str]] | None = None,
                   skipped: Mapping[str, str] | None = None,
                   notes: Mapping[str, str] | None = None,
                   also_changed: Mapping[str, str] | None = None) -> Coverage:
    """Coverage of ``method`` over ``original``'s parameters.

    ``origins`` maps weight names of the quantized model to (original name, part) (from
    :func:`nnzip.quant.attention.unfuse_attention`); ``skipped`` maps weight names of the
    quantized model's float structure to why they were left; ``notes`` adds to the description
    of a quantized layer or weight, by its name (e.g. ", GPTQ rounding"); ``also_changed``
    names parameters a method changed without quantizing them (a LayerNorm AWQ folded its
    scales into), with what was done.
    """
    origins, notes = origins or {}, notes or {}
    changed: dict[str, dict[str, str]] = {}
    left: dict[str, dict[str, str]] = {}

    def place(table: dict[str, dict[str, str]], working: str, note: str) -> None:
        name, part = origins.get(working, (working, ""))
        table.setdefault(name, {})[part if part in ("q", "k", "v") else ""] = note

    for name, layer in quantized_layers(quantized).items():
        place(changed, f"{name}.weight", describe_layer(layer) + notes.get(name, ""))
    for name, (quantizer, _) in quantized_weights(quantized).items():
        place(changed, name, describe_weight(quantizer) + notes.get(name, ""))
    for name, note in (also_changed or {}).items():
        place(changed, name, note)
    for name, reason in (skipped or {}).items():
        place(left, name, reason)
    for name, parts in left.items():  # a projection left float beside quantized ones
        if name in changed:
            changed[name].update({part: f"not quantized: {reason}"
                                  for part, reason in parts.items()})
    return build_coverage(original, method,
                          changed={name: _merge(parts) for name, parts in changed.items()},
                          skipped={name: _merge(parts) for name, parts in left.items()
                                   if name not in changed})
