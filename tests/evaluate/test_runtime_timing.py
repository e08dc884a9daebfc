"""A quantized stage's row is timed on the runtime `deploy` would choose, and says which."""

import json

import pytest
import torch

from nnzip.evaluate import REPORT_MODEL_KEYS, EvalConfig, render_markdown
from nnzip.models import create_model
from nnzip.pipeline import compress
from nnzip.recipe import parse_recipe
from nnzip.train import TrainConfig, fit

FAST = EvalConfig(warmup=1, repeats=3, batch_sizes=(1, 8), robustness_samples=20,
                  noise_sigmas=(0.1,), fgsm_epsilons=(0.1,))
W8A8 = parse_recipe({"name": "w8a8", "stages": [{"quantize": {}}]})


@pytest.fixture(scope="module")
def trained_mlp(digits):
    """LeNet-300-100 on the 8×8 digits: a tiny classifier that quantizes cleanly."""
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=digits.input_shape,
                         num_classes=digits.num_classes)
    fit(model, digits, TrainConfig(epochs=3, lr=1e-3), progress=False)
    return model.eval()


def test_quantized_row_is_timed_on_an_onnx_runtime_candidate(trained_mlp, digits, tmp_path):
    result = compress(trained_mlp, W8A8, digits, name="mlp", out_dir=tmp_path,
                      eval_config=FAST, progress=False)
    baseline, quantized = result.report["models"]
    assert all(tuple(row) == REPORT_MODEL_KEYS for row in (baseline, quantized))
    # The float baseline runs as it is; the quantized row on what deploy would run.
    assert baseline["runtime"] == {"batch1": "pytorch-eager", "batch8": "pytorch-eager"}
    assert set(quantized["runtime"]) == {"batch1", "batch8"}
    runtimes = quantized["runtime"].values()  # deploy's candidates: ONNX Runtime, OpenVINO
    assert all(name.startswith(("onnxruntime-", "openvino-")) or name == "pytorch-eager"
               for name in runtimes)
    assert any(name.startswith(("onnxruntime-", "openvino-")) for name in runtimes)
    assert "fastest correct of deploy's runtimes" in quantized["runtime_note"]
    # The simulation is timed in the same rounds and kept beside it; the row's latency is the
    # fastest correct runtime's, so never slower than the simulation's.
    for key in ("batch1", "batch8"):
        assert quantized["latency_ms"][key]["p50"] <= quantized["pytorch_latency_ms"][key]["p50"]
        assert quantized["speedup"][key] >= quantized["pytorch_speedup"][key]
    assert baseline["pytorch_latency_ms"] is None and baseline["runtime_note"] is None
    markdown = (tmp_path / "report.md").read_text()
    assert "| Runtime |" in markdown and "| PyTorch sim. speedup b1 |" in markdown
    assert quantized["runtime"]["batch1"] in markdown
    assert "fastest correct of deploy's runtimes" in markdown  # the note, under the table
    assert "fastest correct of deploy" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["models"][1]["runtime"] == \
        quantized["runtime"]


def test_with_runtime_timing_off_the_quantized_row_is_timed_in_pytorch(trained_mlp, digits):
    config = EvalConfig(**{**FAST.__dict__, "runtime_timing": False})
    result = compress(trained_mlp, W8A8, digits, name="mlp", eval_config=config,
                      progress=False)
    quantized = result.report["models"][1]
    assert quantized["runtime"] == {"batch1": "pytorch-eager", "batch8": "pytorch-eager"}
    assert "runtime timing is off" in quantized["runtime_note"]
    assert quantized["pytorch_latency_ms"] is None
    # Every row in PyTorch: the tables read as they did before runtimes were timed.
    assert "Runtime" not in render_markdown(result.report)


def test_without_latency_no_runtime_is_named(trained_mlp, digits):
    config = EvalConfig(**{**FAST.__dict__, "measure_latency": False})
    result = compress(trained_mlp, W8A8, digits, name="mlp", eval_config=config,
                      progress=False)
    assert [row["runtime"] for row in result.report["models"]] == [None, None]


