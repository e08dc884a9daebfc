"""A hostile file is refused quickly, in bounded memory (issue 15, item 3).

Each file below is small and claims something huge: a forged-CRC .nnz with 5·10⁸ elements, a
zlib bomb in an .nnz header, JSON nested 200 000 deep, ``hidden: 10**9`` and ``depth: 1200002``
in a spec.json (with its hash recomputed, as an attacker would), a YAML alias bomb in a recipe's
stage label, an .npz whose header declares 10¹⁰ elements, a zip bomb in an .npz, a 20000×20000
PNG, and an oversized or deeply nested report.json.

How it is measured: all files are loaded in one child Python process that has already imported
nnzip (torch alone costs about 300 MB of RSS, so that is the baseline). Before each file the child
resets its peak-RSS counter (``/proc/self/clear_refs``, Linux), loads the file, and reports the
outcome, the seconds taken and the growth of its peak RSS (VmHWM) over its RSS before the load.
What is asserted: an NnzipError naming the problem, in under a second, with peak RSS growth
under 500 MB. Where clear_refs cannot be written the child reports its cumulative peak growth
(``ru_maxrss``) instead, which bounds every file's growth from above. An address-space limit of
3 GiB above the child's baseline turns a runaway allocation into a MemoryError (a failure) rather
than swapping the machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nnzip.bounded import json_structure
from nnzip.codec.nnz import encode_tensors
from nnzip.errors import NnzipError
from nnzip.models import create_model, load_model, save_model
from nnzip.models.io import spec_digest
from nnzip.recipe import load_recipe

MAX_SECONDS = 1.0
MAX_GROWTH_MB = 500


CHILD = r"""
import json, os, resource, signal, sys, time
import torch
torch.set_num_threads(1)
import PIL.PngImagePlugin, yaml
from nnzip.errors import NnzipError
from nnzip.models import load_model
from nnzip.recipe import load_recipe
from nnzip.data.user import load_npz, load_image_folder
from nnzip.evaluate.report import load_report

LOADERS = {"model": load_model, "recipe": load_recipe, "npz": load_npz,
           "images": load_image_folder, "report": load_report}

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MB

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

vm = int(status("VmSize") * 1024 * 1024)
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def on_alarm(*_):
    raise TimeoutError("still running after 20 s")

signal.signal(signal.SIGALRM, on_alarm)
results = {}
for name, loader, path in json.loads(sys.argv[1]):
    before = status("VmRSS")
    per_file = reset_peak()
    signal.alarm(20)
    start = time.perf_counter()
    try:
        LOADERS[loader](path)
        outcome = "loaded"
    except NnzipError as error:
        outcome = "NnzipError: " + str(error)
    except BaseException as error:
        outcome = type(error).__name__ + ": " + str(error)[:300]
    seconds = time.perf_counter() - start
    signal.alarm(0)
    growth = (status("VmHWM") - before if per_file else
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline)
    results[name] = {"outcome": outcome[:400], "seconds": seconds, "growth_mb": growth,
                     "per_file": per_file}
print("RESULTS " + json.dumps(results))
"""


# -- hostile files ---------------------------------------------------------------------------
def forge_nnz(data: bytes, header_text: bytes) -> bytes:
    """An .nnz file with ``data``'s payload and the zlib ``header_text`` (already compressed),
    with a valid length and CRC, as an attacker would write it."""
    magic, version, header_length, payload_length = struct.unpack_from("<4sHIQ", data)
    payload = data[18 + header_length:-4]
    content = struct.pack("<4sHIQ", magic, version, len(header_text), len(payload)) \
        + header_text + payload
    return content + struct.pack("<I", zlib.crc32(content))


def nnz_header(data: bytes) -> dict:
    header_length = struct.unpack_from("<4sHIQ", data)[2]
    return json.loads(zlib.decompress(data[18:18 + header_length]))


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """zlib's adler32_combine (not exposed by Python): the checksum of A+B from those of A, B."""
    base = 65521
    rem = second_length % base
    sum1 = first & 0xFFFF
    sum2 = rem * sum1 % base
    sum1 = (sum1 + (second & 0xFFFF) + base - 1) % base
    sum2 = (sum2 + (first >> 16) + (second >> 16) + base - rem) % base
    return sum1 | (sum2 << 16)


def zlib_bomb(total_mb: int = 1024) -> bytes:
    """A valid zlib stream of about 1 MB that inflates to ``total_mb`` MB of spaces.

    Blocks after a full flush do not refer back, so one compressed MB is repeated.
    """
    chunk = b" " * (1 << 20)
    compressor = zlib.compressobj(9)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    middle = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()[:-4]
    adler = chunk_adler = zlib.adler32(chunk)
    for _ in range(total_mb - 1):
        adler = adler32_combine(adler, chunk_adler, len(chunk))
    return first + middle * (total_mb - 1) + tail + adler.to_bytes(4, "big")


