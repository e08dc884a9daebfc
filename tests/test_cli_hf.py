"""`nnzip sts` judges a Hugging Face encoder on STS-B; image commands refuse hf: models clearly."""

from nnzip.cli import main


def test_sts_command_reports_fp32_and_quantized_scores(minilm, capsys):
    assert main(["sts", "--model", "hf:minilm", "--pairs", "24", "--quantize", "dynamic",
                 "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "fp32: Spearman" in out and "dynamic: Spearman" in out and "of fp32" in out


def test_deploy_points_hf_models_to_eval_and_sts(capsys):
    assert main(["deploy", "--model", "hf:minilm"]) == 2
    assert "nnzip sts --model hf:minilm" in capsys.readouterr().err
