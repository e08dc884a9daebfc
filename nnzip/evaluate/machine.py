"""What the numbers were measured on: CPU, vector extensions, thread count and software versions.

Latency and energy mean little without the machine; the report carries this next to them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")

# Vector / matrix extensions that decide how fast int8 and float kernels can run.
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "fma",
                         "sse4_2")


def _cpuinfo_field(field: str) -> str | None:
    try:
        lines = CPUINFO.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    return None


def machine_info(threads: int) -> dict:
    """A JSON-ready description of this machine; ``threads`` is the torch thread count used."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return {
        "cpu_model": _cpuinfo_field("model name") or platform.processor() or "unknown",
        "cpu_flags": [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags],
        "cores": os.cpu_count(),
        "threads": threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
