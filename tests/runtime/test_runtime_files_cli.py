"""An ONNX file or OpenVINO IR given to ``compress`` is refused in one line (its weights are in
the runtime's graph: no stage can change them), while ``eval`` and ``deploy`` run it."""

import json

import pytest

import nnzip
from nnzip.cli import main
from nnzip.errors import NnzipError
from nnzip.models import load_model
from nnzip.runtime import OvModule, export_onnx
from nnzip.runtime.openvino import openvino_missing, save_ir

FAST = ["--repeats", "2", "--robustness-samples", "50", "--no-progress"]


@pytest.fixture
def runtime_files(trained_mlp, digits, tmp_path):
    onnx_path = export_onnx(trained_mlp, tmp_path / "mlp.onnx", digits.test.tensors[0][:2])
    files = {"onnx": onnx_path}
    if openvino_missing() is None:
        files["xml"] = save_ir(OvModule(onnx_path), tmp_path / "mlp.xml")
    return files


@pytest.mark.parametrize("kind", ["onnx", "xml"])
def test_compress_refuses_a_runtime_file_in_one_line(runtime_files, tmp_path, capsys, kind):
    if kind not in runtime_files:
        pytest.skip("needs the openvino extra")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stages:\n  - prune: {sparsity: 0.5}\n")
    path = runtime_files[kind]
    out = tmp_path / "out"
    assert main(["compress", "--model", str(path), "--recipe", str(recipe), "--data", "digits",
                 "--out", str(out), *FAST]) == 2
    error = capsys.readouterr().err.strip()
    runtime = {"onnx": "ONNX Runtime", "xml": "OpenVINO"}[kind]
    assert error.splitlines() == [
        f"error: {path.name} runs in {runtime}: an ONNX/OpenVINO file can be evaluated (nnzip "
        "eval) and deployed (nnzip deploy), not compressed: pass the PyTorch model it was "
        "exported from"]
    assert not out.exists()
    with pytest.raises(NnzipError, match="not compressed"):  # the Python API says the same
        nnzip.compress(load_model(path), str(recipe), None)


def test_eval_and_deploy_still_run_a_runtime_file(runtime_files, tmp_path, capsys):
    for kind, path in runtime_files.items():
        assert main(["eval", "--model", str(path), "--data", "digits", "--out",
                     str(tmp_path / f"eval-{kind}"), *FAST]) == 0
        report = json.loads((tmp_path / f"eval-{kind}" / "report.json").read_text())
        assert report["models"][0]["accuracy"] > 0.85  # the trained MLP, run by the runtime
    assert main(["deploy", "--model", str(runtime_files["onnx"]), "--data", "digits", "--out",
                 str(tmp_path / "deployed"), "--batch-sizes", "1", "--repeats", "2",
                 "--no-progress"]) == 0
    assert (tmp_path / "deployed" / "deploy.json").is_file()