def forged_spec(folder: Path, **kwargs) -> Path:
    spec = json.loads((folder / "spec.json").read_text())
    spec["kwargs"] = {**spec["kwargs"], **kwargs}
    spec["spec_sha256"] = spec_digest(spec)  # an attacker recomputes the hash
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder


def alias_bomb() -> str:
    """The "billion laughs" in a stage label: 9⁹ strings from a few hundred bytes."""
    levels = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for name, previous in zip("bcdefghi", "abcdefgh", strict=True):
        levels.append(f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "name: bomb\nstages:\n  - finetune:\n      label: [" + ", ".join(levels) + "]\n"


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose header says width × height; its pixel data is a few bytes (never decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def deep_json(depth: int = 200_000) -> bytes:
    return b"[" * depth + b"]" * depth


def build_hostile_files(root: Path) -> dict[str, tuple[str, Path]]:
    """name → (loader, path) of every hostile file."""
    files: dict[str, tuple[str, Path]] = {}
    zeros_and_ones = encode_tensors({"zeros": torch.zeros(1000), "ones": torch.ones(7000)},
                                    {"extra": None})
    header = nnz_header(zeros_and_ones)
    header["records"][0]["shape"] = [500_000_000]
    forged = forge_nnz(zeros_and_ones, zlib.compress(json.dumps(header).encode()))
    (root / "forged_count.nnz").write_bytes(forged)
    files["nnz_forged_count"] = ("model", root / "forged_count.nnz")
    (root / "bomb.nnz").write_bytes(forge_nnz(zeros_and_ones, zlib_bomb()))
    files["nnz_zlib_bomb"] = ("model", root / "bomb.nnz")
    (root / "deep.nnz").write_bytes(forge_nnz(zeros_and_ones, zlib.compress(deep_json())))
    files["nnz_deep_header"] = ("model", root / "deep.nnz")

    torch.manual_seed(0)
    lenet = save_model(create_model("lenet5", input_shape=(1, 28, 28), num_classes=10),
                       root / "lenet")
    files["spec_hidden_1e9"] = ("model", forged_spec(lenet, hidden=10**9))
    resnet = save_model(create_model("resnet", input_shape=(1, 8, 8), num_classes=10, depth=8),
                        root / "resnet")
    files["spec_depth_1200002"] = ("model", forged_spec(resnet, depth=1_200_002))
    deep_spec = save_model(create_model("lenet300", input_shape=(4,), num_classes=2),
                           root / "deep_spec")
    (deep_spec / "spec.json").write_bytes(deep_json())
    files["spec_deep_json"] = ("model", deep_spec)

    (root / "bomb.yaml").write_text(alias_bomb())
    files["recipe_alias_bomb"] = ("recipe", root / "bomb.yaml")

    with zipfile.ZipFile(root / "huge_shape.npz", "w") as archive:
        archive.writestr("x.npy", npy_header((100_000, 100_000)) + bytes(64))
        archive.writestr("y.npy", npy_header((2,), "<i8") + bytes(16))
    files["npz_huge_shape"] = ("npz", root / "huge_shape.npz")
    with zipfile.ZipFile(root / "zip_bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            megabyte = bytes(1 << 20)
            member.write(npy_header((600, 1 << 18)))
            for _ in range(600):
                member.write(megabyte)
        archive.writestr("y.npy", npy_header((600,), "<i8") + bytes(8 * 600))
    files["npz_zip_bomb"] = ("npz", root / "zip_bomb.npz")

    (root / "images" / "big").mkdir(parents=True)
    (root / "images" / "big" / "huge.png").write_bytes(huge_png(20_000, 20_000))
    files["png_20000x20000"] = ("images", root / "images")
    (root / "images_100M" / "big").mkdir(parents=True)
    (root / "images_100M" / "big" / "huge.png").write_bytes(huge_png(10_000, 10_000))
    files["png_10000x10000"] = ("images", root / "images_100M")

    (root / "deep_report.json").write_bytes(deep_json())
    files["report_deep_json"] = ("report", root / "deep_report.json")
    padding = "x" * (65 << 20)
    (root / "big_report.json").write_text(
        json.dumps({"nnzip_version": "0", "machine": {}, "models": [], "pad": padding}))
    files["report_65_MB"] = ("report", root / "big_report.json")
    return files


#: What each refusal must say (a part of its message).
EXPECTED = {
    "nnz_forged_count": "declare 500,00",
    "nnz_zlib_bomb": "inflates to more than",
    "nnz_deep_header": "nests JSON 200000 levels deep",
    "spec_hidden_1e9": "hidden=1000000000",
    "spec_depth_1200002": "depth=1200002",
    "spec_deep_json": "nests JSON 200000 levels deep",
    "recipe_alias_bomb": "anchors and aliases",
    "npz_huge_shape": "declares shape (100000, 100000)",
    "npz_zip_bomb": "zip bomb",
    "png_20000x20000": "too large to decode safely",  # PIL's own limit, from the header
    "png_10000x10000": "10000×10000 pixels",  # nnzip's limit, below PIL's
    "report_deep_json": "nests JSON 200000 levels deep",
    "report_65_MB": "more than the 67,108,864 allowed",
}


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    files = build_hostile_files(tmp_path_factory.mktemp("hostile"))
    assert set(files) == set(EXPECTED)
    return files


@pytest.fixture(scope="module")
def refusals(hostile_files) -> dict[str, dict]:
    files = hostile_files
    cases = [[name, loader, str(path)] for name, (loader, path) in files.items()]
    repository = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repository), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=repository)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, f"the child failed (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.skipif(not Path("/proc/self/status").exists(),
                    reason="memory is measured through /proc (Linux)")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_is_refused_quickly_in_bounded_memory(refusals, name):
    result = refusals[name]
    assert result["outcome"].startswith("NnzipError: "), result["outcome"]
    assert EXPECTED[name] in result["outcome"], result["outcome"]
    assert result["seconds"] < MAX_SECONDS, result
    assert result["growth_mb"] < MAX_GROWTH_MB, result


