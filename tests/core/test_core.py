"""The shared plumbing: layer selection, weight discovery (tied once), coverage."""

import pytest
import torch
from torch import nn

from nnzip.core import build_coverage, find_weights, matches, select_names
from nnzip.core.weights import Kind
from nnzip.errors import NnzipError
from nnzip.models.examples import EXAMPLES, example_model

NAMES = ["blocks.0.attn.in_proj_weight", "blocks.0.attn.out_proj.weight", "blocks.0.mlp.0.weight",
         "blocks.1.attn.in_proj_weight", "head.weight"]


@pytest.mark.parametrize("pattern, expected", [
    ("head", ["head.weight"]),
    ("head.weight", ["head.weight"]),
    ("blocks.*.attn", [NAMES[0], NAMES[1], NAMES[3]]),
    ("*in_proj_weight", [NAMES[0], NAMES[3]]),
    ("blocks.0", NAMES[:3]),
])
def test_a_pattern_names_a_parameter_a_module_or_a_glob(pattern, expected):
    assert [name for name in NAMES if matches(name, pattern)] == expected
    assert select_names(NAMES, [pattern]) == expected


def test_exclude_removes_after_layers_selects():
    assert select_names(NAMES, ["blocks.*"], ["*.attn"]) == ["blocks.0.mlp.0.weight"]


def test_a_pattern_matching_nothing_is_an_error_with_a_suggestion():
    with pytest.raises(NnzipError, match="did you mean 'head'"):
        select_names(NAMES, ["haed"])
    with pytest.raises(NnzipError, match="exclude"):
        select_names(NAMES, None, ["nothing.here"])


def test_a_pattern_naming_only_unhandled_parameters_says_so():
    with pytest.raises(NnzipError, match="does not change"):
        select_names(NAMES, ["norm"], others=["norm.weight"])


def test_excluding_everything_is_an_error():
    with pytest.raises(NnzipError, match="no weights left"):
        select_names(NAMES, ["head"], ["head"])


def test_weights_are_found_wherever_they_live():
    kinds = {name: {w.kind for w in find_weights(example_model(name)[0])} for name in EXAMPLES}
    assert {Kind.ATTENTION_IN, Kind.ATTENTION_OUT} <= kinds["vit"]
    assert {Kind.ATTENTION_IN, Kind.ATTENTION_OUT, Kind.EMBEDDING} <= kinds["text_transformer"]
    assert {Kind.RNN, Kind.EMBEDDING} <= kinds["lstm_lm"] and Kind.RNN in kinds["gru_lm"]
    assert kinds["functional"] == {Kind.FUNCTIONAL}


def test_a_tied_weight_is_one_weight_with_its_other_name():
    model, _ = example_model("lstm_lm")
    tied = [w for w in find_weights(model) if w.tied]
    assert [(w.name, w.aliases) for w in tied] == [("embed.weight", ("decoder.weight",))]
    assert sum(w.numel for w in find_weights(model)) == sum(
        p.numel() for p in model.parameters() if p.dim() == 2)


def test_token_and_position_parameters_are_not_weights():
    names = {w.name for w in find_weights(example_model("vit")[0])}
    assert "cls_token" not in names and "pos_embed" not in names
    assert "patch_embed.weight" in names


def test_a_parametrized_weight_is_found_under_the_name_it_is_read_as():
    layer = nn.Linear(4, 3)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", nn.Identity())
    assert [(w.name, w.kind) for w in find_weights(nn.Sequential(layer))] == [("0.weight",
                                                                                "linear")]


def test_coverage_accounts_for_every_parameter_once():
    model, _ = example_model("lstm_lm")
    coverage = build_coverage(model, "demo", changed={"decoder.weight": "pruned"},
                              skipped={"rnn.weight_ih_l0": "cannot"})
    assert coverage.total_params == sum(p.numel() for p in model.parameters())
    assert coverage.changed == ["embed.weight"]
    assert coverage.changed_params == 100 * 32
    assert coverage.skipped == {"rnn.weight_ih_l0": "cannot"}
    record = coverage.to_dict()["params"]
    assert record["embed.weight"]["aliases"] == ["decoder.weight"]
    assert record["rnn.bias_ih_l0"]["note"].startswith("1-D")


def test_prediction_rows_flatten_positions_with_classes_last_or_second():
    from nnzip.core.outputs import prediction_rows

    lm = torch.randn(2, 5, 7)  # (N, L, vocab), labels (N, L)
    rows, labels = prediction_rows(lm, torch.zeros(2, 5, dtype=torch.long))
    assert rows.shape == (10, 7) and labels.shape == (10,)
    assert torch.equal(rows[6], lm[1, 1])
    segmentation = torch.randn(2, 3, 4, 4)  # (N, C, H, W), labels (N, H, W)
    rows, labels = prediction_rows(segmentation, torch.zeros(2, 4, 4, dtype=torch.long))
    assert rows.shape == (32, 3) and torch.equal(rows[0], segmentation[0, :, 0, 0])
    flat = torch.randn(4, 10)
    assert prediction_rows(flat)[0] is flat


def test_accuracy_and_agreement_count_every_position_of_a_language_model():
    from nnzip.evaluate.accuracy import accuracy, agreement

    logits = torch.zeros(2, 3, 4)
    logits[..., 1] = 1.0
    labels = torch.tensor([[1, 1, 0], [1, 2, 1]])
    assert accuracy(logits, labels) == 4 / 6
    other = logits.clone()
    other[0, 0, 3] = 5.0
    assert agreement(logits, other) == 5 / 6


@pytest.mark.parametrize("package", ["core", "codec"])
def test_shared_packages_import_no_method_family(package):
    """Layering (STYLE.md): core and the codec are used by the families, never the reverse."""
    import ast
    from pathlib import Path

    import nnzip

    families = {"prune", "quant", "distill", "factorize", "share", "runtime", "evaluate",
                "models", "pipeline", "recipe", "cli", "train"}
    folder = Path(nnzip.__file__).parent / package
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nnzip."):
                assert node.module.split(".")[1] not in families, f"{source.name}: {node.module}"
