"""The STS Benchmark splits are read whole, quotes included, from the shared data folder."""

import pytest

from nnzip.data.sts import calibration_sentences, find_sts_dir, load_sts, read_sts
from nnzip.errors import NnzipError


def test_dev_and_train_have_all_their_pairs():
    dev, train = load_sts("dev"), load_sts("train")
    assert len(dev) == 1500 and len(train) == 5749
    assert all(0.0 <= score <= 5.0 for score in dev.scores)
    assert dev.sentence1[0] == "A man with a hard hat is dancing."
    # A sentence with a bare quote character stays whole (csv.QUOTE_NONE).
    assert any('"' in s for s in train.sentence1 + train.sentence2)


def test_nnzip_data_env_var_wins(monkeypatch, tmp_path):
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "sts-dev.csv").write_text(
        "g\tf\t2012\t0001\t2.5\tA cat sits.\tA cat is sitting.\n")
    monkeypatch.setenv("NNZIP_DATA", str(tmp_path))
    assert find_sts_dir() == tmp_path / "stsb"
    assert load_sts("dev").scores == [2.5]


def test_malformed_row_names_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("g\tf\t2012\t0001\t2.5\tA\tB\ng\tf\t2012\t0002\tfive\tA\tB\n")
    with pytest.raises(NnzipError, match="bad.csv:2"):
        read_sts(path)


def test_calibration_sentences_come_from_train_only():
    dev = set(load_sts("dev").sentences())
    train = set(load_sts("train").sentences())
    chosen = calibration_sentences(64, seed=1)
    assert len(set(chosen)) == 64 and set(chosen) <= train
    assert chosen == calibration_sentences(64, seed=1)
    assert len(set(chosen) - dev) > 0


def test_unknown_split_is_an_error():
    with pytest.raises(NnzipError, match="split"):
        load_sts("test")
