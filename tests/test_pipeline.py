"""compress() measures the model before and after every stage and keeps finished rows."""

import json

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate import REPORT_MODEL_KEYS, EvalConfig
from nnzip.models import create_model, load_model
from nnzip.pipeline import compress, evaluate_models
from nnzip.recipe import STAGES, parse_recipe
from nnzip.stage import Context, Stage

FAST = EvalConfig(warmup=1, repeats=3, robustness_samples=200)


@pytest.fixture
def mlp(digits):
    torch.manual_seed(0)
    return create_model("lenet300", input_shape=digits.input_shape,
                        num_classes=digits.num_classes)


def test_finetune_recipe_measures_baseline_and_each_stage(mlp, digits, tmp_path):
    recipe = parse_recipe({"name": "t", "stages": [{"finetune": {"epochs": 3, "lr": 1e-3}},
                                                   {"finetune": {"label": "polish", "epochs": 1}}]})
    result = compress(mlp, recipe, digits, name="mlp", out_dir=tmp_path, eval_config=FAST,
                      progress=False)
    rows = result.report["models"]
    assert [row["stage"] for row in rows] == ["baseline", "finetune", "polish"]
    assert all(tuple(row) == REPORT_MODEL_KEYS for row in rows)
    # The untrained baseline is near chance; fine-tuning on real digits must lift it far above.
    assert rows[0]["accuracy"] < 0.3 and rows[1]["accuracy"] > 0.85
    assert rows[0]["agreement"] == 1.0 and rows[1]["agreement"] < 0.5
    assert rows[1]["compression_ratio"] == pytest.approx(1.0, abs=0.01)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["models"] == json.loads(json.dumps(rows))
    assert [s["label"] for s in on_disk["stages"]] == ["finetune", "polish"]
    assert on_disk["recipe"]["name"] == "t"
    reloaded = load_model(result.paths["model"])
    x = digits.test.tensors[0][:16]
    assert torch.equal(reloaded(x), result.model.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "report.html", "report.json",
                                                          "report.md"]


class _Explode(Stage):
    kind = "explode"

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        raise KeyboardInterrupt


def test_an_interrupted_recipe_keeps_the_rows_it_finished(mlp, digits, tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "explode", _Explode)
    recipe = parse_recipe({"stages": [{"finetune": {"epochs": 1}}, "explode"]})
    with pytest.raises(KeyboardInterrupt) as interrupt:
        compress(mlp, recipe, digits, out_dir=tmp_path / "run", eval_config=FAST,
                 progress=False)
    # out_dir only ever holds a finished run: the finished rows are kept beside it.
    assert interrupt.value.saved_to == tmp_path / "run.interrupted"
    report = json.loads((tmp_path / "run.interrupted" / "report.json").read_text())
    assert [row["stage"] for row in report["models"]] == ["baseline", "finetune"]
    assert report["interrupted"]["not_measured"] == ["explode"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.interrupted"], "no temporaries"


def test_a_user_model_outside_the_zoo_is_saved_as_torch_export(digits, tmp_path):
    torch.manual_seed(0)
    user_model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    recipe = parse_recipe({"stages": [{"finetune": {"epochs": 1}}]})
    result = compress(user_model, recipe, digits, out_dir=tmp_path, eval_config=FAST,
                      progress=False)
    assert result.paths["model"].name == "model.pt2"
    x = digits.test.tensors[0][:8]
    assert torch.allclose(load_model(result.paths["model"])(x), result.model(x))


def test_compress_never_changes_the_callers_model(mlp, digits):
    before = {name: tensor.clone() for name, tensor in mlp.state_dict().items()}
    recipe = parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "finetune_epochs": 0}},
                                      {"quantize": {"calibration_batches": 2}}]})
    result = compress(mlp, recipe, digits, eval_config=FAST, progress=False)
    after = mlp.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert result.model is not mlp and not result.model.training
    x = digits.test.tensors[0][:8]
    assert not torch.equal(result.model(x), mlp(x))


def test_evaluate_models_compares_each_model_with_the_first(lenet5, lenet300, mnist, tmp_path):
    report, paths = evaluate_models([("lenet5", "baseline", lenet5),
                                     ("lenet300", "baseline", lenet300)], mnist,
                                    out_dir=tmp_path, eval_config=FAST)
    first, second = report["models"]
    assert first["compression_ratio"] == 1.0 and first["agreement"] == 1.0
    assert second["compression_ratio"] == pytest.approx(first["size_bytes"] / second["size_bytes"])
    assert 0.9 < second["agreement"] < 1.0  # two good models mostly, not always, agree
    assert set(paths) == {"json", "md", "html"}


class _Record(Stage):
    kind = "record"

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        context.record("layers", {"fc1": 0.5})
        return model


def test_what_a_stage_records_lands_under_its_entry_in_the_report(mlp, digits, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setitem(STAGES, "record", _Record)
    recipe = parse_recipe({"stages": ["record", {"finetune": {"epochs": 1}}]})
    compress(mlp, recipe, digits, out_dir=tmp_path, eval_config=FAST, progress=False)
    stages = json.loads((tmp_path / "report.json").read_text())["stages"]
    coverage = [stage["details"].pop("coverage") for stage in stages]
    assert stages[0]["details"] == {"layers": {"fc1": 0.5}}
    assert stages[1]["details"] == {}
    # A stage that records no coverage gets one by comparison: 'record' changed nothing, the
    # fine-tune changed every parameter.
    assert coverage[0]["changed_params"] == 0 and coverage[0]["skipped"] == {}
    assert coverage[1]["changed_fraction"] == 1.0


def test_apply_runs_one_method_in_place_and_says_what_it_covered(mlp, digits):
    from nnzip import apply
    from nnzip.prune.stages import Prune

    result = apply(mlp, Prune(sparsity=0.5, finetune_epochs=0), digits)
    assert result.model is mlp and not mlp.training
    weights = [p for p in mlp.parameters() if p.dim() == 2]
    zeros = sum(int((p == 0).sum()) for p in weights)
    assert zeros == round(0.5 * sum(p.numel() for p in weights))
    assert set(result.coverage.changed) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert result.details["target_sparsity"] == 0.5
    same = apply(mlp, "prune", digits, sparsity=0.6, finetune_epochs=0)
    assert same.details["achieved_sparsity"] == pytest.approx(0.6, abs=1e-4)
    with pytest.raises(NnzipError, match="did you mean 'sparsity'"):
        apply(mlp, "prune", digits, sparsty=0.5)


def test_a_stage_that_promises_coverage_and_records_none_is_a_clear_error(mlp, digits,
                                                                           monkeypatch):
    monkeypatch.setattr(_Record, "records_coverage", True, raising=False)
    monkeypatch.setitem(STAGES, "record", _Record)
    with pytest.raises(NnzipError, match="says it records its coverage but did not"):
        compress(mlp, parse_recipe({"stages": ["record"]}), digits, eval_config=FAST,
                 progress=False)
