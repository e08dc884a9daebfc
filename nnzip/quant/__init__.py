"""Quantization: affine math, observers, quantized layers, static and dynamic PTQ (with
CLE, bias correction and GPTQ), QAT (STE or LSQ), mixed precision, and low-bit weights
(binary, ternary, power-of-two).

Every weight is reached wherever it lives: Linear and Conv layers are wrapped (weights and
activations quantized), ``nn.MultiheadAttention`` is first unfused into four Linears
(:mod:`nnzip.quant.attention`), and LSTM/GRU gates, functional parameters and tied tensors are
quantized weight-only by a parametrization (:mod:`nnzip.quant.parametrized`). Each method's
coverage says what it did to every parameter, and why it left the others.

```python
from nnzip.quant import Quantize, quantize
result = quantize(model, Quantize(), calibration=batches)         # MethodResult: W8A8
result.model, result.coverage.changed_fraction, result.coverage.skipped
from nnzip.quant import QuantConfig, quantize_static, quantize_dynamic
int8 = quantize_static(model, calibration_batches(data, 8))       # W8A8, per-channel weights
w4 = quantize_static(model, batches, QuantConfig(weight_bits=4, weight_range="mse"))
better = quantize_static(model, batches, QuantConfig(weight_bits=4, equalize=True,
                                                     rounding="gptq", bias_correction=True))
dyn = quantize_dynamic(model)                                     # Linear layers, int8
w1, _ = quantization_aware_training(model, data, batches, QuantConfig(weight_format="binary"),
                                    TrainConfig(epochs=3, lr=1e-3))
w4, _ = quantization_aware_training(model, data, batches,
                                    QuantConfig(weight_bits=4, estimator="lsq"))
mixed, plan = quantize_mixed(model, batches, val_batches, average_bits=4)   # W?A8, 4 bits mean
```
"""

from nnzip.quant.affine import (
    QParams,
    QScheme,
    dequantize,
    fake_quantize,
    minmax_qparams,
    qparams_from_range,
    quantization_error,
)
from nnzip.quant.attention import UnfusedMultiheadAttention, fuse_attention, unfuse_attention
from nnzip.quant.bias_correction import bias_correction
from nnzip.quant.equalize import cross_layer_equalization, equalizable_pairs
from nnzip.quant.gptq import gptq, gptq_quantize_weight
from nnzip.quant.lowbit import (
    LowBitParams,
    LowBitScheme,
    binary_weights,
    lowbit_dequantize,
    lowbit_fake_quantize,
    lowbit_quantize,
    pack_codes,
    pow2_weights,
    ternary_weights,
    unpack_codes,
)
from nnzip.quant.lsq import lsq_fake_quantize, lsq_gradient_scale
from nnzip.quant.mixed import (
    BitSensitivity,
    MixedPrecisionPlan,
    allocate_bits,
    bit_sensitivity,
    mixed_precision,
    quantize_mixed,
)
from nnzip.quant.modules import QuantizedLayer, quantized_layers, set_mode
from nnzip.quant.observers import OBSERVERS, make_observer, mse_weight_qparams
from nnzip.quant.parametrized import WeightQuantizer, quantized_weights
from nnzip.quant.ptq import (
    QuantConfig,
    calibrate,
    convert,
    dynamic_quantization,
    prepare,
    quantizable_layers,
    quantize_dynamic,
    quantize_static,
    selected_layers,
    static_ptq,
    static_quantization,
)
from nnzip.quant.qat import qat, quantization_aware_training
from nnzip.quant.stages import QAT, MixedPrecision, Quantize
from nnzip.quant.stages import quantize_model as quantize

__all__ = [
    "BitSensitivity", "LowBitParams", "LowBitScheme", "MixedPrecision", "MixedPrecisionPlan",
    "OBSERVERS", "QAT", "QParams", "QScheme", "QuantConfig", "Quantize", "QuantizedLayer",
    "UnfusedMultiheadAttention", "WeightQuantizer", "allocate_bits", "bias_correction",
    "binary_weights", "bit_sensitivity", "calibrate", "convert", "cross_layer_equalization",
    "dequantize", "dynamic_quantization", "equalizable_pairs", "fake_quantize", "fuse_attention",
    "gptq", "gptq_quantize_weight", "lowbit_dequantize", "lowbit_fake_quantize", "lowbit_quantize",
    "lsq_fake_quantize", "lsq_gradient_scale", "make_observer", "minmax_qparams",
    "mixed_precision", "mse_weight_qparams", "pack_codes", "pow2_weights", "prepare", "qat",
    "qparams_from_range", "quantizable_layers", "quantization_aware_training",
    "quantization_error", "quantize", "quantize_dynamic", "quantize_mixed", "quantize_static",
    "quantized_layers", "quantized_weights", "selected_layers", "set_mode", "static_ptq",
    "static_quantization", "ternary_weights", "unfuse_attention", "unpack_codes",
]
