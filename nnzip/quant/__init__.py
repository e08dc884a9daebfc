"""Quantization: affine math, observers, quantized layers, static and dynamic PTQ, QAT (STE or
LSQ), and low-bit weights (binary, ternary, power-of-two).

```python
from nnzip.quant import QuantConfig, quantize_static, quantize_dynamic
int8 = quantize_static(model, calibration_batches(data, 8))       # W8A8, per-channel weights
w4 = quantize_static(model, batches, QuantConfig(weight_bits=4, weight_range="mse"))
dyn = quantize_dynamic(model)                                     # Linear layers, int8
w1, _ = quantization_aware_training(model, data, batches, QuantConfig(weight_format="binary"),
                                    TrainConfig(epochs=3, lr=1e-3))
w4, _ = quantization_aware_training(model, data, batches,
                                    QuantConfig(weight_bits=4, estimator="lsq"))
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
)
from nnzip.quant.qat import quantization_aware_training
from nnzip.quant.stages import QAT, Quantize

__all__ = [
    "OBSERVERS", "QAT", "LowBitParams", "LowBitScheme", "QParams", "QScheme", "QuantConfig",
    "Quantize", "QuantizedLayer", "binary_weights", "calibrate", "convert", "dequantize",
    "fake_quantize", "lowbit_dequantize", "lowbit_fake_quantize", "lowbit_quantize",
    "lsq_fake_quantize", "lsq_gradient_scale", "make_observer", "minmax_qparams",
    "mse_weight_qparams", "pack_codes", "pow2_weights", "prepare", "qparams_from_range",
    "quantizable_layers", "quantization_aware_training", "quantization_error", "quantize",
    "quantize_dynamic", "quantize_static", "quantized_layers", "set_mode", "ternary_weights",
    "unpack_codes",
]
