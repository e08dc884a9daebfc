"""Recipes are validated up front, and every error names the recipe, the stage and the option."""

from pathlib import Path

import pytest

from nnzip.errors import NnzipError
from nnzip.recipe import load_recipe, parse_recipe
from nnzip.train import Finetune

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_recipes_all_parse():
    # search-*.yaml are search spaces, not recipes (tests/search checks them)
    recipes = sorted(p for p in (REPO / "recipes").glob("*.yaml")
                     if not p.name.startswith("search-"))
    assert recipes
    for path in recipes:
        assert load_recipe(path).steps


def test_a_recipe_becomes_ordered_labelled_stages(tmp_path):
    recipe = load_recipe(_write(tmp_path, """
name: two-step
stages:
  - finetune: {epochs: 2, lr: 1.0e-3}
  - finetune:
      label: polish
      lr: 1e-5
  - finetune
"""))
    assert recipe.name == "two-step"
    assert [step.label for step in recipe.steps] == ["finetune", "polish", "finetune#2"]
    first, second, third = (step.stage for step in recipe.steps)
    assert isinstance(first, Finetune) and first.epochs == 2 and first.lr == 1e-3
    assert second.lr == 1e-5  # YAML reads 1e-5 as a string; the option still gets a float
    assert third.epochs is None  # falls back to the pipeline's fine-tune budget
    assert recipe.to_dict()["stages"][1]["options"]["lr"] == 1e-5


def test_unknown_stage_is_named_with_a_suggestion(tmp_path):
    path = _write(tmp_path, "stages:\n  - finetune: {}\n  - finetun: {epochs: 1}\n")
    with pytest.raises(NnzipError, match=r"stage 2: unknown stage 'finetun' \(did you mean "
                                         r"'finetune'\?\); known stages: [a-z_, ]*finetune"):
        load_recipe(path)


def test_unknown_option_is_named_with_the_valid_ones(tmp_path):
    path = _write(tmp_path, "stages:\n  - finetune: {epoch: 1}\n")
    with pytest.raises(NnzipError, match=r"stage 1 \(finetune\): unknown option 'epoch' \(did "
                                         r"you mean 'epochs'\?\); valid options: .*lr"):
        load_recipe(path)


def test_ill_typed_option_is_named(tmp_path):
    path = _write(tmp_path, "stages:\n  - finetune: {lr: fast}\n")
    with pytest.raises(NnzipError, match=r"option 'lr': Input should be a valid number"):
        load_recipe(path)
    with pytest.raises(NnzipError, match=r"option 'epochs': Input should be greater than or"):
        parse_recipe({"stages": [{"finetune": {"epochs": -1}}]})


def test_malformed_yaml_gives_the_line(tmp_path):
    path = _write(tmp_path, "stages:\n  - finetune: {epochs: 2\n  - finetune: {}\n")
    with pytest.raises(NnzipError, match=r"not valid YAML at line \d+, column \d+"):
        load_recipe(path)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "must be a mapping"),
    ({"stage": []}, r"unknown key 'stage' \(did you mean 'stages'\?\)"),
    ({"stages": []}, "non-empty 'stages' list"),
    ({"stages": [{"finetune": {}, "prune": {}}]}, "exactly one kind per list item"),
])
def test_malformed_structure_is_explained(data, message):
    with pytest.raises(NnzipError, match=message):
        parse_recipe(data)


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(NnzipError, match="recipe file .*nope.yaml not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_renamed_option_still_parses_under_its_old_name(caplog):
    """Recipes written before issue 13's renames keep working and are told the new name."""
    from nnzip.recipe import STAGES

    renamed = {(kind, old, new) for kind, cls in STAGES.items()
               for old, new in cls.renamed.items()}
    assert {("prune_channels", "ratio", "sparsity"), ("prune_channels", "ignored_layers",
            "exclude"), ("svd", "ratio", "keep"), ("tucker", "ratio", "keep"),
            ("quantize", "skip", "exclude")} <= renamed
    values = {"sparsity": 0.5, "keep": 0.5, "exclude": ["fc1"]}
    required = {"mixed_precision": {"average_bits": 4}}
    for kind, old, new in renamed:
        assert new in STAGES[kind].model_fields
        options = {old: values[new], **required.get(kind, {})}
        with caplog.at_level("WARNING"):
            stage = parse_recipe({"stages": [{kind: options}]}).steps[0].stage
        assert getattr(stage, new) == values[new]
        assert f"option {old!r} is now called {new!r}" in caplog.text
