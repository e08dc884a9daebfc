"""The recipe stage ``prune``: validation up front, report details, N:M and sensitivity scope."""

import json

import pytest
from pydantic import ValidationError

from nnzip.core.coverage import NOT_SELECTED
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig
from nnzip.pipeline import compress
from nnzip.prune import Prune, layer_sparsity, prune
from nnzip.recipe import STAGES, load_recipe, parse_recipe
from nnzip.stage import Context

FAST = EvalConfig(warmup=1, repeats=3, robustness_samples=200)


def _recipe(**options):
    return parse_recipe({"name": "t", "stages": [{"prune": options}]})


def test_prune_is_a_registered_recipe_stage():
    assert STAGES["prune"] is Prune


@pytest.mark.parametrize("bad", [1.0, -0.1, 2])
def test_sparsity_outside_zero_to_one_is_rejected_with_the_option_named(bad):
    with pytest.raises(NnzipError, match=r"option 'sparsity'.*\[0, 1\)"):
        _recipe(sparsity=bad)


def test_n_greater_than_m_is_rejected_before_any_work():
    with pytest.raises(NnzipError, match="N must not exceed M.*n=4, m=2"):
        _recipe(pattern="n:m", n=4, m=2)


def test_options_that_contradict_each_other_are_rejected():
    with pytest.raises(NnzipError, match="needs 'sparsity'"):
        _recipe(criterion="taylor")
    with pytest.raises(NnzipError, match="drop 'sparsity'"):
        _recipe(pattern="n:m", sparsity=0.5)
    with pytest.raises(NnzipError, match="schedule 'oneshot'"):
        _recipe(pattern="n:m", schedule="gradual")
    with pytest.raises(NnzipError, match="unknown option 'sparsty'.*did you mean 'sparsity'"):
        _recipe(sparsty=0.5)
    with pytest.raises(ValidationError):
        Prune(sparsity=0.5, criterion="gradient")


def test_unknown_layer_is_an_error_naming_it_before_the_model_changes(mlp, digits):
    before = mlp.fc1.weight.detach().clone()
    with pytest.raises(NnzipError, match="'conv1' matches no weights.*fc1, fc2, fc3"):
        Prune(sparsity=0.5, layers=["fc1", "conv1"]).apply(mlp, Context(data=digits,
                                                                         progress=False))
    assert (mlp.fc1.weight == before).all()


