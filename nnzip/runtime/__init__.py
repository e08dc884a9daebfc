"""Runtimes: ONNX export (QDQ with nnzip's own scales), ONNX Runtime execution, deployment.

```python
from nnzip.runtime import export_onnx, OrtModule, deploy
export_onnx(int8_model, "model.onnx", example)     # int8 weights + QuantizeLinear/DequantizeLinear
ort_model = OrtModule("model.onnx")                # callable like the torch model
ov_model = OvModule("model.onnx")                  # the same in OpenVINO (optional extra)
deployment = deploy(model, data, "runs/deploy")    # fastest correct runtime on this machine
```
"""

from nnzip.runtime.deploy import (
    Deployment,
    Runtime,
    build_runtimes,
    deploy,
    float_for_export,
)
from nnzip.runtime.onnx_export import QDQLayer, export_onnx, export_view
from nnzip.runtime.openvino import OvModule
from nnzip.runtime.qdq_graph import integer_report, integer_summary
from nnzip.runtime.session import OrtModule, integer_op_count, op_counts, to_qoperator

__all__ = ["Deployment", "OrtModule", "OvModule", "QDQLayer", "Runtime", "build_runtimes", "deploy",
           "export_onnx", "export_view", "float_for_export", "integer_op_count", "integer_report",
           "integer_summary", "op_counts", "to_qoperator"]
