"""`deploy` on a sentence encoder: runtimes judged by cosine to the model's own embeddings (and
STS Spearman recorded), OpenVINO int8 from nnzip's static quantization with NNCF's transformer
placement, and `nnzip deploy --model hf:...` end to end. A one-layer BERT with MiniLM's tokenizer
keeps it fast; the shipped MiniLM goes through the same code in benchmarks/deploy_peers.py."""

import json

import pytest
import torch

import nnzip.cli as cli
from nnzip.cli import main
from nnzip.data import calibration_batches
from nnzip.quant.schemes import quantize_scheme
from nnzip.runtime import deploy, export_onnx, op_counts
from nnzip.runtime.onnx_export import openvino_placed
from nnzip.tasks import sentence_data

openvino = pytest.importorskip("nnzip.runtime.openvino")


def quantize_scales(path) -> list[float]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    return [float(constants[node.input[1]].reshape(-1)[0]) for node in proto.graph.node
            if node.op_type == "QuantizeLinear" and node.input[1] in constants]


@pytest.fixture(scope="module")
def sentences(tiny_encoder):
    return sentence_data(tiny_encoder, pairs=16, train_sentences=48)


@pytest.fixture(scope="module")
def w8a8(tiny_encoder, sentences):
    return quantize_scheme(tiny_encoder, "w8a8-smoothquant",
                           calibration_batches(sentences, 2, 16)).model


def test_deploy_of_an_encoder_keeps_runtimes_by_cosine_and_says_why_it_refused(
        w8a8, tiny_encoder, sentences, tmp_path):
    # The float runtimes of a W8A8 encoder drop its int8 activations: below a strict threshold.
    deployment = deploy(w8a8, sentences, tmp_path / "out", batch_sizes=(1, 4), repeats=2,
                        original=tiny_encoder, openvino=False, min_cosine=0.999)
    runtimes = {runtime.name: runtime for runtime in deployment.runtimes}
    assert runtimes["pytorch-eager"].cosine == 1.0
    skipped = {skip["runtime"]: skip["reason"] for skip in deployment.skipped}
    for runtime in deployment.runtimes:
        assert 0.0 < runtime.cosine <= 1.0 + 1e-6
        assert runtime.accuracy is None  # an encoder has no classes
        assert set(runtime.task_metric) == {"spearman", "spearman_change"}
        if not runtime.candidate:
            continue
        assert runtime.correct == (runtime.cosine >= 0.999)
        if not runtime.correct:
            assert f"{runtime.cosine:.4f}" in skipped[runtime.name]
            assert "at least 0.999 required" in skipped[runtime.name]
    # The integer kernels compute what nnzip simulated; float activations do not.
    assert runtimes["onnxruntime-int8-qdq"].correct
    # No Q/DQ pair on attention's mask (a ±3.4e38 range: MiniLM's cosine fell to 0.32).
    assert max(quantize_scales(runtimes["onnxruntime-int8-qdq"].path)) < 1e3
    assert not runtimes["onnxruntime-fp32"].correct
    assert "onnxruntime-fp32" in skipped
    for batch in (1, 4):
        correct = [runtime for runtime in deployment.runtimes if runtime.correct]
        fastest = min(correct, key=lambda runtime: runtime.latency_ms[batch]["p50"])
        assert deployment.chosen_by_batch[batch] is fastest
    summary = json.loads((tmp_path / "out" / "deploy.json").read_text())
    assert set(summary["chosen"]) == {"1", "4"}
    assert summary["runtimes"][0]["cosine"] == 1.0


def test_min_cosine_outside_0_1_is_an_error(w8a8, sentences, tmp_path):
    from nnzip.errors import NnzipError

    with pytest.raises(NnzipError, match="min_cosine"):
        deploy(w8a8, sentences, tmp_path, min_cosine=1.5, openvino=False)


def test_openvino_runs_a_static_int8_encoder_on_integer_matmuls_and_attention(
        w8a8, sentences, tmp_path):
    example = sentences.test.tensors[0][:2]
    simulation = export_onnx(w8a8, tmp_path / "qdq.onnx", example, sequence_dim=1)
    placed = openvino_placed(w8a8, simulation, calibration_batches(sentences, 2, 16),
                             tmp_path / "placed.onnx")
    # Query and key of the one attention block quantized; SmoothQuant's Div now a Mul.
    before, after = op_counts(simulation), op_counts(placed)
    assert after["QuantizeLinear"] == before["QuantizeLinear"] + 2
    assert after.get("Div", 0) < before.get("Div", 0)
    module = openvino.OvModule(placed, precision="f32", static_shapes=True)
    precisions = openvino.runtime_precisions(module)
    # The six Linears (query, key, value, output, two FFN) run on u8 activations.
    assert precisions["FullyConnected"].get("u8", 0) == 6
    # Attention's score MatMul reads int8 (fused into a subgraph, or a MatMul, by the plugin).
    assert any(precisions.get(layer, {}).get("i8", 0) for layer in ("Subgraph", "MatMul"))
    with torch.no_grad():
        expected = w8a8(sentences.val.tensors[0])
    got = module(sentences.val.tensors[0])
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.99


def test_cli_deploys_an_hf_encoder_and_writes_deploy_json(tiny_encoder, monkeypatch, tmp_path,
                                                          capsys):
    monkeypatch.setattr(cli, "_load_model", lambda spec, args: tiny_encoder)
    out = tmp_path / "deployed"
    assert main(["deploy", "--model", "hf:tiny", "--out", str(out), "--batch-sizes", "1", "4",
                 "--repeats", "2", "--pairs", "16", "--train-sentences", "48",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "deploy.json" in printed and "runtime deployed per batch size" in printed
    summary = json.loads((out / "deploy.json").read_text())
    assert set(summary["chosen"]) == {"1", "4"}
    winners = {runtime["name"]: runtime for runtime in summary["runtimes"]}
    for choice in summary["chosen"].values():
        assert winners[choice["runtime"]]["correct"]
        assert winners[choice["runtime"]]["cosine"] >= 0.99
    assert (out / summary["saved"]["path"].split("/")[-1]).is_file()


def test_cli_deploy_of_an_encoder_refuses_other_data_and_a_bad_min_cosine(tiny_encoder,
                                                                           monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_model", lambda spec, args: tiny_encoder)
    assert main(["deploy", "--model", "hf:tiny", "--data", "digits"]) == 2
    assert "judged on STS-B" in capsys.readouterr().err
    assert main(["deploy", "--model", "hf:tiny", "--min-cosine", "0"]) == 2
    assert "--min-cosine" in capsys.readouterr().err
