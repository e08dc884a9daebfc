"""Quantization: affine math, observers, quantized layers, static and dynamic PTQ (with
CLE, bias correction and GPTQ), QAT (STE or LSQ), mixed precision, and low-bit weights
(binary, ternary, power-of-two).

```python
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
    quantize,
)
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
    quantize_mixed,
)
from nnzip.quant.modules import QuantizedLayer, quantized_layers, set_mode
from nnzip.quant.observers import OBSERVERS, make_observer, mse_weight_qparams
from nnzip.quant.ptq import (
    QuantConfig,
    calibrate,
    convert,
    prepare,
    quantizable_layers,
    quantize_dynamic,
    quantize_static,
    selected_layers,
    static_ptq,
)
from nnzip.quant.qat import quantization_aware_training
from nnzip.quant.stages import QAT, MixedPrecision, Quantize

__all__ = [
    "BitSensitivity", "LowBitParams", "LowBitScheme", "MixedPrecision", "MixedPrecisionPlan",
    "OBSERVERS", "QAT", "QParams", "QScheme", "QuantConfig", "Quantize", "QuantizedLayer",
    "allocate_bits", "bias_correction", "binary_weights", "bit_sensitivity", "calibrate",
    "convert", "cross_layer_equalization", "dequantize", "equalizable_pairs", "fake_quantize",
    "gptq", "gptq_quantize_weight", "lowbit_dequantize", "lowbit_fake_quantize", "lowbit_quantize",
    "lsq_fake_quantize", "lsq_gradient_scale", "make_observer", "minmax_qparams",
    "mse_weight_qparams", "pack_codes", "pow2_weights", "prepare", "qparams_from_range",
    "quantizable_layers", "quantization_aware_training", "quantization_error", "quantize",
    "quantize_dynamic", "quantize_mixed", "quantize_static", "quantized_layers", "selected_layers",
    "set_mode", "static_ptq", "ternary_weights", "unpack_codes",
]
