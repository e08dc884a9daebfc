"""`nnzip eval` names its rows by what each model is, as `nnzip compress` does."""

import json

import torch
from torch import nn

from nnzip.cli import main
from nnzip.models import save_model

FAST = ["--repeats", "3", "--robustness-samples", "50", "--no-progress"]


def test_eval_rows_are_named_by_architecture_and_data_or_else_by_file(trained_mlp, digits,
                                                                      tmp_path):
    # A zoo model in a cache-style folder: named by what it is, not by the folder.
    reference = save_model(trained_mlp, tmp_path / "lenet300-digits-d785a6554558")
    # A model without a zoo spec (a torch.export file) cannot say what it is: its file's name.
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, digits.num_classes)).eval()
    example = digits.test.tensors[0][:2]
    exported = torch.export.export(plain, (example,),
                                   dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(exported, tmp_path / "mystery.pt2")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "mystery.pt2"), "--reference",
                 str(reference), "--data", "digits", "--out", str(out), *FAST]) == 0
    rows = json.loads((out / "report.json").read_text())["models"]
    assert [(r["name"], r["stage"]) for r in rows] == [
        ("LeNet-300-100 (8×8 digits)", "baseline"), ("mystery", "evaluated")]
    # Both the same architecture: one name, the stage tells them apart in every table.
    same = tmp_path / "same"
    assert main(["eval", "--model", str(reference), "--reference", str(reference), "--data",
                 "digits", "--out", str(same), *FAST]) == 0
    rows = json.loads((same / "report.json").read_text())["models"]
    assert [(r["name"], r["stage"]) for r in rows] == [
        ("LeNet-300-100 (8×8 digits)", "baseline"), ("LeNet-300-100 (8×8 digits)", "evaluated")]
    assert "| LeNet-300-100 (8×8 digits) | evaluated |" in (same / "report.md").read_text()
