"""nnzip search: the space's validation, the front's files, reproduction, resume and workers.

Every search here compresses a LeNet-300-100 trained on scikit-learn's 8×8 digits (a trial is
two seconds): prune with 1 fine-tune epoch, cluster without fine-tuning, optionally encode.
"""

import json
import shutil
from pathlib import Path

import optuna
import pytest

from nnzip import compress, load_recipe, save
from nnzip.cli import main
from nnzip.errors import NnzipError
from nnzip.search import (
    SearchInterrupted,
    dominates,
    load_space,
    pareto_indices,
    parse_constraint,
    parse_objectives,
    parse_space,
    search,
)
from nnzip.search.runner import TrialRunner


def _study(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out.resolve()}/search.db")


# --- the space --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "names"), [
    ("stages: [{prnue: {sparsity: 0.5}}]", ["stage 1", "prnue", "did you mean 'prune'"]),
    ("stages: [{prune: {sparsity: {low: 0.9, high: 0.5}}}]", ["'sparsity'", "low <= high"]),
    ("stages: [{prune: {sparsitty: {low: 0.5, high: 0.9}}}]",
     ["unknown option 'sparsitty'", "did you mean 'sparsity'"]),
    ("stages: [{quantize: {weight_bits: 8}}, {cluster: {bits: 4}}]",
     ["stage 2 (cluster) cannot come here"]),
    ("stages: [{one_of: [{cluster: {}}]}]", ["one_of", "at least two stages"]),
    ("stages: [{prune: {optional: maybe}}]", ["'optional' must be true or false"]),
    ("finetune_epoch: 2\nstages: [prune]", ["unknown key 'finetune_epoch'",
                                              "did you mean 'finetune_epochs'"]),
    ("finetune_epochs: -1\nstages: [prune]", ["'finetune_epochs'", "greater than or equal"]),
    ("fidelity: {short_fraction: 2}\nstages: [prune]", ["'fidelity.short_fraction'"]),
    ("base: &b {sparsity: 0.5}\nstages: [{prune: *b}]", ["anchors and aliases"]),
    ("stages: []", ["non-empty 'stages' list"]),
])
def test_bad_space_is_refused_naming_the_field(tmp_path, text, names):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(NnzipError) as caught:
        load_space(path)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_shipped_search_spaces_load():
    spaces = sorted((Path(__file__).parents[2] / "recipes").glob("search-*.yaml"))
    assert spaces
    for path in spaces:
        assert load_space(path).combinations()


def test_space_combinations_follow_the_optional_and_one_of_entries():
    space = parse_space({"stages": [
        {"prune": {"sparsity": {"low": 0.5, "high": 0.9}}},
        {"one_of": [{"cluster": {"bits": {"choices": [3, 4]}}},
                    {"quantize": {"weight_bits": {"low": 4, "high": 8},
                                  "activation_bits": None}}]},
        {"encode": {"optional": True}}]})
    kinds = sorted(tuple(s.kind for s in combo) for combo in space.combinations())
    assert kinds == [("prune", "cluster"), ("prune", "cluster", "encode"),
                     ("prune", "quantize"), ("prune", "quantize", "encode")]
    fixed = optuna.trial.FixedTrial({"slot1.prune.sparsity": 0.75, "slot2": "quantize",
                                     "slot2.quantize.weight_bits": 6, "slot3": "none"})
    recipe = space.sample(fixed)
    assert [step.stage.kind for step in recipe.steps] == ["prune", "quantize"]
    assert recipe.steps[0].stage.sparsity == 0.75
    assert recipe.steps[1].stage.weight_bits == 6
    assert recipe.steps[1].stage.activation_bits is None


@pytest.mark.parametrize(("given", "message"), [
    (["accuracy", "byts"], "did you mean 'bytes'"),
    (["accuracy", "accuracy"], "name one twice"),
    ([], "at least one objective"),
])
def test_bad_objectives_are_refused(given, message):
    with pytest.raises(NnzipError, match=message):
        parse_objectives(given)


def test_directions_are_inferred_and_constraints_parsed():
    metrics = parse_objectives(["accuracy", "bytes", "latency@64", "accuracy_drop", "flops"])
    assert [m.direction for m in metrics] == ["maximize", "minimize", "minimize", "minimize",
                                              "minimize"]
    assert metrics[2].latency_batch == 64
    constraint = parse_constraint("accuracy_drop <= 0.5")
    row, baseline = {"accuracy": 0.97}, {"accuracy": 0.98}
    assert constraint.violation(row, baseline) == pytest.approx(0.5)  # 1 point drop, limit 0.5
    assert parse_constraint("accuracy>=0.9").violation(row, baseline) == pytest.approx(-0.07)
    with pytest.raises(NnzipError, match="NAME<=VALUE"):
        parse_constraint("accuracy_drop < 0.5")


