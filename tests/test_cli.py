"""The `nnzip` command end to end, and its answer to each kind of bad input.

Every bad input must give one error line that names the problem, exit status 2, and leave no
output behind.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnzip.cli import main
from nnzip.evaluate import REPORT_MODEL_KEYS
from nnzip.models import save_model

FAST = ["--repeats", "3", "--robustness-samples", "300", "--no-progress"]


@pytest.fixture(scope="module")
def lenet5_dir(tmp_path_factory, lenet5) -> Path:
    return save_model(lenet5, tmp_path_factory.mktemp("models") / "lenet5")


def _fails(capsys, argv: list[str], message: str, out: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists() or not any(out.iterdir()), f"left behind: {list(out.iterdir())}"
    return err


def test_demo_writes_the_three_report_files_with_every_key(zoo_cache, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--cache-dir", str(zoo_cache), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "lenet5" in printed and "Accuracy" in printed and str(out / "report.html") in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"nnzip_version", "machine", "models"}
    assert {"cpu_model", "cores", "threads", "torch_version"} <= set(report["machine"])
    assert [m["name"] for m in report["models"]] == ["lenet5", "lenet300"]
    for entry in report["models"]:
        assert tuple(entry) == REPORT_MODEL_KEYS
        assert set(entry["latency_ms"]) == {"batch1", "batch64"}
        assert set(entry["robustness"]) == {"gaussian", "fgsm"}
    assert report["models"][0]["accuracy"] >= 0.975
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # trade-off, metrics, robustness, shift
    assert "<script" not in html and 'src="http' not in html
    assert "| lenet5 | baseline |" in (out / "report.md").read_text()


def test_train_then_eval_then_compress_then_report(tmp_path, capsys):
    model_dir = tmp_path / "mlp"
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--arch", "lenet300", "--data", "digits", "--epochs", "3",
                     "--out", str(model_dir), "--no-progress", "--work-threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert "test accuracy" in capsys.readouterr().out
    assert main(["eval", "--model", str(model_dir), "--data", "digits",
                 "--out", str(tmp_path / "eval"), *FAST]) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - finetune: {epochs: 1}\n"
                      "  - prune: {pattern: 'n:m', finetune_epochs: 0}\n")
    assert main(["compress", "--model", str(model_dir), "--recipe", str(recipe), "--data",
                 "digits", "--out", str(tmp_path / "c"), *FAST]) == 0
    stages = [m["stage"] for m in json.loads((tmp_path / "c/report.json").read_text())["models"]]
    assert stages == ["baseline", "finetune", "prune"]
    printed = capsys.readouterr().out
    assert "finetune: changed 100.0 % of" in printed
    # fc3 has 100 inputs per output: 2:4 groups fit; every weight pruned, nothing skipped.
    assert "prune: changed" in printed and "skipped" not in printed
    capsys.readouterr()
    assert main(["report", str(tmp_path / "eval/report.json"), str(tmp_path / "c/report.json"),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged/report.json").read_text())
    assert len(merged["models"]) == 4


def test_missing_data_is_named(capsys, tmp_path, lenet5_dir):
    out = tmp_path / "out"
    _fails(capsys, ["eval", "--model", str(lenet5_dir), "--mnist-dir", str(tmp_path / "nope"),
                    "--out", str(out)], "NNZIP_MNIST_DIR", out)


def test_corrupt_weight_file_is_named(capsys, tmp_path, lenet5):
    model_dir = save_model(lenet5, tmp_path / "m")
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "out"
    _fails(capsys, ["eval", "--model", str(model_dir), "--out", str(out)], "corrupt", out)


def test_truncated_weight_file_is_named(capsys, tmp_path, lenet5):
    model_dir = save_model(lenet5, tmp_path / "m")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "out"
    _fails(capsys, ["eval", "--model", str(model_dir), "--out", str(out)], "truncated", out)


def test_unknown_model_name_lists_the_zoo(capsys, tmp_path):
    out = tmp_path / "out"
    err = _fails(capsys, ["train", "--arch", "lenet7", "--data", "digits", "--out", str(out)],
                 "lenet7", out)
    assert "lenet5" in err and "resnet20" in err
    _fails(capsys, ["eval", "--model", "lenet7", "--out", str(out)], "model not found", out)


def test_architecture_name_instead_of_model_says_to_train_first(capsys, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, ["eval", "--model", "lenet5", "--out", str(out)], "nnzip train --arch lenet5",
           out)


def test_malformed_recipe_is_named_before_any_work(capsys, tmp_path, lenet5_dir):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - finetune: {epochs: 2\n")
    out = tmp_path / "out"
    _fails(capsys, ["compress", "--model", str(lenet5_dir), "--recipe", str(recipe), "--out",
                    str(out)], "not valid YAML at line", out)


def test_input_of_the_wrong_shape_is_named(capsys, tmp_path, lenet5_dir):
    out = tmp_path / "out"
    err = _fails(capsys, ["eval", "--model", str(lenet5_dir), "--data", "digits", "--out",
                          str(out), *FAST], "rejects the data", out)
    assert "(1, 8, 8)" in err


def test_the_installed_command_exits_nonzero_with_one_line(tmp_path):
    nnzip = Path(sys.executable).with_name("nnzip")
    result = subprocess.run([str(nnzip), "compress", "--model", str(tmp_path / "m"), "--recipe",
                             str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: recipe file {tmp_path / 'missing.yaml'} not found: check the path (built-in "
        "recipes are in the repository's recipes/ folder)"]


def test_work_threads_below_one_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "m"
    _fails(capsys, ["train", "--arch", "lenet300", "--data", "digits", "--out", str(out),
                    "--work-threads", "0"], "--work-threads must be at least 1", out)
