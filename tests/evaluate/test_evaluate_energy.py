from pathlib import Path

import pytest

from nnzip.evaluate import energy
from nnzip.evaluate.energy import measure_energy, read_rapl

MAX_RANGE_UJ = 1_000_000


@pytest.fixture
def fake_powercap(tmp_path, monkeypatch) -> Path:
    """A powercap tree with one package domain near wraparound and one sub-domain."""
    package = tmp_path / "intel-rapl:0"
    sub_domain = tmp_path / "intel-rapl:0:0"
    for folder, start in ((package, 999_000), (sub_domain, 5)):
        folder.mkdir()
        (folder / "energy_uj").write_text(f"{start}\n")
        (folder / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path)
    return tmp_path


def _bump(folder: Path, micro_joules: int) -> None:
    counter = folder / "energy_uj"
    counter.write_text(str((int(counter.read_text()) + micro_joules) % MAX_RANGE_UJ))


def test_absent_rapl_gives_none_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path / "powercap")
    joules, note = measure_energy(lambda: None, repeats=3)
    assert joules is None
    assert "not present" in note and "RAPL" in note


def test_energy_per_call_survives_counter_wraparound(fake_powercap):
    def work() -> None:
        _bump(fake_powercap / "intel-rapl:0", 600)
        _bump(fake_powercap / "intel-rapl:0:0", 10_000)  # inside the package: not added again

    joules, note = measure_energy(work, repeats=4)  # 999_000 + 2_400 wraps past 1_000_000
    assert joules == pytest.approx(600e-6)
    assert "whole CPU package" in note


def test_a_counter_that_does_not_move_gives_none(fake_powercap):
    joules, note = measure_energy(lambda: None, repeats=2)
    assert joules is None
    assert "did not advance" in note


def test_unreadable_counter_gives_none_and_names_the_file(fake_powercap, monkeypatch):
    real_read_text = Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    reader, note = read_rapl()
    assert reader is None
    assert "permission denied" in note and "energy_uj" in note


def test_no_package_domain_gives_none(tmp_path, monkeypatch):
    (tmp_path / "intel-rapl-mmio:0").mkdir()
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path)
    assert read_rapl()[0] is None
