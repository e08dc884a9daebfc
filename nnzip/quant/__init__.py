"""Quantization: affine math, observers, quantized layers, static/dynamic PTQ, QAT, mixed bits.

```python
from nnzip.quant import QuantConfig, quantize_static, quantize_dynamic
int8 = quantize_static(model, calibration_batches(data, 8))       # W8A8, per-channel weights
w4 = quantize_static(model, batches, QuantConfig(weight_bits=4, weight_range="mse"))
dyn = quantize_dynamic(model)                                     # Linear layers, int8
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
)
from nnzip.quant.qat import quantization_aware_training
from nnzip.quant.stages import QAT, MixedPrecision, Quantize

__all__ = [
    "OBSERVERS", "QAT", "BitSensitivity", "MixedPrecision", "MixedPrecisionPlan", "QParams",
    "QScheme", "QuantConfig", "Quantize", "QuantizedLayer", "allocate_bits", "bit_sensitivity",
    "calibrate", "quantization_aware_training", "quantize_mixed", "selected_layers",
    "convert", "dequantize", "fake_quantize", "make_observer", "minmax_qparams",
    "mse_weight_qparams", "prepare", "qparams_from_range", "quantizable_layers",
    "quantization_error", "quantize", "quantize_dynamic", "quantize_static", "quantized_layers",
    "set_mode",
]
