"""`nnzip sts` judges a Hugging Face encoder on STS-B, fp32 and quantized, in one table that a
pipe does not wrap; image commands refuse hf: models clearly."""

import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import nnzip.cli as cli
from nnzip.cli import STS_COLUMNS, main, sts_text_table
from nnzip.data.sts import load_sts
from nnzip.quant.schemes import RENAMED, SCHEMES

REPO = Path(__file__).resolve().parents[1]
# The module, not the function `nnzip.evaluate` that shadows its package's name.
embedding = importlib.import_module("nnzip.evaluate.embedding")
QUICK = ["--pairs", "40", "--batch-size", "32", "--no-progress"]


@pytest.fixture
def loaded_minilm(monkeypatch, minilm):
    """`hf:minilm` resolves to the session's MiniLM (the command only reads it)."""
    monkeypatch.setattr(cli, "_load_model", lambda spec, trust_pickle: minilm)
    return minilm


def table_rows(out: str) -> dict[str, list[str]]:
    """The rows of the printed markdown table, by scheme: the cells as text."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == list(STS_COLUMNS)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: row for row in rows}


def column(row: list[str], name: str) -> float:
    text = row[STS_COLUMNS.index(name)].replace(",", "").rstrip("%")
    return float(text)


def test_sts_compares_schemes_against_one_fp32_encode(loaded_minilm, monkeypatch, capsys):
    encoded = []
    real_encode = embedding.encode

    def counting_encode(model, *args, **kwargs):
        encoded.append(model)
        return real_encode(model, *args, **kwargs)

    monkeypatch.setattr(embedding, "encode", counting_encode)
    assert main(["sts", "--model", "hf:minilm", *QUICK, "--quantize", "dynamic-int8-emb8",
                 "dynamic-int8"]) == 0
    # fp32 once (its score and the reference), then each scheme once.
    assert len(encoded) == 3 and encoded[0] is loaded_minilm
    assert sum(model is loaded_minilm for model in encoded) == 1
    captured = capsys.readouterr()
    rows = table_rows(captured.out)
    assert list(rows) == ["fp32", "dynamic-int8-emb8", "dynamic-int8"]
    fp32 = column(rows["fp32"], "Spearman")
    assert 0.8 < fp32 <= 1.0  # all-MiniLM-L6-v2 on the first 40 dev pairs
    for name, low, high in (("dynamic-int8-emb8", 20, 30), ("dynamic-int8", 60, 70)):
        row = rows[name]
        assert column(row, "Δ") == pytest.approx(column(row, "Spearman") - fp32, abs=2e-4)
        assert column(row, "cos to fp32") > 0.98
        assert 0.5 < column(row, "top-10 overlap") <= 1.0
        assert low < column(row, "of fp32") < high  # int8 tables: 25 %; Linear only: 65 %
        assert column(row, "bytes") < column(rows["fp32"], "bytes")
    assert "batches" not in captured.err  # --no-progress


def test_old_scheme_name_warns_in_one_line_naming_the_new_one(loaded_minilm, capsys):
    assert main(["sts", "--model", "hf:minilm", *QUICK, "--quantize", "dynamic"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == ["warning: --quantize dynamic is now called dynamic-int8"]
    assert list(table_rows(captured.out)) == ["fp32", "dynamic-int8"]


def test_split_train_judges_the_training_pairs(loaded_minilm, capsys):
    assert main(["sts", "--model", "hf:minilm", *QUICK, "--split", "train"]) == 0
    out = capsys.readouterr().out
    train = load_sts("train").head(40)
    assert f"STS-B train: 40 pairs, {len(train.sentences())} sentences" in out
    assert list(table_rows(out)) == ["fp32"]
    assert 0.5 < column(table_rows(out)["fp32"], "Spearman") <= 1.0


def test_progress_goes_to_stderr_and_the_table_to_stdout(loaded_minilm, capsys):
    assert main(["sts", "--model", "hf:minilm", "--pairs", "40", "--batch-size", "32",
                 "--quantize", "dynamic-int8"]) == 0
    captured = capsys.readouterr()
    assert "encode fp32" in captured.err and "encode dynamic-int8" in captured.err
    assert "quantize dynamic-int8" in captured.err
    assert "batches" not in captured.out and "encode fp32" not in captured.out
    assert list(table_rows(captured.out)) == ["fp32", "dynamic-int8"]


def test_on_a_terminal_the_table_is_a_rich_table(loaded_minilm, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=True, width=160))
    assert main(["sts", "--model", "hf:minilm", *QUICK]) == 0
    text = screen.getvalue()
    assert "┃" in text and "top-10 overlap" in text and "fp32" in text
    assert "|---" not in text


def test_unknown_scheme_is_an_error_listing_the_valid_ones(capsys):
    assert main(["sts", "--model", "hf:minilm", "--quantize", "w8a8-smothquant"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "did you mean 'w8a8-smoothquant'?" in err
    assert all(name in err for name in SCHEMES)


def test_group_size_without_an_int4_scheme_is_an_error(capsys):
    assert main(["sts", "--model", "hf:minilm", "--quantize", "w8a8", "--group-size", "32"]) == 2
    assert "--group-size applies to the weight-int4" in capsys.readouterr().err


def test_too_few_pairs_for_the_neighbour_overlap_is_an_error(loaded_minilm, capsys):
    assert main(["sts", "--model", "hf:minilm", "--pairs", "3", "--no-progress"]) == 2
    assert "raise --pairs" in capsys.readouterr().err


def test_help_explains_every_scheme_and_old_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sts", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, scheme in SCHEMES.items():
        assert f"{name} {' '.join(scheme.summary.split())}" in text
    assert all(f"{old} → {new}" in text for old, new in RENAMED.items())


def test_text_table_columns_line_up_whatever_the_names():
    rows = [{"scheme": "fp32", "spearman": 0.8672, "bytes": 90_273_840, "bytes_fraction": 1.0,
             "encode_seconds": 31.0},
            {"scheme": "weight-int4-gptq g128", "spearman": 0.8669, "spearman_delta": -0.0003,
             "cosine_to_reference": 0.9772, "neighbour_overlap": 0.866, "bytes": 17_822_456,
             "bytes_fraction": 0.197, "quantize_seconds": 24.0, "encode_seconds": 40.0}]
    lines = sts_text_table(rows)
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert [line.index("|", 2) for line in lines] == [lines[0].index("|", 2)] * 4
    assert "| fp32 " in lines[2] and "n/a" in lines[2] and "19.7%" in lines[3]


def test_piped_output_is_never_wrapped_mid_word():
    """The real command, stdout to a pipe and a 40-column terminal width in the environment:
    every line of the table is whole and the numbers are those of a working int8 encoder."""
    env = {**os.environ, "COLUMNS": "40", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "nnzip.cli", "sts", "--model",
         "hf:minilm", "--pairs", "40", "--batch-size", "32", "--calibration", "16",
         "--quantize", "weight-int8", "--work-threads", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    title = lines[0]
    sentences = len(load_sts("dev").head(40).sentences())
    assert title == (f"hf:minilm on STS-B dev: 40 pairs, {sentences} sentences; calibration: 16 "
                     "training sentences")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 4 and lines == [title, "", *table]  # nothing else, nothing wrapped
    assert all(line.endswith("|") and line.count("|") == len(STS_COLUMNS) + 1 for line in table)
    assert max(len(line) for line in table) > 40
    row = table_rows(result.stdout)["weight-int8"]
    assert column(row, "cos to fp32") > 0.99 and 20 < column(row, "of fp32") < 30
    assert "encode fp32" in result.stderr and "━" not in result.stdout