def test_a_quantized_model_without_a_runtime_is_timed_in_pytorch_and_says_why(
        trained_mlp, digits, monkeypatch):
    import nnzip.runtime.timing as timing
    from nnzip.errors import NnzipError

    def refuse(*args, **kwargs):
        raise NnzipError("no ONNX form for this quantization")

    monkeypatch.setattr(timing, "build_runtimes", refuse)
    result = compress(trained_mlp, W8A8, digits, name="mlp", eval_config=FAST, progress=False)
    quantized = result.report["models"][1]
    assert quantized["runtime"] == {"batch1": "pytorch-eager", "batch8": "pytorch-eager"}
    assert quantized["runtime_note"] == ("the PyTorch simulation of the quantized model: no "
                                         "deploy runtime could be built (no ONNX form for this "
                                         "quantization)")
    assert quantized["latency_ms"]["batch1"]["p50"] > 0


def test_cli_simulation_timing_turns_runtime_timing_off():
    from nnzip.cli import _eval_config, build_parser

    args = build_parser().parse_args(["eval", "--model", "m", "--simulation-timing"])
    assert _eval_config(args).runtime_timing is False
    args = build_parser().parse_args(["eval", "--model", "m"])
    assert _eval_config(args).runtime_timing is True


def test_an_onnx_file_evaluated_as_given_is_named_onnxruntime(trained_mlp, digits, tmp_path):
    from nnzip.evaluate import evaluate
    from nnzip.runtime import OrtModule, export_onnx

    path = export_onnx(trained_mlp, tmp_path / "mlp.onnx", digits.test.tensors[0][:2])
    entry = evaluate(OrtModule(path), digits, config=FAST)
    assert entry["runtime"] == {"batch1": "onnxruntime", "batch8": "onnxruntime"}
    assert entry["runtime_note"] is None and entry["pytorch_speedup"] is None


def _older_report(path, **row_changes):
    """A report.json as nnzip wrote it before rows named their runtime, changed by row_changes."""
    from nnzip.evaluate.metrics import LATER_REPORT_MODEL_KEYS

    row = {key: None for key in REPORT_MODEL_KEYS if key not in LATER_REPORT_MODEL_KEYS}
    row |= {"name": "m", "stage": "baseline", "size_bytes": 10, "params": 1,
            "nonzero_params": 1, **row_changes}
    path.write_text(json.dumps({"nnzip_version": "0", "machine": {}, "models": [row]}))
    return path


def test_a_report_from_before_runtimes_still_merges(tmp_path):
    from nnzip.cli import main

    source = _older_report(tmp_path / "old.json")
    assert main(["report", str(source), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged/report.json").read_text())["models"][0]
    assert merged["runtime"] is None and merged["pytorch_speedup"] is None


def test_a_report_whose_runtime_is_not_text_is_refused_in_one_line(tmp_path, capsys):
    from nnzip.cli import main

    source = _older_report(tmp_path / "bad.json", runtime={"batch1": 3})
    assert main(["report", str(source), "--out", str(tmp_path / "merged")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "runtime" in error
    assert "text per batch size" in error and not (tmp_path / "merged").exists()


def test_a_model_of_another_task_is_refused_before_any_export(digits, monkeypatch):
    import copy

    import nnzip.runtime.timing as timing
    from nnzip.errors import NnzipError

    def must_not_export(*args, **kwargs):
        raise AssertionError("exported a model deploy cannot judge")

    monkeypatch.setattr(timing, "build_runtimes", must_not_export)
    language = copy.copy(digits)
    language.task = "lm"
    with pytest.raises(NnzipError, match="by classification accuracy, and this is a lm model"):
        timing.runtime_latency(torch.nn.Linear(2, 2), None, language, FAST)
