"""Energy per call from Linux RAPL counters, or an honest statement of why there is none.

RAPL (Running Average Power Limit) exposes cumulative energy counters per CPU package under
``/sys/class/powercap/intel-rapl:N/energy_uj``. They measure the **whole CPU package**: idle
power and every other process running at the same time are included, so figures are comparable
between models measured back to back on a quiet machine, not absolute costs of one model. Virtual
machines usually expose no counters, and recent kernels make them readable by root only; in both
cases no figure is reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

POWERCAP_ROOT = Path("/sys/class/powercap")

# Package domains only ("intel-rapl:0"); "intel-rapl:0:0" are sub-domains already inside them.
_PACKAGE_DOMAIN = re.compile(r"intel-rapl:\d+")


class _RaplReader:
    """Cumulative joules over all packages since creation; counter wraparound is undone."""

    def __init__(self, domains: list[tuple[Path, int]]) -> None:
        self._domains = domains
        self._last_uj = [self._read(path) for path, _ in domains]
        self._total_uj = 0

    @staticmethod
    def _read(path: Path) -> int:
        return int(path.read_text().strip())

    def __call__(self) -> float:
        for index, (path, max_range_uj) in enumerate(self._domains):
            now_uj = self._read(path)
            delta = now_uj - self._last_uj[index]
            if delta < 0:  # the counter wrapped past max_energy_range_uj
                delta += max_range_uj
            self._total_uj += delta
            self._last_uj[index] = now_uj
        return self._total_uj / 1e6


def read_rapl() -> tuple[Callable[[], float] | None, str]:
    """A reader returning cumulative package energy in joules, or ``None`` and the reason."""
    if not POWERCAP_ROOT.is_dir():
        return None, (f"{POWERCAP_ROOT} not present: this machine (likely a VM) exposes no RAPL "
                      "counters")
    folders = sorted(p for p in POWERCAP_ROOT.iterdir() if _PACKAGE_DOMAIN.fullmatch(p.name))
    if not folders:
        return None, f"no intel-rapl package domains under {POWERCAP_ROOT}: no RAPL counters"
    domains = []
    for folder in folders:
        energy = folder / "energy_uj"
        try:
            max_range_uj = int((folder / "max_energy_range_uj").read_text().strip())
            energy.read_text()
        except PermissionError:
            return None, (f"permission denied reading {energy}: RAPL counters are root-only on "
                          "this kernel; run as root or make energy_uj readable")
        except (OSError, ValueError) as error:
            return None, f"cannot read RAPL counter {energy}: {error}"
        domains.append((energy, max_range_uj))
    return _RaplReader(domains), f"RAPL package energy from {len(domains)} package domain(s)"


def measure_energy(fn: Callable[[], object], repeats: int) -> tuple[float | None, str]:
    """Energy per call of ``fn`` in joules over ``repeats`` calls, or ``None`` and why.

    The figure is the whole CPU package's energy divided by the number of calls (see the module
    docstring): it includes idle power and any other process running meanwhile.
    """
    reader, note = read_rapl()
    if reader is None:
        return None, note
    repeats = max(repeats, 1)
    try:
        start_j = reader()
        for _ in range(repeats):
            fn()
        used_j = reader() - start_j
    except OSError as error:
        return None, f"RAPL counter became unreadable during the measurement: {error}"
    if used_j <= 0:
        return None, ("RAPL counter did not advance during the measurement: use more repeats "
                      "(counters update about every millisecond)")
    return used_j / repeats, "RAPL package energy per call, whole CPU package"
