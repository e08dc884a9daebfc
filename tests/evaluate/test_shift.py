"""Shift suites (nnzip.evaluate.shift): deterministic corruptions, the digits set, the row key."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nnzip.data.digits import digits_like_mnist
from nnzip.data.splits import DataSplits
from nnzip.errors import NnzipError
from nnzip.evaluate.config import EvalConfig
from nnzip.evaluate.metrics import evaluate
from nnzip.evaluate.shift import (
    DIGITS_KEY,
    IMAGE_CORRUPTIONS,
    TEXT_SEVERITIES,
    corrupt,
    shift_report,
    shift_sentence,
)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Eight 1×28×28 'digits': a bright bar on black, so every corruption has a shape to move."""
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1.0
    return x + 0.05 * torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", list(IMAGE_CORRUPTIONS))
def test_corruption_is_deterministic_in_its_seed_and_grows_with_severity(images, kind):
    first = corrupt(images, kind, 2, seed=3)
    assert torch.equal(first, corrupt(images, kind, 2, seed=3))
    distances = [float((corrupt(images, kind, s, seed=3) - images).abs().sum())
                 for s in (1, 2, 3)]
    assert 0 < distances[0] < distances[2]  # severity 3 moves the images further than 1
    assert not torch.equal(corrupt(images, kind, 1, seed=3), first)


@pytest.mark.parametrize("kind", ["rotate", "translate", "elastic", "noise"])
def test_random_corruptions_change_with_the_seed(images, kind):
    assert not torch.equal(corrupt(images, kind, 2, seed=0), corrupt(images, kind, 2, seed=1))


@pytest.mark.parametrize("kind", list(IMAGE_CORRUPTIONS))
def test_corruption_keeps_shape_dtype_range_and_leaves_the_input(images, kind):
    before = images.clone()
    for shape in ((8, 1, 28, 28), (3, 3, 10, 14)):  # any (N, C, H, W), non-square too
        x = images if shape[1] == 1 else torch.rand(shape, generator=torch.Generator()
                                                    .manual_seed(1)) * 2 - 1
        low, high = (0.0, 1.0) if shape[1] == 1 else (-1.0, 1.0)
        out = corrupt(x, kind, 3, input_range=(low, high))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert low <= float(out.min()) and float(out.max()) <= high
    assert torch.equal(images, before)


def test_severity_zero_is_the_clean_input_and_bad_input_is_refused(images):
    assert torch.equal(corrupt(images, "rotate", 0), images)
    with pytest.raises(NnzipError, match="severity must be a whole number from 0"):
        corrupt(images, "rotate", 4)
    with pytest.raises(NnzipError, match="unknown image shift 'fog'"):
        corrupt(images, "fog", 1)
    with pytest.raises(NnzipError, match="take \\(N, C, H, W\\) float images"):
        corrupt(torch.zeros(2, 5, dtype=torch.int64), "blur", 1)
    with pytest.raises(NnzipError, match="shift_severities must be whole numbers from 1 to 3"):
        EvalConfig(shift_severities=(0, 2))


def test_rotating_a_centred_square_by_45_degrees_turns_it_into_a_diamond():
    square = torch.zeros(1, 1, 29, 29)
    square[..., 9:20, 9:20] = 1.0
    diamond = corrupt(square, "rotate", 3)
    assert float(diamond[0, 0, 14, 14]) == pytest.approx(1.0)  # the centre stays
    assert float(diamond[0, 0, 9, 9]) < 0.05  # a corner of the square is now background
    assert float(diamond[0, 0, 14, 7]) > 0.5  # and its tip (7.8 px out) reaches past the side
    assert float(diamond.sum()) == pytest.approx(float(square.sum()), rel=0.05)


