"""`nnzip train --arch gpt --data stsb-lm` trains the causal LM and reports its perplexity (the
test split's logits are never held at once)."""

import math

import pytest
from lm_helpers import tiny_lm_data

import nnzip.cli
from nnzip.cli import main
from nnzip.models import load_model
from nnzip.models.causal_lm import tied_head
from nnzip.models.io import read_spec


def test_train_gpt_on_stsb_lm_saves_a_tied_model_and_its_perplexity(tmp_path, capsys,
                                                                     monkeypatch):
    # The real stsb-lm, cut to its first blocks so one epoch takes seconds.
    monkeypatch.setattr(nnzip.cli, "_load_data", lambda args: tiny_lm_data())
    out = tmp_path / "gpt"
    assert main(["train", "--arch", "gpt", "--data", "stsb-lm", "--epochs", "1", "--out",
                 str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())   # rich wraps long lines
    assert "test perplexity" in printed and "on 256 tokens" in printed
    perplexity = read_spec(out)["extra"]["test_perplexity"]
    assert 1 < perplexity < 30522 * 2 and math.isfinite(perplexity)
    assert f"{perplexity:.2f}" in printed
    model = load_model(out)
    assert tied_head(model) and model.config.n_positions == 16


@pytest.mark.parametrize("arch", ["lenet5"])
def test_an_image_model_on_token_data_is_a_clear_error(arch, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(nnzip.cli, "_load_data", lambda args: tiny_lm_data())
    assert main(["train", "--arch", arch, "--data", "stsb-lm", "--out",
                 str(tmp_path / "m")]) == 2
    assert "lenet5" in capsys.readouterr().err
