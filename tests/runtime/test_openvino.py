"""OpenVINO as a runtime: OvModule computes what ONNX Runtime does, runs nnzip's QDQ convolutions
as int8, its IR reloads safely, and deploy offers it per batch size (or says why it could not)."""

import json
import math
import struct
import sys
import xml.etree.ElementTree as ElementTree

import pytest
import torch

from nnzip.cli import main
from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.models import create_model, load_model, save_model
from nnzip.quant import quantize_static
from nnzip.runtime import OrtModule, OvModule, deploy, export_onnx
from nnzip.runtime.deploy import pick
from nnzip.runtime.openvino import (
    MAX_STATIC_SHAPES,
    cpu_capabilities,
    integer_layer_count,
    runtime_precisions,
    save_ir,
)

pytest.importorskip("openvino", reason="needs the openvino extra")


@pytest.fixture
def fp32_onnx(trained_mlp, digits, tmp_path):
    return export_onnx(trained_mlp, tmp_path / "fp32.onnx", digits.test.tensors[0][:2])


@pytest.mark.parametrize("static_shapes", [False, True])
def test_ov_module_matches_onnxruntime_fp32_and_its_ir_reloads_as_run(fp32_onnx, digits,
                                                                      tmp_path, static_shapes):
    x = digits.test.tensors[0][:37]
    ort = OrtModule(fp32_onnx)(x)
    ov_module = OvModule(fp32_onnx, static_shapes=static_shapes)
    assert ov_module.precision == "f32"  # pinned, not the CPU plugin's bf16 default on AMX
    assert torch.allclose(ov_module(x), ort, atol=1e-4, rtol=0)
    assert torch.allclose(ov_module(x[:1]), ort[:1], atol=1e-4, rtol=0)  # a second shape
    if static_shapes:  # one compiled model per batch size, the oldest dropped past the cap
        for batch in range(2, 3 + MAX_STATIC_SHAPES):
            assert torch.allclose(ov_module(x[:batch]), ort[:batch], atol=1e-4, rtol=0)
        assert len(ov_module._compiled) == MAX_STATIC_SHAPES
    saved = save_ir(ov_module, tmp_path / "model.xml")
    assert (tmp_path / "model.bin").is_file()
    reloaded = load_model(saved)
    assert isinstance(reloaded, OvModule)
    assert (reloaded.precision, reloaded.static_shapes) == ("f32", static_shapes)
    assert torch.equal(reloaded(x), ov_module(x))


def test_openvino_runs_nnzip_qdq_convolutions_as_int8(digits, tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet8", input_shape=digits.input_shape,
                         num_classes=digits.num_classes)
    int8 = quantize_static(model, calibration_batches(digits, 2))
    qdq = export_onnx(int8, tmp_path / "qdq.onnx", digits.test.tensors[0][:2])
    module = OvModule(qdq)
    precisions = runtime_precisions(module)
    assert set(precisions["Convolution"]) <= {"u8", "i8"}  # every convolution runs on integers
    assert integer_layer_count(precisions) >= sum(precisions["Convolution"].values()) >= 9
    x = digits.test.tensors[0][:16]
    assert torch.equal(module(x).argmax(1), int8(x).argmax(1))


def test_deploy_offers_openvino_and_records_the_winner_per_batch_size(trained_mlp, digits,
                                                                      tmp_path):
    int8 = quantize_static(trained_mlp, calibration_batches(digits, 2))
    deployment = deploy(int8, digits, tmp_path, batch_sizes=(1, 16), repeats=2, samples=143,
                        max_accuracy_change=100, target_batch=16)
    names = {runtime.name for runtime in deployment.runtimes}
    skipped = {skip["runtime"]: skip["reason"] for skip in deployment.skipped}
    assert {"openvino-fp32", "openvino-fp32-static", "openvino-int8",
            "openvino-int8-static"} <= names
    if "BF16" in cpu_capabilities():
        assert {"openvino-bf16", "openvino-bf16-static", "openvino-int8-bf16",
                "openvino-int8-bf16-static"} <= names
    else:
        assert "has no BF16" in skipped["openvino-bf16"]
        assert "has no BF16" in skipped["openvino-int8-bf16"]
    summary = json.loads((tmp_path / "deploy.json").read_text())
    for batch in (1, 16):
        correct = [r for r in deployment.runtimes if r.correct]
        winner = pick(correct, batch)  # the fastest, or the smallest file within 3 % of it
        choice = summary["chosen"][str(batch)]
        assert choice["runtime"] == winner.name == deployment.chosen_by_batch[batch].name
        assert choice["file_bytes"] == winner.file_bytes
        runner_up = min((r for r in correct if r is not winner),
                        key=lambda r: r.latency_ms[batch]["p50"])
        assert choice["runner_up"] == runner_up.name
        assert choice["speedup_vs_runner_up"] == pytest.approx(
            runner_up.latency_ms[batch]["p50"] / winner.latency_ms[batch]["p50"], abs=1e-3)
    assert summary["saved"] == {"runtime": deployment.chosen_by_batch[16].name,
                                "batch_size": 16, "path": str(deployment.path)}
    assert summary["machine"]["openvino_version"] and summary["machine"]["onnxruntime_version"]
    assert "u8" in summary["runtimes"][[r["name"] for r in summary["runtimes"]].index(
        "openvino-int8")]["layer_precisions"]["FullyConnected"]