def test_digits_are_laid_out_as_mnist_digits_are():
    x, y = digits_like_mnist(28)
    assert x.shape == (1797, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (1797,) and set(y.tolist()) == set(range(10))
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # Each digit fits MNIST's 20×20 box.
    rows_used = (x.sum(dim=(1, 3)) > 0).sum(dim=1)
    columns_used = (x.sum(dim=(1, 2)) > 0).sum(dim=1)
    assert int(rows_used.max()) <= 20 and int(columns_used.max()) <= 20
    rows = torch.arange(28, dtype=torch.float32)
    centre = (x.sum(dim=(1, 3)) * rows).sum(dim=1) / x.sum(dim=(1, 2, 3))
    assert float((centre - 13.5).abs().max()) <= 0.5  # centred by mass, to the pixel


def _images_data(side: int, n: int = 24) -> DataSplits:
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> TensorDataset:
        return TensorDataset(torch.rand(count, 1, side, side, generator=generator),
                             torch.randint(0, 10, (count,), generator=generator))

    return DataSplits("mnist-like", split(8), split(8), split(n), num_classes=10,
                      input_shape=(1, side, side))


def test_report_row_has_the_image_suite_and_the_digits_on_mnist_like_data(fast_config):
    data = _images_data(28)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    config = EvalConfig(warmup=1, repeats=3, batch_sizes=(1,), shift_severities=(1, 3),
                        shift_samples=16, measure_latency=False)
    row = evaluate(model, data, config=config)
    shift = row["shift"]
    assert shift["metric"] == "accuracy" and shift["samples"] == 16
    assert list(shift["values"]) == [f"{kind}@{s}" for kind in IMAGE_CORRUPTIONS
                                     for s in (1, 3)] + [DIGITS_KEY]
    assert all(0.0 <= value <= 1.0 for value in shift["values"].values())
    assert shift["mean"] == pytest.approx(sum(shift["values"].values()) / 13)
    assert "note" not in shift
    # The same model on the same shifts scores the same: the suite is seeded.
    assert shift_report(model, data, None, config) == shift


def test_digits_are_skipped_with_a_note_when_the_data_is_not_mnist_like(tiny_model, tiny_data,
                                                                       fast_config):
    row = evaluate(tiny_model, tiny_data, config=fast_config)
    assert DIGITS_KEY not in row["shift"]["values"] and len(row["shift"]["values"]) == 18
    assert row["shift"]["note"].startswith(f"{DIGITS_KEY} not measured: the 8×8 digits stand in")
    off = EvalConfig(warmup=1, repeats=3, batch_sizes=(1,), shift_severities=())
    assert evaluate(tiny_model, tiny_data, config=off)["shift"] is None


@pytest.mark.parametrize("kind", list(TEXT_SEVERITIES))
def test_text_shift_is_deterministic_nested_and_identity_at_zero(kind):
    sentence = ("A man is playing a large flute in the park today while three small children "
                "dance around him and their parents watch")
    assert shift_sentence(sentence, kind, 0) == sentence
    shifted = [shift_sentence(sentence, kind, s, seed=2) for s in (1, 2, 3)]
    assert shifted == [shift_sentence(sentence, kind, s, seed=2) for s in (1, 2, 3)]
    assert shifted[2] != sentence
    changed = [sum(a != b for a, b in zip(sentence.split(), text.split(), strict=False))
               for text in shifted]
    if kind != "word_dropout":  # same word count: the edits of severity 1 are kept at 3
        assert changed[0] <= changed[1] <= changed[2]
        first_edits = {i for i, (a, b) in enumerate(zip(sentence.split(), shifted[0].split(),
                                                        strict=True)) if a != b}
        assert all(shifted[2].split()[i] == shifted[0].split()[i] for i in first_edits)
    else:
        assert len(shifted[0].split()) >= len(shifted[2].split()) >= 1


def test_text_shifts_edit_as_described():
    words = "the quick brown fox jumps over the lazy dog".split()
    assert shift_sentence(" ".join(words), "casing", 3) == " ".join(words).upper()
    typo = shift_sentence(" ".join(words), "typos", 3, seed=5).split()
    for before, after in zip(words, typo, strict=True):  # a swap keeps the letters, or one goes
        assert after == before or sorted(after) == sorted(before) or len(after) == len(before) - 1
    assert shift_sentence("word", "word_dropout", 3, seed=0) == "word"  # one word is kept
    # Only letters are swapped or deleted: punctuation inside a word is kept.
    typos = {shift_sentence("don't", "typos", 3, seed=seed) for seed in range(20)}
    assert len(typos) > 3 and all(typo.count("'") == 1 for typo in typos)
    assert "do'nt" not in typos  # a letter never trades places with the apostrophe


def test_encoder_row_has_the_text_suite(tiny_encoder):
    from nnzip.tasks import sentence_data

    data = sentence_data(tiny_encoder, pairs=12, train_sentences=8)
    config = EvalConfig(shift_severities=(2,), shift_samples=12, measure_latency=False)
    shift = shift_report(tiny_encoder, data, None, config)
    assert shift["metric"] == "spearman" and shift["samples"] == 12
    # MiniLM's tokenizer is uncased: casing would change nothing, and is said so, not measured.
    assert list(shift["values"]) == ["typos@2", "word_dropout@2"]
    assert "casing not measured" in shift["note"]
    assert all(-1.0 <= value <= 1.0 for value in shift["values"].values())
    assert shift_report(tiny_encoder, data, None, config) == shift


def _row(name: str, stage: str, clean: float, values: dict[str, float]) -> dict:
    from nnzip.evaluate.metrics import REPORT_MODEL_KEYS

    return {**dict.fromkeys(REPORT_MODEL_KEYS), "name": name, "stage": stage, "task": "classify",
            "params": 100, "nonzero_params": 100, "size_bytes": 400, "compression_ratio": 1.0,
            "energy_note": "no RAPL counters here", "accuracy": clean,
            "shift": {"metric": "accuracy", "values": values,
                      "mean": sum(values.values()) / len(values), "samples": 500}}


def test_report_shows_accuracy_and_difference_per_shift_and_a_chart():
    from nnzip.evaluate.report import render_html, render_markdown
    from nnzip.evaluate.shift import shift_chart, shift_table

    models = [_row("lenet5", "baseline", 0.99, {"rotate@1": 0.95, DIGITS_KEY: 0.80}),
              _row("lenet5", "pruned", 0.985, {"rotate@1": 0.91, DIGITS_KEY: 0.82})]
    columns, rows = shift_table(models)
    assert columns == ["Shift", "lenet5 (baseline)", "lenet5 (pruned)",
                       "Δ lenet5 (pruned) (points)"]
    assert rows == [["clean (whole test split)", "99.00%", "98.50%", "-0.50"],
                    ["rotate@1", "95.00%", "91.00%", "-4.00"],
                    [DIGITS_KEY, "80.00%", "82.00%", "+2.00"],
                    ["mean of shifts (500 samples each)", "87.50%", "86.50%", "-1.00"]]
    assert shift_chart(models).startswith(b"\x89PNG")
    from nnzip.evaluate.machine import machine_info

    report = {"nnzip_version": "0", "machine": machine_info(1),
              "models": models}
    markdown = render_markdown(report)
    assert "## Generalization under shift" in markdown
    assert "| rotate@1 | 95.00% | 91.00% | -4.00 |" in markdown
    page = render_html(report)
    assert "<h2>Generalization under shift</h2>" in page
    assert 'alt="Generalization under shift" src="data:image/png;base64,' in page
    # A report without shift entries (older, or shift off) has no such section.
    plain = {**report, "models": [{**m, "shift": None} for m in report["models"]]}
    assert "under shift" not in render_markdown(plain) and "under shift" not in render_html(plain)


def test_cli_options_set_the_shift_suite_and_bad_ones_are_one_line_errors(tmp_path, capsys):
    from nnzip.cli import _eval_config, build_parser, main

    def config(*options: str) -> EvalConfig:
        return _eval_config(build_parser().parse_args(["eval", "--model", "m", *options]))

    assert (config().shift_severities, config().shift_samples) == ((1, 2, 3), 500)
    chosen = config("--shift-severities", "3", "1", "--shift-samples", "64")
    assert (chosen.shift_severities, chosen.shift_samples) == ((3, 1), 64)
    assert config("--no-shift").shift_severities == ()
    assert main(["eval", "--model", "m", "--out", str(tmp_path / "r"),
                 "--shift-severities", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shift-severities (value 1) must be at most 3" in err


def test_nnzip_report_renders_shift_entries_and_refuses_a_mistyped_one(tmp_path, capsys):
    import json

    from nnzip.cli import main
    from nnzip.evaluate.machine import machine_info
    from nnzip.evaluate.report import build_report, write_report

    models = [_row("lenet5", "baseline", 0.99, {"rotate@1": 0.95}),
              _row("lenet5", "pruned", 0.98, {"rotate@1": 0.90})]
    write_report(build_report(models, machine_info(1)), tmp_path)
    assert main(["report", str(tmp_path / "report.json"), "--out", str(tmp_path / "again")]) == 0
    markdown = (tmp_path / "again" / "report.md").read_text()
    assert "| rotate@1 | 95.00% | 90.00% | -5.00 |" in markdown
    report = json.loads((tmp_path / "report.json").read_text())
    report["models"][1]["shift"]["values"]["rotate@1"] = "high"
    (tmp_path / "report.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "report.json"), "--out", str(tmp_path / "bad")]) == 2
    assert "model 1 has shift = " in capsys.readouterr().err


def test_lenet5_reads_the_digits_set_and_loses_accuracy_as_severity_grows(lenet5, mnist):
    config = EvalConfig(shift_severities=(1, 3), shift_samples=300)
    shift = shift_report(lenet5, mnist, None, config)
    values = shift["values"]
    # Laid out as MNIST's, the other writers' digits are mostly read: LeNet-5 (runs/cache) read
    # 80 % of all 1 797; stretched over 28×28 57 %, left 8×8 in the middle 21 %, in a corner 10 %.
    assert values[DIGITS_KEY] > 0.6
    for kind in IMAGE_CORRUPTIONS:
        assert values[f"{kind}@3"] < values[f"{kind}@1"] <= 1.0
    assert shift["mean"] < 0.95  # the shifted sets are harder than the clean split (≈ 98 %)
