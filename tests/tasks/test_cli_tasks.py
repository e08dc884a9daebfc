"""`nnzip compress` and `nnzip eval` on a Hugging Face encoder: the embed task end to end."""

import json

from nnzip.cli import main
from nnzip.evaluate import EvalConfig, evaluate
from nnzip.models import load_model
from nnzip.tasks import sentence_data


def test_compress_runs_a_recipe_on_minilm_and_reports_sts_metrics(minilm, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n"
                      "  - prune: {sparsity: 0.5, criterion: wanda, calibration_batches: 2,\n"
                      "            finetune_epochs: 0}\n"
                      "  - distill: {finetune_epochs: 1, lr: 1.0e-5, batch_size: 16}\n"
                      "  - quantize: {activation_bits: null, embedding_bits: 8}\n")
    out = tmp_path / "run"
    assert main(["compress", "--model", "hf:minilm", "--recipe", str(recipe), "--out", str(out),
                 "--pairs", "16", "--train-sentences", "48", "--repeats", "1",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # Piped, the summary is aligned lines no terminal width wraps: every row whole.
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert any(line.startswith("| STS Spearman ") for line in table)
    assert any(line.startswith("| Fidelity (cos) ") for line in table)
    assert len({len(line) for line in table}) == 1 and all(line.endswith("|") for line in table)
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "embed"
    rows = {row["stage"]: row for row in report["models"]}
    assert list(rows) == ["baseline", "prune", "distill", "quantize"]
    assert rows["baseline"]["fidelity"] > 0.9999
    assert all(0 < row["fidelity"] <= 1 and -1 <= row["spearman"] <= 1 for row in rows.values())
    assert rows["prune"]["nonzero_params"] < 0.85 * rows["baseline"]["nonzero_params"]
    assert rows["quantize"]["size_bytes"] < 0.3 * rows["baseline"]["size_bytes"]
    assert "| STS Spearman | Fidelity (cos) | Top-10 overlap |" in (out / "report.md").read_text()
    # The saved artifact (sparse int8 .nnz) reloads to the very model that was measured.
    saved = out / "model.nnz"
    assert saved.is_file() and saved.stat().st_size < 0.2 * rows["baseline"]["size_bytes"]
    data = sentence_data(minilm, pairs=16, train_sentences=48, seed=0)
    again = evaluate(load_model(str(saved)), data, config=EvalConfig(repeats=1, warmup=1,
                                                                      batch_sizes=(1,)))
    assert again["spearman"] == rows["quantize"]["spearman"]
    assert again["fidelity"] == rows["quantize"]["fidelity"]


def test_a_recipe_stage_that_does_not_fit_an_encoder_is_refused_before_any_encoding(
        minilm, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - finetune: {epochs: 1}\n"
                      "  - mixed_precision: {average_bits: 4}\n")
    assert main(["compress", "--model", "hf:minilm", "--recipe", str(recipe), "--out",
                 str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "stage 2 (mixed_precision) does not fit the embed task" in error
    assert not (tmp_path / "run").exists()


def test_an_encoder_is_judged_on_sts_not_on_other_data(minilm, capsys):
    assert main(["eval", "--model", "hf:minilm", "--data", "digits"]) == 2
    assert "judged on STS-B, not on --data digits" in capsys.readouterr().err