def test_an_openvino_winner_is_saved_as_ir_that_load_model_runs(trained_mlp, digits, tmp_path,
                                                               monkeypatch):
    def openvino_int8_fastest(models, **kwargs):  # the choice, not the clock, is under test
        return [{"p50": 1.0 if getattr(m, "path", None) and m.path.name == "qdq.onnx"
                 and isinstance(m, OvModule) and not m.static_shapes else 2.0, "p95": 2.0}
                for m in models]

    # nnzip.runtime.deploy the module (the package re-exports the function under that name)
    monkeypatch.setattr(sys.modules["nnzip.runtime.deploy"], "compare_latency",
                        openvino_int8_fastest)
    int8 = quantize_static(trained_mlp, calibration_batches(digits, 2))
    deployment = deploy(int8, digits, tmp_path / "out", batch_sizes=(1,), repeats=1,
                        samples=143, max_accuracy_change=100)
    assert deployment.chosen.name == "openvino-int8"
    assert deployment.path == tmp_path / "out" / "model.xml"
    assert (tmp_path / "out" / "model.bin").is_file()
    assert not (tmp_path / "out" / "model.onnx").exists()
    x = digits.test.tensors[0][:32]
    reloaded = load_model(deployment.path)
    assert isinstance(reloaded, OvModule)
    assert torch.equal(reloaded(x), deployment.chosen.module(x))


def test_missing_openvino_is_a_skip_with_a_reason_never_a_crash(trained_mlp, digits, tmp_path,
                                                               monkeypatch, fp32_onnx):
    ov_module = OvModule(fp32_onnx)
    save_ir(ov_module, tmp_path / "model.xml")
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    deployment = deploy(trained_mlp, digits, tmp_path / "out", batch_sizes=(1,), repeats=1,
                        samples=143)
    assert not [r for r in deployment.runtimes if r.name.startswith("openvino")]
    assert [skip["runtime"] for skip in deployment.skipped] == ["openvino-*"]
    assert "OpenVINO is not installed" in deployment.skipped[0]["reason"]
    assert deployment.machine["openvino_version"] is None
    with pytest.raises(NnzipError, match=r"pip install 'nnzip\[openvino\]'"):
        load_model(tmp_path / "model.xml")


def _first_float_constant(xml_path):
    root = ElementTree.parse(xml_path).getroot()
    return next(int(data.get("offset")) for data in
                root.iterfind("./layers/layer[@type='Const']/data")
                if data.get("element_type") == "f32" and int(data.get("size")) >= 4)


def test_ir_loader_refuses_truncated_weights_entities_and_nan(fp32_onnx, tmp_path, capsys):
    xml_path = save_ir(OvModule(fp32_onnx), tmp_path / "model.xml")
    bin_path = tmp_path / "model.bin"
    weights = bin_path.read_bytes()
    bin_path.write_bytes(weights[:-4])
    with pytest.raises(NnzipError, match="truncated"):
        load_model(xml_path)
    bin_path.unlink()
    with pytest.raises(NnzipError, match="needs its weights file model.bin"):
        load_model(xml_path)
    offset = _first_float_constant(xml_path)
    poisoned = bytearray(weights)
    poisoned[offset:offset + 4] = struct.pack("<f", math.nan)
    bin_path.write_bytes(bytes(poisoned))
    with pytest.raises(NnzipError, match="NaN"):
        load_model(xml_path)
    bin_path.write_bytes(weights)
    text = xml_path.read_text()
    laughs = text.replace("<net", '<!DOCTYPE net [<!ENTITY a "aaaaaaaa">]>\n<net', 1)
    xml_path.write_text(laughs)
    assert main(["eval", "--model", str(xml_path), "--data", "digits",
                 "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err
    assert "declares XML entities" in error and len(error.strip().splitlines()) == 1


def test_cli_deploy_prints_the_winner_per_batch_size(trained_mlp, tmp_path, capsys):
    model_dir = save_model(trained_mlp, tmp_path / "model")
    code = main(["deploy", "--model", str(model_dir), "--data", "digits", "--out",
                 str(tmp_path / "out"), "--batch-sizes", "1", "4", "--target-batch", "4",
                 "--repeats", "2", "--no-progress"])
    assert code == 0
    output = capsys.readouterr().out
    assert "runtime deployed per batch size" in output and "openvino" in output
    summary = json.loads((tmp_path / "out" / "deploy.json").read_text())
    assert f"the winner at batch 4: {summary['path']}" in " ".join(output.split())
    assert set(summary["chosen"]) == {"1", "4"}
    assert main(["deploy", "--model", str(tmp_path / "absent"), "--data", "digits", "--out",
                 str(tmp_path / "bad"), "--batch-sizes", "1", "--target-batch", "8"]) == 2
    assert "not among the timed batch sizes" in capsys.readouterr().err


def test_deploy_of_a_runtime_file_takes_the_file_as_the_candidates_source(trained_mlp, digits,
                                                                         tmp_path):
    int8 = quantize_static(trained_mlp, calibration_batches(digits, 2))
    qdq = export_onnx(int8, tmp_path / "qdq.onnx", digits.test.tensors[0][:2])
    save_ir(OvModule(qdq), tmp_path / "ir.xml")
    for given, expected in ((qdq, {"onnxruntime-int8-qdq", "openvino-int8"}),
                            (tmp_path / "ir.xml", {"openvino-int8", "openvino-int8-static"})):
        deployment = deploy(load_model(given), digits, tmp_path / given.stem, batch_sizes=(1,),
                            repeats=1, samples=143)
        first = deployment.runtimes[0]
        assert (first.name, first.candidate, first.path) == ("model-as-given", False, given)
        assert expected <= {r.name for r in deployment.runtimes if r.correct}
        assert deployment.chosen.candidate and deployment.path.is_file()
    assert deployment.skipped[0]["runtime"] == "onnxruntime-*"  # IR: ORT cannot read it