def test_pareto_indices_keep_exactly_the_non_dominated_points():
    values = [[0.9, 100], [0.8, 50], [0.85, 120], [0.9, 100], [0.7, 60]]
    directions = ["maximize", "minimize"]
    assert pareto_indices(values, directions) == [0, 1, 3]  # 2 and 4 dominated; ties kept
    assert dominates([0.9, 100], [0.85, 120], directions)
    assert not dominates([0.9, 100], [0.9, 100], directions)


# --- a real search ----------------------------------------------------------------------------

@pytest.fixture
def four_trials(tiny_search):
    """The session's 4-trial search (tests/conftest.py: accuracy vs bytes, drop <= 5 points)."""
    return tiny_search


def test_four_trial_search_writes_a_front_of_non_dominated_feasible_trials(four_trials):
    _, _, out, result = four_trials
    summary = json.loads((out / "front.json").read_text())
    assert result.finished == 4
    assert len(summary["trials"]) + summary["trials_by_state"]["pruned"] == 4
    assert [o["direction"] for o in summary["objectives"]] == ["maximize", "minimize"]
    directions = ["maximize", "minimize"]
    feasible = [t for t in summary["trials"] if t["feasible"]]
    front = [t for t in feasible if t["number"] in summary["front"]]
    assert front and summary["front"] == [p["number"] for p in summary["points"]]
    values = {t["number"]: [t["values"]["accuracy"], t["values"]["bytes"]] for t in feasible}
    for point in front:  # nothing feasible dominates a front point ...
        assert not any(dominates(v, values[point["number"]], directions)
                       for v in values.values())
    for trial in feasible:  # ... and every feasible trial left out is dominated by one
        if trial["number"] not in summary["front"]:
            assert any(dominates(values[p["number"]], values[trial["number"]], directions)
                       for p in front)
    for trial in summary["trials"]:  # feasible means the constraint held on validation
        assert trial["feasible"] == (trial["constraint_violations"][0] <= 0)
    for point in summary["points"]:  # re-measured on the test split, from the real artifact
        assert point["test"]["size_bytes"] == Path(point["artifact"]).stat().st_size
        assert 0 < point["test"]["accuracy"] <= 1
        assert Path(point["front_recipe"]).is_file()
    table = (out / "front.md").read_text()
    assert table.count("| yes |") == len(front)
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"


def test_a_front_recipe_reproduces_its_bytes_and_test_accuracy(four_trials, digits):
    model, _, out, _ = four_trials
    point = json.loads((out / "front.json").read_text())["points"][0]
    header = Path(point["front_recipe"]).read_text().splitlines()[1]
    assert header.endswith("--finetune-epochs 1 --seed 0 --work-threads 1")
    recipe = load_recipe(point["front_recipe"])
    result = compress(model, recipe, digits, finetune_epochs=1, seed=0, progress=False)
    row = result.report["models"][-1]
    assert row["size_bytes"] == point["test"]["size_bytes"]
    assert row["accuracy"] == pytest.approx(point["test"]["accuracy"], abs=1e-12)


def test_rerun_with_more_trials_extends_keeping_the_finished_ones(four_trials, digits,
                                                                  tmp_path):
    model, folder, finished, _ = four_trials
    out = tmp_path / "out"  # a copy: the session's search is read by other tests
    shutil.copytree(finished, out)
    before = {t.number: t.values for t in _study(out).get_trials(states=(
        optuna.trial.TrialState.COMPLETE,))}
    result = search(model, digits, folder / "space.yaml", out=out, trials=5,
                    constraints=["accuracy_drop<=5"], progress=False)
    trials = _study(out).get_trials()
    assert result.finished == 5 and len(trials) == 5
    assert {t.number: t.values for t in trials if t.number in before} == before
    again = search(model, digits, folder / "space.yaml", out=out, trials=5,
                   constraints=["accuracy_drop<=5"], progress=False)
    assert again.finished == 5 and len(_study(out).get_trials()) == 5  # nothing run twice
    with pytest.raises(NnzipError, match="other settings"):
        search(model, digits, folder / "space.yaml", out=out, trials=5,
               constraints=["accuracy_drop<=1"], progress=False)


