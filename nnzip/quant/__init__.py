"""Quantization: affine math, observers, quantized layers, static and dynamic PTQ.

```python
from nnzip.quant import QuantConfig, quantize_static, quantize_dynamic
int8 = quantize_static(model, calibration_batches(data, 8))       # W8A8, per-channel weights
w4 = quantize_static(model, batches, QuantConfig(weight_bits=4, weight_range="mse"))
dyn = quantize_dynamic(model)                                     # Linear layers, int8
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
    "OBSERVERS", "QAT", "QParams", "QScheme", "QuantConfig", "Quantize", "QuantizedLayer",
    "calibrate", "quantization_aware_training",
    "convert", "dequantize", "fake_quantize", "make_observer", "minmax_qparams",
    "mse_weight_qparams", "prepare", "qparams_from_range", "quantizable_layers",
    "quantization_error", "quantize", "quantize_dynamic", "quantize_static", "quantized_layers",
    "set_mode",
]
