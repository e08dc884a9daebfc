"""A search's report: the front first (table and plot), rendered by the report code, and
`nnzip report` re-rendering it from front.json or the search folder."""

import json
import struct

import pytest

from nnzip.cli import main
from nnzip.evaluate.figures import front_chart
from nnzip.evaluate.report import render_html
from nnzip.evaluate.tables import front_columns, front_rows
from nnzip.search import front_report, load_front


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])  # IHDR: width, height


def test_the_search_writes_a_report_whose_first_table_is_the_front_against_the_baseline(
        tiny_search):
    _, _, out, _ = tiny_search
    summary = json.loads((out / "front.json").read_text())
    report = json.loads((out / "report.json").read_text())
    front = sorted(summary["front"])
    assert front and report["search"]["front"] == summary["front"]
    # The baseline and each front point, re-measured on the test split, as report rows.
    assert [m["stage"] for m in report["models"]] == ["baseline", *[f"trial {n}" for n in front]]
    by_number = {p["number"]: p for p in summary["points"]}
    base = report["models"][0]
    for row in report["models"][1:]:
        point = by_number[int(row["stage"].removeprefix("trial "))]
        assert row["size_bytes"] == point["test"]["size_bytes"]
        assert row["accuracy"] == point["test"]["accuracy"]
    columns, rows = front_columns(report["models"], report["search"]), front_rows(
        report["models"], report["search"])
    assert columns[:5] == ["Trial", "Stages", "Options", "accuracy (val)", "bytes (val)"]
    assert [r[0] for r in rows] == ["baseline", *[str(n) for n in sorted(
        front, key=lambda n: -by_number[n]["values"]["accuracy"])]]
    smaller = columns.index("× smaller")
    delta = next(i for i, c in enumerate(columns) if c.startswith("Δ points"))
    for row in rows[1:]:
        test = by_number[int(row[0])]["test"]
        assert row[1] == " → ".join(by_number[int(row[0])]["stages"])
        assert row[smaller] == f"{base['size_bytes'] / test['size_bytes']:.2f}×"
        # The change, then its paired 95 % interval (≈ first when within noise).
        assert row[delta].removeprefix("≈ ").split(" [")[0] == \
            f"{100 * (test['accuracy'] - base['accuracy']):+.2f}"
        assert "sparsity" in row[2] and "slot" not in row[2]
    # No batch was timed (no latency objective): no column of n/a.
    assert not any(c.startswith("Speed-up") for c in columns)
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Search front") < markdown.index("## Models")
    assert markdown.count("| yes |") == len(front)  # the table of every trial
    html = (out / "report.html").read_text()
    assert html.index('id="front"') < html.index('alt="Search front"') < html.index(
        'alt="Metrics"')
    assert 'alt="Trade-off"' not in html  # the front plot takes its place
    assert (out / "front.md").read_text().count("| yes |") == len(front)


def test_nnzip_report_rerenders_a_search_from_its_front_json_or_its_folder(tiny_search,
                                                                          tmp_path, capsys):
    _, _, out, _ = tiny_search
    written = json.loads((out / "report.json").read_text())
    for source, target in ((out / "front.json", tmp_path / "a"), (out, tmp_path / "b")):
        assert main(["report", str(source), "--out", str(target), "--no-progress"]) == 0
        again = json.loads((target / "report.json").read_text())
        assert again["models"] == written["models"] and again["search"] == written["search"]
        assert (target / "report.html").read_text().count('alt="Search front"') == 1
    capsys.readouterr()
    bad = tmp_path / "front.json"
    bad.write_text(json.dumps({"study": "x", "trials": []}))
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a search's front.json" in err, err
    assert "'objectives'" in err


def test_a_search_without_test_numbers_still_renders_its_front(tiny_search):
    """Interrupted, or held-out measurement off: no baseline, the validation values alone."""
    _, _, out, _ = tiny_search
    summary = {**load_front(out), "baseline": None}
    report = front_report(summary)
    assert report["models"] == []
    columns = front_columns([], report["search"])
    assert columns == ["Trial", "Stages", "Options", "accuracy (val)", "bytes (val)"]
    assert len(front_rows([], report["search"])) == len(summary["front"])
    html = render_html(report)
    assert "not re-measured on the test split" in html and 'alt="Search front"' in html


def _points(objectives: int) -> tuple[list[dict], list[dict]]:
    names = ["accuracy", "bytes", "latency"][:objectives]
    directions = ["maximize", "minimize", "minimize"][:objectives]
    values = [(0.95, 9000, 0.30), (0.93, 4000, 0.20), (0.90, 5000, 0.25), (0.60, 2000, 0.1)]
    points = [{"number": n, "values": dict(zip(names, v, strict=False)),
               "feasible": n != 3, "on_front": n in (0, 1)} for n, v in enumerate(values)]
    return points, [{"name": n, "direction": d} for n, d in zip(names, directions, strict=True)]


@pytest.mark.parametrize(("objectives", "panels"), [(1, 1), (2, 1), (3, 2)])
def test_the_front_plot_has_one_panel_per_pair_accuracy_vs_bytes_and_vs_latency(objectives,
                                                                                  panels):
    one_panel, _ = _png_size(front_chart(*_points(2)))
    width, height = _png_size(front_chart(*_points(objectives)))
    assert height > 300
    if panels == 2:  # small multiples: accuracy vs bytes beside accuracy vs latency
        assert width > 1.7 * one_panel
    else:
        assert width == pytest.approx(one_panel, rel=0.1)
    assert front_chart([], _points(2)[1]) is None
