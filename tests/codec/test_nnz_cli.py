"""`nnzip eval` weighs an .nnz model as the file, not as the dense model it decodes to."""

import json

import torch

import nnzip
from nnzip.cli import main
from nnzip.models import create_model
from nnzip.share import cluster_weights

FAST = ["--repeats", "3", "--robustness-samples", "100", "--no-progress"]


def test_eval_of_an_nnz_file_reports_the_file_bytes(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=(1, 8, 8), num_classes=10)
    cluster_weights(model, 4)
    nnz = nnzip.save(model, tmp_path / "mlp.nnz")
    assert main(["eval", "--model", str(nnz), "--data", "digits", "--out",
                 str(tmp_path / "e"), *FAST]) == 0
    capsys.readouterr()
    entry = json.loads((tmp_path / "e/report.json").read_text())["models"][0]
    assert entry["size_bytes"] == nnz.stat().st_size
