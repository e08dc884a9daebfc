"""Deployment picks the fastest runtime that keeps the accuracy, and says what it measured."""

import json

import pytest
import torch
from torch import nn

from nnzip.cli import main
from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.models import load_model, save_model
from nnzip.quant import quantize_static
from nnzip.runtime import OrtModule, OvModule, deploy
from nnzip.runtime.deploy import Runtime, pick


def test_deploy_float_model_measures_every_runtime_and_keeps_a_correct_one(lenet300, mnist,
                                                                          tmp_path):
    deployment = deploy(lenet300, mnist, tmp_path, batch_sizes=(1, 8), repeats=5, samples=500,
                        original=lenet300)
    names = [runtime.name for runtime in deployment.runtimes
             if not runtime.name.startswith("openvino")]  # tests/runtime/test_openvino.py
    assert names == ["pytorch-eager", "onnxruntime-fp32", "original-pytorch-eager"]
    assert deployment.chosen.correct and deployment.chosen.candidate
    fastest = min((r for r in deployment.runtimes if r.correct),
                  key=lambda r: r.latency_ms[1]["p50"])
    assert deployment.chosen is fastest
    for runtime in deployment.runtimes:
        assert set(runtime.latency_ms) == {1, 8} and runtime.latency_ms[1]["p50"] > 0
    summary = json.loads((tmp_path / "deploy.json").read_text())
    assert summary["saved"]["runtime"] == deployment.chosen.name
    assert summary["chosen"]["1"]["runtime"] == deployment.chosen.name
    assert "cpu_flags" in summary["machine"] and summary["machine"]["onnxruntime_version"]
    x = mnist.test.tensors[0][:64]
    assert torch.equal(load_model(deployment.path)(x).argmax(1), lenet300(x).argmax(1))


def test_deploy_quantized_model_offers_integer_and_float_runtimes(lenet5, mnist, tmp_path):
    int8 = quantize_static(lenet5, calibration_batches(mnist, 2))
    deployment = deploy(int8, mnist, tmp_path, batch_sizes=(1,), repeats=3, samples=500)
    by_name = {runtime.name: runtime for runtime in deployment.runtimes}
    ort_and_torch = {name for name in by_name if not name.startswith("openvino")}
    assert ort_and_torch == {"pytorch-eager", "onnxruntime-int8-qdq", "onnxruntime-int8-qoperator",
                             "onnxruntime-dequantized", "onnxruntime-fp32"}
    assert by_name["onnxruntime-int8-qoperator"].integer_ops >= 2
    assert by_name["onnxruntime-dequantized"].accuracy == by_name["pytorch-eager"].accuracy
    assert by_name["onnxruntime-int8-qdq"].file_bytes < 0.3 * by_name["onnxruntime-fp32"].file_bytes
    assert isinstance(load_model(deployment.path), OrtModule | OvModule)


def test_a_runtime_that_changes_accuracy_is_not_correct(lenet300, mnist, tmp_path):
    deployment = deploy(lenet300, mnist, tmp_path, batch_sizes=(1,), repeats=2, samples=300,
                        max_accuracy_change=0.0)
    assert all(r.correct == (r.accuracy_change_points == 0) for r in deployment.runtimes)
    with pytest.raises(NnzipError, match="batch_sizes"):
        deploy(lenet300, mnist, tmp_path, batch_sizes=(0,))


def test_cli_deploy(lenet300, tmp_path, capsys):
    model_dir = save_model(lenet300, tmp_path / "model")
    code = main(["deploy", "--model", str(model_dir), "--reference", str(model_dir), "--out",
                 str(tmp_path / "out"), "--batch-sizes", "1", "--repeats", "3", "--no-progress"])
    assert code == 0
    output = capsys.readouterr().out
    assert "saved:" in output and "onnxruntime-fp32" in output
    assert (tmp_path / "out" / "deploy.json").is_file()


def _timed(name: str, p50: float, size: int | None, correct: bool = True) -> Runtime:
    runtime = Runtime(name, name, None, nn.Identity(), latency_ms={1: {"p50": p50}},
                      file_bytes=size)
    runtime.correct = correct
    return runtime


def test_pick_keeps_the_smallest_file_among_runtimes_tied_within_the_tolerance():
    bf16 = _timed("openvino-bf16", 1.00, 320_080)  # fastest, float-sized file
    int8 = _timed("openvino-int8", 1.02, 102_545)  # 2 % slower, a third of the bytes
    qdq = _timed("onnxruntime-int8", 1.20, 102_545)  # smaller than bf16 but 20 % slower
    eager = _timed("pytorch-eager", 1.01, None)  # no file: never preferred for its size
    wrong = _timed("tiny-but-wrong", 0.50, 10, correct=False)
    runtimes = [bf16, int8, qdq, eager, wrong]
    assert pick(runtimes, 1) is int8
    assert pick(runtimes, 1, size_tolerance=0.0) is bf16  # strictly the fastest
    assert pick(runtimes, 1, size_tolerance=0.25) is int8  # same size as qdq: the faster
    assert pick([bf16, eager], 1) is bf16
    with pytest.raises(NnzipError, match="no correct runtime"):
        pick([wrong], 1)
