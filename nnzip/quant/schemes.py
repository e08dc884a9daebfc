"""Named quantization schemes for transformer encoders: one table, shared by ``nnzip sts
--quantize`` and ``benchmarks/hf_quant.py``, so the command and the measurements cannot drift.

Each name says what is quantized and how; all are built from :class:`QuantConfig` and run by
:func:`dynamic_quantization` or :func:`static_quantization`. Measured on all-MiniLM-L6-v2, STS-B
dev (``benchmarks/results/hf_quant.md``): the embedding tables hold half of the fp32 bytes, so
every scheme but ``dynamic-int8`` stores them in int8 too (one scale per row).

SmoothQuant (Xiao et al. 2023) comes in two variants: ``w8a8-smoothquant`` smooths the Linears fed
by a LayerNorm (query, key, value and FC1), as the paper does; ``w8a8-smoothquant-all`` smooths
every Linear, and on MiniLM it is worse than no smoothing (FC2's input comes from GELU).

```python
from nnzip.quant.schemes import SCHEMES, quantize_scheme
result = quantize_scheme(encoder, "dynamic-int8-emb8")                 # no calibration needed
result = quantize_scheme(encoder, "weight-int4-gptq", calibration, group_size=128)
result.model, result.coverage, result.details
```
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from nnzip.core.coverage import MethodResult
from nnzip.errors import NnzipError
from nnzip.quant.ptq import QuantConfig, dynamic_quantization, static_quantization

#: The group size of the int4 schemes unless one is given (the benchmark also measures 128, 32).
DEFAULT_GROUP_SIZE = 64
#: α of both SmoothQuant schemes: half the difficulty to the weights, the paper's default.
SMOOTHQUANT_ALPHA = 0.5
#: The Linears whose input is a LayerNorm's output in BERT-style encoders (MiniLM, and the
#: ``attention.attention.*`` of Hugging Face's ViT): the ones the SmoothQuant paper smooths.
LAYERNORM_FED_SUFFIXES = (".query", ".key", ".value", "intermediate.dense")


@dataclass(frozen=True)
class QuantScheme:
    """A named way to quantize an encoder.

    ``dynamic``: activation ranges per batch at run time (Linear layers, no calibration);
    otherwise static, calibrated on training batches. ``smooth_layernorm_fed``: SmoothQuant on
    the LayerNorm-fed Linears only (found per model by :func:`layernorm_fed_linears`).
    """

    name: str
    summary: str
    config: QuantConfig
    dynamic: bool = False
    smooth_layernorm_fed: bool = False

    @property
    def group_wise(self) -> bool:
        return self.config.weight_granularity == "group"

    @property
    def needs_calibration(self) -> bool:
        return not self.dynamic

    def label(self, group_size: int | None = None) -> str:
        """The name, with the group size of a group-wise scheme (``weight-int4-gptq g64``)."""
        if not self.group_wise:
            return self.name
        return f"{self.name} g{group_size or self.config.group_size}"

    def config_for(self, model: nn.Module, group_size: int | None = None) -> QuantConfig:
        """The :class:`QuantConfig` for ``model``: the group size, the layers to smooth."""
        changes: dict = {}
        if group_size is not None:
            if not self.group_wise:
                raise NnzipError(f"{self.name} has one scale per channel, not groups: a group "
                                 "size applies to the weight-int4-* schemes")
            changes["group_size"] = group_size
        if self.dynamic:
            # Linear layers, as torch.ao.quantization.quantize_dynamic: there is no calibrated
            # range for anything else.
            changes.update(layer_types=(nn.Linear,), fold_batchnorm=False)
        if self.smooth_layernorm_fed:
            layers = layernorm_fed_linears(model)
            if not layers:
                raise NnzipError(f"{self.name} smooths the Linears fed by a LayerNorm (BERT-style "
                                 f"names ending in {', '.join(LAYERNORM_FED_SUFFIXES)}) and "
                                 f"{type(model).__name__} has none: use w8a8-smoothquant-all")
            changes["smoothquant_layers"] = layers
        return dataclasses.replace(self.config, **changes) if changes else self.config


def _scheme(name: str, summary: str, dynamic: bool = False, smooth_layernorm_fed: bool = False,
            **config) -> QuantScheme:
    return QuantScheme(name, summary, QuantConfig(**config), dynamic, smooth_layernorm_fed)


_INT4 = {"weight_bits": 4, "activation_bits": None, "weight_granularity": "group",
         "group_size": DEFAULT_GROUP_SIZE, "embedding_bits": 8}

#: Every scheme, in the order the benchmark reports them.
SCHEMES: dict[str, QuantScheme] = {scheme.name: scheme for scheme in (
    _scheme("dynamic-int8", "int8 Linear weights, int8 activations ranged per batch; fp32 "
            "embeddings", dynamic=True),
    _scheme("dynamic-int8-emb8", "dynamic-int8 + int8 embedding tables (one scale per row)",
            dynamic=True, embedding_bits=8),
    _scheme("weight-int8", "int8 weights (Linears and embeddings), float activations",
            activation_bits=None, embedding_bits=8),
    _scheme("w8a8", "int8 weights + int8 activations calibrated by min-max; int8 embeddings",
            embedding_bits=8),
    _scheme("w8a8-smoothquant-all", f"w8a8 + SmoothQuant α={SMOOTHQUANT_ALPHA} on every Linear",
            embedding_bits=8, smoothquant_alpha=SMOOTHQUANT_ALPHA),
    _scheme("w8a8-smoothquant", f"w8a8 + SmoothQuant α={SMOOTHQUANT_ALPHA} on the LayerNorm-fed "
            "Q/K/V/FC1 (the paper's)", smooth_layernorm_fed=True, embedding_bits=8,
            smoothquant_alpha=SMOOTHQUANT_ALPHA),
    _scheme("weight-int4-rtn", "int4 group-wise weights rounded to nearest; int8 embeddings",
            **_INT4),
    _scheme("weight-int4-gptq", "int4 group-wise weights rounded by GPTQ (Frantar et al. 2023); "
            "int8 embeddings", rounding="gptq", **_INT4),
)}

#: Names used before the schemes said what they are: ``{old: new}``.
RENAMED: dict[str, str] = {"dynamic": "dynamic-int8", "int8": "weight-int8",
                           "w8a8-smooth": "w8a8-smoothquant-all",
                           "int4-rtn": "weight-int4-rtn", "int4-gptq": "weight-int4-gptq"}


def find_scheme(name: str) -> QuantScheme:
    """The scheme called ``name`` (an old name in :data:`RENAMED` finds its new one); an unknown
    name is an error listing the valid ones."""
    name = RENAMED.get(name, name)
    if name in SCHEMES:
        return SCHEMES[name]
    close = difflib.get_close_matches(name, [*SCHEMES, *RENAMED], n=1)
    hint = f" (did you mean {RENAMED.get(close[0], close[0])!r}?)" if close else ""
    raise NnzipError(f"unknown quantization scheme {name!r}{hint}: choose from "
                     f"{', '.join(SCHEMES)}")


def layernorm_fed_linears(model: nn.Module) -> list[str]:
    """The Linears whose input is a LayerNorm's output in a BERT-style encoder: query, key,
    value and FC1 (``intermediate.dense``). FC2 and the attention output projection read GELU
    and attention outputs, which the SmoothQuant paper leaves unsmoothed."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.endswith(LAYERNORM_FED_SUFFIXES)]


def quantize_scheme(model: nn.Module, scheme: QuantScheme | str,
                    calibration: Iterable | None = None, *,
                    group_size: int | None = None) -> MethodResult:
    """Quantize a copy of ``model`` by ``scheme`` (a :class:`QuantScheme` or its name):
    the model (eval mode), its coverage and the details of the method.

    ``calibration``: batches of training inputs (token ids for an encoder), needed by every
    scheme but the dynamic ones. ``group_size``: that of a group-wise scheme (default 64).
    """
    scheme = find_scheme(scheme) if isinstance(scheme, str) else scheme
    config = scheme.config_for(model, group_size)
    if scheme.dynamic:
        return dynamic_quantization(model, config)
    if calibration is None:
        raise NnzipError(f"{scheme.name} is calibrated on training inputs: pass calibration="
                         "batches of token ids (nnzip.evaluate.embedding.token_batches of "
                         "calibration_sentences), or use a dynamic-int8 scheme")
    return static_quantization(model, calibration, config)