def test_the_hostile_files_are_small(hostile_files):
    """The claims are huge, the files are not (so the refusals are about what they claim)."""
    files = hostile_files
    for name in ("nnz_forged_count", "nnz_deep_header", "recipe_alias_bomb", "npz_huge_shape",
                 "png_20000x20000", "png_10000x10000"):
        path = files[name][1]
        size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else \
            path.stat().st_size
        assert size < 100_000, (name, size)
    assert len(alias_bomb()) < 500
    assert files["nnz_zlib_bomb"][1].stat().st_size < 1_200_000


def test_zlib_bomb_is_a_valid_stream():
    """The bomb is real: it inflates (to 64 MB here) and its checksum holds."""
    assert zlib.decompress(zlib_bomb(64)) == b" " * (64 << 20)


# -- the checks behind the refusals, in process ----------------------------------------------
@pytest.fixture
def lenet300_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_model(create_model("lenet300", input_shape=(1, 4, 4), num_classes=3),
                      tmp_path / "net")


def test_spec_changed_after_saving_is_corrupt(lenet300_folder):
    spec = json.loads((lenet300_folder / "spec.json").read_text())
    (lenet300_folder / "spec.json").write_text(json.dumps({**spec, "num_classes": 4}))
    with pytest.raises(NnzipError, match="does not match its spec_sha256"):
        load_model(lenet300_folder)


def test_folder_saved_before_spec_hashing_still_loads(lenet300_folder):
    spec = json.loads((lenet300_folder / "spec.json").read_text())
    del spec["spec_sha256"]
    (lenet300_folder / "spec.json").write_text(json.dumps(spec))
    assert load_model(lenet300_folder)(torch.rand(2, 1, 4, 4)).shape == (2, 3)


def test_weights_of_another_byte_size_are_refused_before_the_model_is_built(lenet300_folder):
    """Same names and shapes, float16 instead of float32: the meta-device model needs twice the
    bytes the file holds (with the weights' hash recomputed, as a forger would)."""
    from safetensors.torch import load_file, save_file

    weights = lenet300_folder / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(weights).items()}, weights)
    spec = json.loads((lenet300_folder / "spec.json").read_text())
    spec["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    spec["spec_sha256"] = spec_digest(spec)
    (lenet300_folder / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(NnzipError, match="bytes of tensors, a lenet300 model of this spec needs"):
        load_model(lenet300_folder)


def test_json_depth_ignores_brackets_inside_strings():
    assert json_structure(b'{"a": "[[[[{{{", "b": ["]]]", {"c": "\\"[["}]}') == (3, 3)
    assert json_structure(deep_json(1000)) == (1000, 1000)


def test_any_yaml_anchor_is_refused(tmp_path):
    recipe = tmp_path / "anchored.yaml"
    recipe.write_text("stages:\n  - finetune: &options {epochs: 1}\n")
    with pytest.raises(NnzipError, match="line 2.*anchors and aliases"):
        load_recipe(recipe)


def test_a_recipe_over_one_megabyte_is_refused(tmp_path):
    recipe = tmp_path / "big.yaml"
    recipe.write_text("stages:\n  - finetune: {epochs: 1}\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(NnzipError, match="more than the 1,048,576 allowed"):
        load_recipe(recipe)
