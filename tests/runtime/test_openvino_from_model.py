"""OvModule.from_model: an openvino.Model held in memory (converted, or quantized by NNCF) run
through the same wrapper as a file, pinned or with the CPU plugin's default precision, which it
records as resolved."""

import pytest
import torch

from nnzip.runtime import OrtModule, OvModule, export_onnx
from nnzip.runtime.openvino import cpu_capabilities

ov = pytest.importorskip("openvino", reason="needs the openvino extra")


def test_from_model_runs_like_the_file_and_records_the_resolved_precision(trained_mlp, digits,
                                                                         tmp_path):
    path = export_onnx(trained_mlp, tmp_path / "mlp.onnx", digits.test.tensors[0][:2])
    x = digits.test.tensors[0][:16]
    pinned = OvModule.from_model(ov.convert_model(str(path)), precision="f32")
    assert torch.allclose(pinned(x), OrtModule(path)(x), atol=1e-4, rtol=0)
    assert (pinned.precision, pinned.static_shapes, len(pinned._compiled)) == ("f32", True, 1)
    default = OvModule.from_model(ov.convert_model(str(path)), precision=None)
    assert default.precision is None  # nothing compiled yet: nothing resolved
    logits = default(x)
    # The CPU plugin's default hint: bf16 where the CPU has it (AMX, AVX-512 BF16), else f32.
    assert default.precision == ("bf16" if "BF16" in cpu_capabilities() else "f32")
    assert (logits.argmax(1) == pinned(x).argmax(1)).float().mean() >= 0.9
    default(x[:3])  # a second shape compiles with the precision the first resolved
    assert default.precision == ("bf16" if "BF16" in cpu_capabilities() else "f32")
