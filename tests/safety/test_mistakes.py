"""Every mistake a user can make ends in one line on stderr, starting ``error:``, with exit status
2 and no traceback; and a recipe that cannot fit the model is refused before the baseline.

Each test reproduces one everyday mistake (issue 15, item 5) that once gave a traceback, was
silently accepted, or failed only after the work was done. Models are tiny (LeNet-300-100 for
8×8 digits), and the mistakes are refused before any training or measuring, so the file runs in
seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nnzip.pipeline
import nnzip.train
from nnzip.cli import main
from nnzip.errors import NnzipError
from nnzip.evaluate import REPORT_MODEL_KEYS, EvalConfig
from nnzip.models import create_model, save_model
from nnzip.pipeline import apply, compress
from nnzip.recipe import parse_recipe
from nnzip.train import CHECKPOINT_VERSION, DEFAULT_TRAINING


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line starting ``error:``, no traceback;
    return that line."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def work_log(monkeypatch) -> list[str]:
    """Records every training run and every measurement: a mistake must be refused before
    either starts."""
    calls: list[str] = []

    def record(name, real):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(nnzip.pipeline, "evaluate", record("evaluate", nnzip.pipeline.evaluate))
    monkeypatch.setattr(nnzip.train, "fit", record("fit", nnzip.train.fit))
    return calls


@pytest.fixture
def mlp_dir(tmp_path, mlp) -> Path:
    """A saved (untrained) LeNet-300-100 for 8×8 digits."""
    return save_model(mlp, tmp_path / "mlp")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- numeric options: negative, zero, non-finite or absurd ---------------------------------------

@pytest.mark.parametrize("argv, said", [
    (["train", "--arch", "lenet300", "--epochs", "-1"], "--epochs must be at least 0, got -1"),
    (["train", "--arch", "lenet300", "--lr", "0"], "--lr must be above 0, got 0.0"),
    (["train", "--arch", "lenet300", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "--arch", "lenet300", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--arch", "lenet300", "--batch-size", "1000000000"],
     "--batch-size must be at most 65536"),
    (["train", "--arch", "lenet300", "--seed", "-1"], "--seed must be at least 0, got -1"),
    (["train", "--arch", "lenet300", "--work-threads", "0"], "--work-threads must be at least 1"),
    (["eval", "--model", "M", "--robustness-samples", "-5"],
     "--robustness-samples must be at least 1, got -5"),
    (["eval", "--model", "M", "--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["eval", "--model", "M", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["eval", "--model", "M", "--threads", "100000"], "--threads must be at most 1024"),
    (["eval", "--model", "M", "--pairs", "1"], "--pairs must be at least 2, got 1"),
    (["eval", "--model", "M", "--train-sentences", "0"], "--train-sentences must be at least 2"),
    (["compress", "--model", "M", "--recipe", "R", "--finetune-epochs", "-1"],
     "--finetune-epochs must be at least 0, got -1"),
    (["deploy", "--model", "M", "--batch-sizes", "1", "0"],
     "--batch-sizes (value 2) must be at least 1, got 0"),
    (["deploy", "--model", "M", "--max-accuracy-change", "inf"],
     "--max-accuracy-change must be a finite number"),
    (["sts", "--model", "M", "--calibration", "0"], "--calibration must be at least 1, got 0"),
    (["sts", "--model", "M", "--group-size", "0"], "--group-size must be at least 1, got 0"),
])
def test_a_bad_number_is_one_line_naming_the_option_and_range(argv, said, tmp_path, capsys,
                                                              work_log):
    out = tmp_path / "out"
    line = one_error_line(capsys, [*argv, "--out", str(out)] if argv[0] != "sts" else argv)
    assert said in line
    assert work_log == [] and not out.exists()


def test_robustness_samples_below_one_is_refused_by_the_library_too():
    with pytest.raises(NnzipError, match="robustness_samples must be a whole number of at least 1"):
        EvalConfig(robustness_samples=-5)  # it once measured the last 9 995 test images


def test_train_negative_epochs_in_the_installed_command_has_no_traceback(tmp_path):
    repository = Path(__file__).resolve().parents[2]  # this checkout's nnzip, not an install
    result = subprocess.run([sys.executable, "-m", "nnzip.cli", "train", "--arch", "lenet300",
                             "--data", "digits", "--epochs", "-1", "--out", str(tmp_path / "m")],
                            capture_output=True, text=True, timeout=120, cwd=repository,
                            env={**os.environ, "PYTHONPATH": str(repository)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --epochs must be at least 0, got -1"]


@pytest.mark.parametrize("argv, said", [
    (["train", "--arch", "lenet300", "--epochs", "many"], "invalid int value: 'many'"),
    (["compress", "--model", "M"], "the following arguments are required: --recipe"),
    (["compres", "--model", "M"], "invalid choice: 'compres'"),
    (["eval", "--model", "M", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_argparse_errors_are_one_line_with_exit_2(argv, said, capsys):
    assert said in one_error_line(capsys, argv)


# --- files of the wrong kind --------------------------------------------------------------------

def test_a_checkpoint_of_another_architecture_is_named_before_training(tmp_path, capsys,
                                                                       work_log, digits, mlp):
    checkpoint = tmp_path / "ck.pt"
    config = DEFAULT_TRAINING["resnet20"].model_copy(update={"epochs": 1, "seed": 0})
    torch.save({"version": CHECKPOINT_VERSION, "config": config.model_dump(),
                "model": mlp.state_dict()}, checkpoint)
    out = tmp_path / "out"
    line = one_error_line(capsys, ["train", "--arch", "resnet20", "--data", "digits", "--epochs",
                                   "1", "--checkpoint", str(checkpoint), "--out", str(out),
                                   "--no-progress"])
    assert f"checkpoint {checkpoint} is of another model" in line
    assert "delete it" in line and not out.exists()
    assert work_log == ["fit"]  # refused as fit() opened the checkpoint, before any epoch


def test_a_mistyped_report_json_is_refused_and_writes_nothing(tmp_path, capsys):
    report = {"nnzip_version": "0", "machine": {"cpu_model": "x"}, "models": [
        {key: None for key in REPORT_MODEL_KEYS}]}
    report["models"][0].update(name="m", stage="baseline", accuracy="high")
    path = write(tmp_path, "report.json", json.dumps(report))
    out = tmp_path / "rendered"
    line = one_error_line(capsys, ["report", str(path), "--out", str(out)])
    assert "model 0 has accuracy = 'high', not a number" in line
    assert not out.exists()  # no report.json without its report.md and report.html


def test_complex_valued_data_is_refused(tmp_path, capsys, mlp_dir):
    data = tmp_path / "complex.npz"
    np.savez(data, x=np.ones((40, 1, 8, 8), np.complex64), y=np.arange(40) % 10)
    line = one_error_line(capsys, ["eval", "--model", str(mlp_dir), "--data", str(data),
                                   "--out", str(tmp_path / "out")])
    assert "'x' has dtype complex64" in line


@pytest.mark.parametrize("make_data, said", [
    (lambda p: p.mkdir(), "has no class sub-folders"),
    (lambda p: np.savez(p.with_suffix(".npz"), x=np.ones((40, 3, 5, 5), np.float32),
                        y=np.arange(40) % 10), "rejects the data"),
    (lambda p: np.savez(p.with_suffix(".npz"), x=np.array(["a"] * 40), y=np.arange(40) % 10),
     "'x' has dtype <U1"),
])
def test_data_that_does_not_fit_is_named(make_data, said, tmp_path, capsys, mlp_dir):
    path = tmp_path / "data"
    make_data(path)
    path = path if path.exists() else path.with_suffix(".npz")
    line = one_error_line(capsys, ["eval", "--model", str(mlp_dir), "--data", str(path),
                                   "--out", str(tmp_path / "out")])
    assert said in line


def test_a_reference_that_does_not_fit_the_data_is_named_before_deploy_times(tmp_path, capsys,
                                                                             mlp_dir):
    lenet5 = create_model("lenet5", input_shape=(1, 28, 28), num_classes=10)  # MNIST-sized
    lenet5_dir = save_model(lenet5, tmp_path / "lenet5")
    line = one_error_line(capsys, ["deploy", "--model", str(mlp_dir), "--reference",
                                   str(lenet5_dir), "--data", "digits", "--out",
                                   str(tmp_path / "out")])
    assert "model 'reference' rejects the data" in line


# --- recipes: refused before the baseline -------------------------------------------------------

@pytest.mark.parametrize("text, said", [
    ("stages:\n  - finetune: [1, 2]\n", "options must be a mapping of names to values, got list"),
    ("stages:\n  - cluster: {bits: 4, layer_bits: {nope: 4}}\n",
     "layer_bits: 'nope' matches no layer or parameter of LeNet300100"),
    ("stages:\n  - prune: {sparsity: 0.5, layers: [fc9]}\n",
     "layers: 'fc9' matches no layer or parameter of LeNet300100 (did you mean 'fc"),
    ("stages:\n  - prune: {sparsity: 0.5, exclude: [fc1.wieght]}\n", "exclude: 'fc1.wieght'"),
    ("stages:\n  - quantize: {layer_bits: {fc7: 4}}\n", "layer_bits: 'fc7' matches no layer"),
    ("stages:\n  - prune_heads: {}\n", "is not a BERT- or ViT-style encoder"),
    ("stages:\n  - drop_layers: {keep: [0]}\n", "nor a stack of transformer blocks"),
    ("stages:\n  - distill: {hints: {fc1: fcc2}}\n", "the teacher has no layer 'fcc2'"),
    ("stages:\n  - distill: {student: lenet5_smal}\n",
     "student 'lenet5_smal' is not a zoo architecture (did you mean 'lenet5_small'?)"),
    ("stages:\n  - distill: {student_options: {width: 2}}\n",
     "student_options configure a new student"),
    ("stages:\n  - quantize: {}\n  - cluster: {bits: 4}\n", "share weights before quantizing"),
    ("stages:\n  - quantize: {}\n  - prune: {sparsity: 0.9}\n", "prune before quantizing"),
    ("", "is empty"),
    ("- prune\n", "is a bare list but must be a mapping"),
    ("5\n", "must be a mapping with a 'stages' list, got int"),
    ("stages:\n  - prnue: {}\n", "unknown stage 'prnue' (did you mean 'prune'?)"),
    ("stages:\n  - prune: {sparsity: high}\n", "option 'sparsity': Input should be a valid"),
    ("stages:\n  - prune: {distill: {temperatur: 2}}\n",
     "unknown option 'distill.temperatur' (did you mean 'temperature'?)"),
    ("stages:\n  - prune: {sparsity: 0.5, label: [a]}\n", "'label' names the stage's row"),
])
def test_a_bad_recipe_is_one_line_before_any_data_or_measurement(text, said, tmp_path, capsys,
                                                                  mlp_dir, work_log, monkeypatch):
    import nnzip.cli

    monkeypatch.setattr(nnzip.cli, "_model_data", lambda *_: pytest.fail("data was loaded"))
    recipe = write(tmp_path, "r.yaml", text)
    out = tmp_path / "out"
    line = one_error_line(capsys, ["compress", "--model", str(mlp_dir), "--recipe", str(recipe),
                                   "--out", str(out), "--data", "digits"])
    assert said in line and str(recipe) in line
    assert work_log == [] and not out.exists()


@pytest.mark.parametrize("stages, said", [
    ([{"prune": {"sparsity": 0.5, "layers": ["nope"]}}], "stage 1 (prune): layers: 'nope'"),
    ([{"finetune": {"epochs": 1}}, {"cluster": {"bits": 4, "layer_bits": {"fc4": 2}}}],
     "stage 2 (cluster): layer_bits: 'fc4'"),
    ([{"prune_heads": {"calibration": "data"}}], "is not a BERT- or ViT-style encoder"),
    ([{"quantize": {"smoothquant_alpha": 0.5, "smoothquant_layers": ["fc1", "fc"]}}],
     "smoothquant_layers: 'fc' matches no layer"),
])
def test_the_library_refuses_a_recipe_that_does_not_fit_the_model_before_the_baseline(
        stages, said, digits, mlp, work_log):
    with pytest.raises(NnzipError) as error:
        compress(mlp, parse_recipe({"stages": stages}, source="r.yaml"), digits, progress=False)
    assert said in str(error.value)
    assert work_log == []  # the baseline was never measured


def test_cluster_layer_bits_naming_no_clustered_weight_is_an_error(digits, mlp):
    # fc1.bias is a parameter of the model (the recipe-wide check passes) but not a weight
    # clustering changes: it was once silently ignored.
    with pytest.raises(NnzipError, match=r"layer_bits: 'fc1.bias' names no weight being "
                                         r"clustered; name a weight or its layer: fc1, "):
        apply(mlp, "cluster", digits, bits=4, layer_bits={"fc1.bias": 2}, finetune_epochs=0)


CLUSTER = {"cluster": {"bits": 4}}
SVD = {"svd": {"keep": 0.5}}


@pytest.mark.parametrize("stages, said", [
    (["quantize", "quantize"], "stage 1 (quantize) already quantized the model"),
    (["qat", "quantize"], "stage 1 (qat) already quantized the model"),
    (["quantize", {"mixed_precision": {"average_bits": 6}}], "already quantized the model"),
    ([CLUSTER, {"quantize": {"activation_bits": None}}], "already shares the weights"),
    (["quantize", "product_quantize"], "already quantized the weights"),
    (["quantize", "prune_channels"], "it changes layer shapes"),
    (["quantize", {"prune": {"sparsity": 0.5}}], "prune before quantizing"),
    ([CLUSTER, SVD], "it changes layer shapes"),
    (["encode", "quantize"], "stores integer weights, not quantized activations"),
    ([{"quantize": {"mode": "dynamic"}}, "encode"], "not quantized activations"),
])
def test_a_stage_order_that_cannot_work_is_refused_when_the_recipe_is_read(stages, said):
    stages = [{stage: {}} if isinstance(stage, str) else stage for stage in stages]
    with pytest.raises(NnzipError, match="stage 2 .* cannot come here") as error:
        parse_recipe({"stages": stages})
    assert said in str(error.value)


def test_orders_that_work_are_still_accepted(mlp):
    prune = {"prune": {"sparsity": 0.5}}
    for stages in ([prune, "quantize"], [CLUSTER, "encode"],
                   ["quantize", "finetune"], ["prune_channels", SVD, "quantize"]):
        parse_recipe({"stages": [{stage: {}} if isinstance(stage, str) else stage
                                 for stage in stages]}).check_model(mlp)
    weights_only = {"quantize": {"activation_bits": None}}
    parse_recipe({"stages": [weights_only, {"encode": {}}]}).check_model(mlp)
    # After a factorization the layers are renamed (fc1 -> fc1.0, fc1.1): names in later stages
    # are checked when they run, not against the model the recipe starts from.
    parse_recipe({"stages": [{"svd": {"keep": 0.5}}, {"prune": {
        "sparsity": 0.5, "layers": ["fc1.0.weight"]}}]}).check_model(mlp)


# --- the last resort ----------------------------------------------------------------------------

def test_an_unforeseen_error_is_one_line_and_its_traceback_shows_with_verbose(monkeypatch,
                                                                              capsys):
    import nnzip.cli

    def broken(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x64 and 784x300)\nmore")

    monkeypatch.setitem(nnzip.cli.COMMANDS, "eval", broken)
    line = one_error_line(capsys, ["eval", "--model", "M"])
    assert line.startswith("error: unexpected RuntimeError: mat1 and mat2 shapes cannot be "
                           "multiplied (1x64 and 784x300) more;")
    assert "run again with -v for the traceback and report it" in line
    assert main(["eval", "--model", "M", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err  # never hidden from whoever asks


def test_a_pydantic_error_from_a_config_is_one_line(monkeypatch, capsys):
    import nnzip.cli
    from nnzip.train import TrainConfig

    monkeypatch.setitem(nnzip.cli.COMMANDS, "eval",
                        lambda args: TrainConfig(epochs=-3, momentum=2))
    line = one_error_line(capsys, ["eval", "--model", "M"])
    assert line == ("error: invalid TrainConfig: epochs must be at least 0, got -3; momentum "
                    "must be below 1, got 2")