def test_ctrl_c_in_a_trial_keeps_the_finished_ones_and_the_same_call_resumes(
        trained_mlp, digits, space_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    real = TrialRunner._compress

    def interrupted_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TrialRunner, "_compress", interrupted_second)
    with pytest.raises(SearchInterrupted, match="1 finished trial"):
        search(trained_mlp, digits, space_file, out=out, trials=2, objectives=["bytes"],
               progress=False, heldout=False)
    states = [t.state for t in _study(out).get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    first = _study(out).trials[0].values
    assert json.loads((out / "front.json").read_text())["interrupted"] is True
    monkeypatch.setattr(TrialRunner, "_compress", real)
    result = search(trained_mlp, digits, space_file, out=out, trials=2, objectives=["bytes"],
                    progress=False, heldout=False)
    trials = _study(out).get_trials()
    assert result.finished == 2
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[0].values == first


def test_two_workers_finish_exactly_the_trials_asked_for(trained_mlp, digits, space_file,
                                                         tmp_path):
    out = tmp_path / "out"
    result = search(trained_mlp, digits, space_file, out=out, trials=4, workers=2,
                    objectives=["accuracy", "bytes"], progress=False, heldout=False)
    trials = _study(out).get_trials()
    assert result.finished == 4 and len(trials) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "2", "3"]


# --- the command ------------------------------------------------------------------------------

def test_cli_search_runs_and_refuses_bad_input_in_one_line(trained_mlp, space_file, tmp_path,
                                                           capsys):
    model_dir = save(trained_mlp, tmp_path / "mlp")
    out = tmp_path / "out"
    common = ["search", "--model", str(model_dir), "--data", "digits", "--space",
              str(space_file), "--out", str(out), "--no-progress"]
    assert main([*common, "--constraint", "accuracy_drop<0.5"]) == 2
    assert "NAME<=VALUE" in capsys.readouterr().err
    assert main([*common, "--trials", "0"]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    assert main([*common[:-3], "--out", str(unrelated), "--no-progress"]) == 2
    assert "not a search" in capsys.readouterr().err
    assert main([*common, "--trials", "1", "--objectives", "bytes"]) == 0
    assert "1 finished trials" in capsys.readouterr().out
    assert json.loads((out / "front.json").read_text())["trials_by_state"]["complete"] == 1
    # Rows named by what the model is; the front recipe reproduces with the --model given.
    rows = json.loads((out / "report.json").read_text())["models"]
    assert [(r["name"], r["stage"]) for r in rows] == [("LeNet-300-100 (8×8 digits)", "baseline"),
                                                       ("LeNet-300-100 (8×8 digits)", "trial 0")]
    header = (out / "front" / "trial-0.yaml").read_text().splitlines()[1]
    assert f"nnzip compress --model {model_dir} --recipe" in header


def test_short_rung_stops_a_trial_that_misses_the_accuracy_constraint_by_more_than_the_slack(
        trained_mlp, digits, tmp_path, tiny_space_text):
    space = tmp_path / "space.yaml"
    space.write_text(tiny_space_text().replace("finetune_epochs: 1\nstages:",
                                        "finetune_epochs: 1\nfidelity: {short_fraction: 0.5, "
                                        "slack_points: 1.0}\nstages:"))
    # A drop below -10 points (a 10-point gain) cannot be met: stopped after the short rung.
    search(trained_mlp, digits, space, out=tmp_path / "hard", trials=1, objectives=["bytes"],
           constraints=["accuracy_drop<=-10"], progress=False, heldout=False)
    trial, = _study(tmp_path / "hard").get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned"].startswith("short rung: accuracy_drop<=-10 missed by")
    assert trial.user_attrs["short_rung"]["violations"][0] > 1.0
    assert not (tmp_path / "hard" / "trials" / "0" / "run").exists()  # no full-budget run
    # Met at the short rung: the trial goes on to the full budget and completes.
    search(trained_mlp, digits, space, out=tmp_path / "easy", trials=1, objectives=["bytes"],
           constraints=["accuracy_drop<=100"], progress=False, heldout=False)
    trial, = _study(tmp_path / "easy").get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["short_rung"]["violations"][0] <= 0
    assert (tmp_path / "easy" / "trials" / "0" / "run" / "report.json").is_file()