def test_prune_stage_in_a_recipe_reports_layer_sparsity(trained_mlp, digits, tmp_path):
    recipe = _recipe(sparsity=0.7, schedule="gradual", steps=4, finetune_epochs=2)
    result = compress(trained_mlp, recipe, digits, name="mlp", out_dir=tmp_path,
                      eval_config=FAST, progress=False)
    details = result.report["stages"][0]["details"]
    assert set(details["layer_sparsity"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert details["achieved_sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert details["target_sparsity"] == 0.7 and details["criterion"] == "magnitude"
    assert details["layer_sparsity"] == layer_sparsity(result.model)
    pruned = result.report["models"][-1]
    weights = sum(p.numel() for n, p in result.model.named_parameters() if n.endswith("weight"))
    assert pruned["params"] - pruned["nonzero_params"] == pytest.approx(0.7 * weights, abs=2)
    assert pruned["accuracy"] > 0.7
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["stages"][0]["details"]["layer_sparsity"] == details["layer_sparsity"]
    assert not any(k.endswith(("_orig", "_mask")) for k in result.model.state_dict())
    assert details["layer_params"] == {"fc1.weight": 64 * 300, "fc2.weight": 300 * 100,
                                       "fc3.weight": 100 * 10}
    html = (tmp_path / "report.html").read_text()
    assert "Per-layer sparsity" in html and "<td>fc2.weight</td><td>30k</td>" in html


def test_nm_stage_skips_layers_whose_inputs_do_not_divide_and_lists_them(mlp, digits):
    # digits MLP: fc1 has 64 inputs, fc2 300, fc3 100; with M = 3 only fc2 divides.
    context = Context(data=digits, progress=False)
    Prune(pattern="n:m", n=1, m=3, finetune_epochs=0).apply(mlp, context)
    assert context.details["skipped_layers"] == ["fc1.weight", "fc3.weight"]
    assert context.details["pattern"] == "1:3"
    sparsity = context.details["layer_sparsity"]
    assert sparsity["fc2.weight"] == pytest.approx(2 / 3) and sparsity["fc1.weight"] == 0.0


def test_sensitivity_scope_records_curves_and_meets_the_target(trained_mlp, digits):
    context = Context(data=digits, progress=False)
    Prune(sparsity=0.8, scope="sensitivity", tolerance=0.03, finetune_epochs=1,
          sensitivity_sparsities=[0.5, 0.8, 0.95]).apply(trained_mlp, context)
    curves = context.details["sensitivity"]
    assert set(curves) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert list(curves["fc1.weight"]) == ["0", "0.5", "0.8", "0.95"]
    assert context.details["achieved_sparsity"] == pytest.approx(0.8, abs=0.01)
    json.dumps(context.details)  # everything recorded is JSON-ready


def test_sensitivity_stage_analyses_without_changing_the_model(trained_mlp, digits):
    before = {k: v.clone() for k, v in trained_mlp.state_dict().items()}
    recipe = parse_recipe({"stages": [{"sensitivity": {"sparsities": [0.5, 0.9],
                                                       "target": 0.8}}]})
    context = Context(data=digits, progress=False)
    assert recipe.steps[0].stage.apply(trained_mlp, context) is trained_mlp
    assert all((trained_mlp.state_dict()[k] == v).all() for k, v in before.items())
    curves = context.details["sensitivity"]
    assert set(curves) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(list(curve) == ["0", "0.5", "0.9"] for curve in curves.values())
    assert all(0 <= acc <= 1 for curve in curves.values() for acc in curve.values())
    # The big middle layer tolerates more than the 10-way classifier (Han et al.'s finding).
    allocated = context.details["allocated_sparsity"]
    assert allocated["fc2.weight"] > allocated["fc3.weight"]
    with pytest.raises(NnzipError, match=r"option 'target'.*\[0, 1\)"):
        parse_recipe({"stages": [{"sensitivity": {"target": 1.5}}]})


def test_hessian_criterion_stage_prunes_iteratively_on_real_digits(trained_mlp, digits):
    context = Context(data=digits, progress=False)
    Prune(sparsity=0.6, criterion="hessian", hessian="hutchinson", schedule="iterative",
          steps=2, finetune_epochs=1, calibration_batches=2).apply(trained_mlp, context)
    assert context.details["achieved_sparsity"] == pytest.approx(0.6, abs=1e-4)


@pytest.mark.parametrize("name", ["prune-lenet300", "prune-lenet5"])
def test_built_in_pruning_recipes_are_valid(name):
    from pathlib import Path

    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / f"{name}.yaml")
    stage = recipe.steps[0].stage
    assert isinstance(stage, Prune) and stage.sparsity >= 0.92


def test_prune_function_takes_the_stage_config_and_returns_model_coverage_details(mlp):
    mlp.train()
    result = prune(mlp, Prune(sparsity=0.5, layers=["fc1", "fc2"]))
    assert result.model is mlp and not mlp.training
    assert result.coverage.changed == ["fc1.weight", "fc2.weight"]
    assert result.coverage.to_dict()["params"]["fc3.weight"]["note"] == NOT_SELECTED
    assert result.coverage.to_dict()["params"]["fc1.weight"]["note"].startswith("pruned to ")
    fc12 = mlp.fc1.weight.numel() + mlp.fc2.weight.numel()
    assert result.details["achieved_sparsity"] == round(0.5 * fc12) / fc12
    assert result.details["layer_sparsity"]["fc3.weight"] == 0.0


def test_prune_function_asks_for_the_data_a_fine_tune_or_a_gradient_criterion_needs(mlp):
    with pytest.raises(NnzipError, match="fine-tune.*needs data"):
        prune(mlp, Prune(sparsity=0.5, finetune_epochs=1))
    with pytest.raises(NnzipError, match="'taylor' needs calibration data"):
        prune(mlp, Prune(sparsity=0.5, criterion="taylor"))
    with pytest.raises(NnzipError, match="'wanda' needs calibration inputs"):
        prune(mlp, Prune(sparsity=0.5, criterion="wanda"))
    with pytest.raises(NnzipError, match="takes a Prune config"):
        prune(mlp, {"sparsity": 0.5})
    assert int((mlp.fc1.weight == 0).sum()) == 0
