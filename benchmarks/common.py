"""What the benchmark scripts share: their arguments, the results files and the tables.

A benchmark runs as ``python benchmarks/<name>.py``; Python puts the script's own folder first on
``sys.path``, so the scripts import this module as ``common``. Results go to
``benchmarks/results/<name>.{json,md}``, written atomically, and the markdown is always rendered
from the report that goes into the JSON, so a committed ``.md`` can be rebuilt from its ``.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nnzip.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results"

Render = Callable[[dict], str]


def benchmark_parser(doc: str, default_archs: Sequence[str] | None = None
                     ) -> argparse.ArgumentParser:
    """The parser every benchmark starts from: its docstring's first line, ``--cache-dir`` (the
    cached zoo models) and, with ``default_archs``, ``--archs``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    if default_archs is not None:
        parser.add_argument("--archs", nargs="+", default=list(default_archs))
    return parser


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a GitHub markdown table (header, separator, one line a row)."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(row) + " |" for row in rows)]


def machine_line(machine: dict, suffix: str = "") -> str:
    """The footer naming the machine (from ``nnzip.evaluate.machine_info``); ``suffix`` goes
    before the final period (", 1 thread")."""
    return (f"Machine: {machine['cpu_model']}, {machine['cores']} cores, torch "
            f"{machine['torch_version']}{suffix}.")


def print_table(console: Console, title: str, columns: Sequence[str],
                rows: Iterable[Sequence[str]], left: Sequence[str] = ()) -> None:
    """Print a rich table; the columns named in ``left`` are left-aligned, numbers right."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def write_results(name: str, report: dict, render: Render | None,
                  **json_options: Any) -> Path:
    """Write ``results/<name>.json`` and, with ``render``, ``results/<name>.md`` rendered from the
    same report; returns the markdown's path. ``json_options`` go to ``json.dumps``."""
    write_text(RESULTS / f"{name}.json", json.dumps(report, indent=2, **json_options))
    if render is not None:
        write_text(RESULTS / f"{name}.md", render(report))
    return RESULTS / f"{name}.md"


def rewrite_markdown(name: str, render: Render) -> Path:
    """Render ``results/<name>.md`` again from the committed ``results/<name>.json``."""
    report = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    write_text(RESULTS / f"{name}.md", render(report))
    return RESULTS / f"{name}.md"


def run_each(name: str, report: dict, items: Iterable, run: Callable[[Any], dict],
             render: Render, key: str = "models", **json_options: Any) -> dict:
    """Append ``run(item)`` to ``report[key]`` for each item, rewriting the results after every
    one, so that an interrupted benchmark keeps what it finished."""
    for item in items:
        report[key].append(run(item))
        write_results(name, report, render, **json_options)
    return report


def sts_benchmark_main(name: str, doc: str, run: Callable[[argparse.Namespace, Console], dict],
                       render: Render) -> None:
    """The command line of the STS-B benchmarks: ``--pairs N`` looks at the first N dev pairs
    (printed, nothing written); ``--render`` rewrites ``results/<name>.md`` from the committed
    json; otherwise ``run(args, console)`` measures and both files are written."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None,
                        help="only the first N dev pairs (a quick look; results not written)")
    parser.add_argument("--render", action="store_true",
                        help=f"only rewrite {name}.md from the committed {name}.json")
    args = parser.parse_args()
    console = Console(width=160)
    if args.render:
        path = rewrite_markdown(name, render)
    else:
        report = run(args, console)
        if args.pairs:
            console.print(render(report))
            return
        path = write_results(name, report, render, default=float)
    console.print(path.read_text(encoding="utf-8"))


def ort_quantize_static(fp32_path: Path, path: Path, batches: list,
                        weight_type: str = "int8") -> Path:
    """ONNX Runtime's own static quantization of the same fp32 file, same calibration images.

    Every op gets quantized inputs and outputs (QLinearAdd too), so the whole graph runs on
    integer kernels; ``weight_type`` uint8 avoids the AVX2 saturation of int8 weights.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from nnzip.runtime import OrtModule

    input_name = OrtModule(fp32_path).input_name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{input_name: inputs.numpy()} for inputs, _ in batches])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[weight_type])
    return path


def quiet_single_thread(seed: int = 0) -> None:
    """The setup of the runtime benchmarks: no warnings, ORT's quantizer's advice muted (it asks
    for pre-processing, loudly), numpy's float warnings off, one torch thread, a fixed seed."""
    import logging
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    np.seterr(all="ignore")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
