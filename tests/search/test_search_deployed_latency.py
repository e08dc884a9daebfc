"""A search's latency is the deployed runtime's, for float trials too (issue 17: "p50 latency at
a batch size on the deployed runtime"), and the trial row names the runtime that won.

The model is the conftest LeNet-300-100 on 8×8 digits: its deploy runtimes build in a second.
"""

import optuna
import pytest

from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig, evaluate
from nnzip.search import parse_constraint, parse_objectives, search
from nnzip.search.runner import search_eval_config

FAST = EvalConfig(warmup=2, repeats=10, batch_sizes=(1,), noise_sigmas=(), fgsm_epsilons=(),
                  robustness_samples=1)
#: deploy's candidates for a float model (PyTorch eager is timed beside them, as a candidate).
FLOAT_RUNTIMES = ("onnxruntime-fp32", "openvino-fp32", "openvino-fp32-static", "openvino-bf16",
                  "openvino-bf16-static", "pytorch-eager")


def test_a_float_model_is_timed_on_its_deploy_runtime_when_asked(trained_mlp, digits):
    default = evaluate(trained_mlp, digits, config=FAST)
    assert default["runtime"] == {"batch1": "pytorch-eager"}
    assert default["pytorch_latency_ms"] is None and default["runtime_note"] is None

    config = EvalConfig(**{**FAST.__dict__, "deployed_timing": "always"})
    row = evaluate(trained_mlp, digits, config=config)
    assert row["runtime"]["batch1"] in FLOAT_RUNTIMES
    # PyTorch's per-layer overhead dwarfs a 64-300-100-10 MLP's arithmetic: a runtime wins.
    assert row["runtime"]["batch1"] != "pytorch-eager"
    assert "fastest correct of deploy's runtimes" in row["runtime_note"]
    assert "onnxruntime-fp32" in row["runtime_note"]
    # PyTorch eager was timed in the same rounds, and the chosen runtime is the fastest.
    assert row["latency_ms"]["batch1"]["p50"] <= row["pytorch_latency_ms"]["batch1"]["p50"]
    assert row["accuracy"] == default["accuracy"]  # accuracy stays the PyTorch model's


def test_with_runtime_timing_off_always_times_pytorch_without_a_note(trained_mlp, digits):
    config = EvalConfig(**{**FAST.__dict__, "deployed_timing": "always",
                           "runtime_timing": False})
    row = evaluate(trained_mlp, digits, config=config)
    assert row["runtime"] == {"batch1": "pytorch-eager"} and row["runtime_note"] is None


def test_a_float_model_without_a_runtime_is_timed_in_pytorch_and_says_why(
        trained_mlp, digits, monkeypatch):
    import nnzip.runtime.timing as timing

    def refuse(*args, **kwargs):
        raise NnzipError("cannot export this model to ONNX")

    monkeypatch.setattr(timing, "build_runtimes", refuse)
    config = EvalConfig(**{**FAST.__dict__, "deployed_timing": "always"})
    row = evaluate(trained_mlp, digits, config=config)
    assert row["runtime"] == {"batch1": "pytorch-eager"}
    assert row["runtime_note"] == ("PyTorch eager: no deploy runtime could be built (cannot "
                                   "export this model to ONNX)")


def test_an_unknown_deployed_timing_is_refused_naming_the_choices():
    with pytest.raises(NnzipError, match="deployed_timing must be one of 'quantized', 'always', "
                                         "got 'sometimes'"):
        EvalConfig(deployed_timing="sometimes")


@pytest.mark.parametrize(("objectives", "constraints", "batches", "deployed"), [
    (["accuracy", "latency"], [], (1,), "always"),
    (["accuracy", "bytes"], ["latency@64<=5"], (64,), "always"),
    (["accuracy", "latency", "latency@64"], [], (1, 64), "always"),
])
def test_search_times_every_trial_on_its_deploy_runtime(objectives, constraints, batches,
                                                        deployed):
    config = search_eval_config(parse_objectives(objectives),
                                [parse_constraint(text) for text in constraints])
    assert config.batch_sizes == batches and config.measure_latency
    assert config.deployed_timing == deployed


def test_search_without_latency_times_nothing():
    config = search_eval_config(parse_objectives(["accuracy", "bytes"]), [])
    assert not config.measure_latency


def test_a_latency_search_trial_row_names_its_deploy_runtime(trained_mlp, digits, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("name: tiny-latency\nfinetune_epochs: 0\nstages:\n"
                     "  - prune_channels: {sparsity: {low: 0.3, high: 0.6}, finetune_epochs: 0}\n")
    out = tmp_path / "search"
    result = search(trained_mlp, digits, space, out=out, trials=1,
                    objectives=["accuracy", "latency"], progress=False, heldout=False)
    assert result.finished == 1
    study = optuna.load_study(study_name="tiny-latency",
                              storage=f"sqlite:///{out.resolve()}/search.db")
    trial, = study.get_trials()
    row = trial.user_attrs["row"]
    assert row["runtime"]["batch1"] in FLOAT_RUNTIMES
    assert row["runtime"]["batch1"] != "pytorch-eager"
    # The objective value is the deployed runtime's p50, as the row records it.
    assert trial.values[1] == pytest.approx(row["latency_ms"]["batch1"]["p50"])
