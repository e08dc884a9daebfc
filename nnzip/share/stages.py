"""Recipe stages ``cluster``, ``product_quantize`` and ``encode`` (the .nnz file).

Thin wrappers over :mod:`nnzip.share.cluster` and :mod:`nnzip.codec`; both sharing stages train
the shared values afterwards with the shared fine-tune loop (assignments fixed, centroid
gradients summed per cluster), and from then on the report weighs the model as an .nnz file.

```yaml
stages:
  - cluster: {conv_bits: 8, linear_bits: 5, init: linear, finetune_epochs: 4, lr: 1.0e-4}
  - product_quantize: {dim: 4, bits: 8, lbg: true, finetune_epochs: 2}
  - encode: {huffman: true}      # measure (and save) the model as a Huffman-coded .nnz file
```
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from nnzip.codec.nnz import set_codec_options
from nnzip.core.coverage import MethodResult
from nnzip.models.nnz import layer_table
from nnzip.models.zoo import model_spec
from nnzip.share.cluster import cluster_weights_result, product_quantize_result, summary_json
from nnzip.share.modules import round_codebooks
from nnzip.stage import Context, Stage
from nnzip.train import FinetunedStage, fit


def _record_table(model: nn.Module, context: Context) -> None:
    if model_spec(model) is not None:
        context.record("layer_compression", layer_table(model))


class _SharingStage(FinetunedStage):
    records_coverage = True

    lr: float = Field(1e-4, gt=0)
    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    codebook_dtype: Literal["float32", "float16"] = "float16"

    def _finish(self, model: nn.Module, context: Context, result: MethodResult) -> nn.Module:
        info = summary_json(result.details)
        context.record("coverage", result.coverage.to_dict())
        context.record("layer_bits", {name: row["bits"] for name, row in info.items()})
        context.record("weight_error", {name: round(row["relative_error"], 6)
                                        for name, row in info.items()})
        context.record("clusters", {name: row["clusters"] for name, row in info.items()})
        config = self.finetune_config(context)
        if config.epochs:
            result = fit(model, context.data, config, progress=context.progress,
                         description=f"{self.kind}: train centroids")
            context.record("finetune_best_val_accuracy", round(result.best_val_accuracy, 4))
        context.record("finetune_epochs", config.epochs)
        if self.codebook_dtype == "float16":
            round_codebooks(model, torch.float16)
        context.record("codebook_dtype", self.codebook_dtype)
        set_codec_options(model, huffman=False)
        _record_table(model, context)
        return model


class Cluster(_SharingStage):
    """Weight sharing (Deep Compression): k-means or GMM per layer, then trained centroids.

    Bits per layer: ``layer_bits`` ({layer: bits}) over ``conv_bits`` / ``linear_bits`` over
    ``bits``. ``init``: linear (best in the paper), density or random. Pruned layers keep their
    zeros (a fixed zero code). ``finetune_epochs`` train the centroids (Adam, ``lr``); then
    ``codebook_dtype: float16`` rounds them to half precision, which the .nnz file then stores
    losslessly in 2 bytes each (the measured accuracy is that of the rounded model).
    """

    kind = "cluster"

    bits: int | None = Field(None, ge=1, le=16)
    conv_bits: int | None = Field(None, ge=1, le=16)
    linear_bits: int | None = Field(None, ge=1, le=16)
    layer_bits: dict[str, int] = Field(default_factory=dict)
    method: Literal["kmeans", "gmm"] = "kmeans"
    init: Literal["linear", "density", "random"] = "linear"

    @model_validator(mode="after")
    def _some_bits(self) -> Cluster:
        if self.bits is None and self.conv_bits is None and self.linear_bits is None \
                and not self.layer_bits:
            raise ValueError("say how many bits per shared weight: bits (all layers), or "
                             "conv_bits and linear_bits, e.g. conv_bits: 8, linear_bits: 5")
        for name, bits in self.layer_bits.items():
            if not 1 <= bits <= 16:
                raise ValueError(f"layer_bits[{name!r}] must be from 1 to 16, got {bits}")
        return self

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        result = cluster_weights_result(
            model, self.bits, conv_bits=self.conv_bits, linear_bits=self.linear_bits,
            layer_bits_map=self.layer_bits, layers=self.layers, exclude=self.exclude,
            method=self.method, init=self.init, seed=context.seed)
        context.record("method", self.method)
        context.record("init", self.init)
        return self._finish(model, context, result)


class ProductQuantize(_SharingStage):
    """Product quantization: rows cut into ``dim``-weight sub-vectors, one codebook of
    ``2^bits`` codewords per layer (k-means, or LBG splitting with ``lbg``), then trained."""

    kind = "product_quantize"

    dim: int = Field(4, ge=1)
    bits: int = Field(8, ge=1, le=16)
    lbg: bool = False
    iterations: int = Field(30, ge=0)

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        result = product_quantize_result(model, self.dim, self.bits, layers=self.layers,
                                         exclude=self.exclude, lbg=self.lbg,
                                         iterations=self.iterations, seed=context.seed)
        context.record("dim", self.dim)
        return self._finish(model, context, result)


class Encode(Stage):
    """From here on, measure and save the model as an .nnz file (optionally Huffman-coded).

    The model itself is unchanged; the report's size becomes the file's bytes, and the stage
    records the per-layer table of kept weights, bits and bytes after each step.
    """

    kind = "encode"

    huffman: bool = True

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        set_codec_options(model, huffman=self.huffman)
        context.record("huffman", self.huffman)
        _record_table(model, context)
        return model
