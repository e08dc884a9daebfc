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
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                         "amx_tile", "amx_int8", "amx_bf16", "fma", "sse4_2", "asimddp")


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


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where the file does not exist)."""
    return set((_cpuinfo_field("flags") or "").split())


def int8_weights_saturate() -> bool:
    """True on x86 CPUs with AVX2 but no VNNI, where int8 GEMM kernels (ONNX Runtime's MLAS)
    multiply u8 activations by s8 weights with ``vpmaddubsw``, whose int16 pair sums saturate
    (255·127·2 > 32767). There, weights stored as uint8 (zero point shifted by 128) take the
    exact u8u8 path instead."""
    flags = cpu_flags()
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"} & flags
    return "avx2" in flags and not vnni


def machine_info(threads: int) -> dict:
    """A JSON-ready description of this machine; ``threads`` is the torch thread count used."""
    flags = cpu_flags()
    return {
        "cpu_model": _cpuinfo_field("model name") or platform.processor() or "unknown",
        "cpu_flags": [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags],
        "cores": os.cpu_count(),
        "threads": threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
