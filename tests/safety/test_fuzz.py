"""Fuzzing every reader: a mutated file ends in a clean NnzipError or a correct load, never in
another exception, and every example finishes within a deadline (issue 15, "Fuzzing in CI").

Mutations of valid files: truncations, bit flips, byte insertions, and for JSON documents (an
.nnz header, spec.json, report.json) value swaps, with the .nnz CRC and the spec hash recomputed
as an attacker would. Hypothesis runs derandomized (the same examples on every run, so CI is
reproducible) with few examples per reader, to stay within about 30 seconds in all. Memory is
bounded by tests/safety/test_bounded.py, which measures it in a child process.
"""

from __future__ import annotations

import json
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from nnzip.codec.nnz import encode_tensors
from nnzip.codec.tensors import Integer
from nnzip.data.user import load_image_folder, load_npz
from nnzip.errors import NnzipError
from nnzip.evaluate.metrics import REPORT_MODEL_KEYS
from nnzip.evaluate.report import load_report
from nnzip.models import create_model, load_model, save_model
from nnzip.models.io import spec_digest
from nnzip.models.zoo import model_spec
from nnzip.recipe import load_recipe

FAST = settings(max_examples=30, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
#: torch.export and ONNX Runtime take a few hundred ms to open even a tiny model.
SLOW = settings(FAST, max_examples=12, deadline=5000)

# -- mutations -------------------------------------------------------------------------------
where = st.floats(min_value=0, max_value=1, exclude_max=True)
truncation = st.tuples(st.just("truncate"), where)
bit_flip = st.tuples(st.just("flip"), where, st.integers(0, 7))
insertion = st.tuples(st.just("insert"), where, st.binary(min_size=1, max_size=8))
byte_mutations = st.lists(st.one_of(truncation, bit_flip, insertion), min_size=1, max_size=3)

hostile_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63), st.sampled_from([10**9, -1, 0, 2**40]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.lists(st.integers(-3, 10**6), max_size=4), st.dictionaries(st.text(max_size=3),
                                                                  st.integers(), max_size=2))
#: (where to descend at each level, how deep to go, the new value)
json_swaps = st.lists(st.tuples(st.lists(where, min_size=1, max_size=6), hostile_values),
                      min_size=1, max_size=3)


def mutate_bytes(data: bytes, mutations: list[tuple]) -> bytes:
    for kind, position, *rest in mutations:
        at = int(position * len(data)) if data else 0
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ (1 << rest[0])]) + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + rest[0] + data[at:]
    return data


def swap_json_value(document, path: list[float], value):
    """``document`` with the value reached by following ``path`` replaced by ``value``."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = keys[int(path[0] * len(keys))]
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[key] = swap_json_value(document[key], path[1:], value)
    return copy


def swap_json_values(document, swaps: list[tuple]):
    for path, value in swaps:
        document = swap_json_value(document, path, value)
    return document


def refuses_cleanly_or_loads(load: Callable[[Path], object], path: Path) -> None:
    """The property: a clean NnzipError or a load; anything else propagates and fails."""
    try:
        load(path)
    except NnzipError as error:
        assert str(error) and "\n" not in str(error).strip()


# -- valid files -----------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("valid")
    torch.manual_seed(0)
    zoo = create_model("lenet300", input_shape=(1, 4, 4), num_classes=3)
    with torch.no_grad():
        zoo.fc1.weight[:, ::2] = 0  # sparse records as well as dense ones
    files = {"folder": save_model(zoo, root / "zoo"),
             "zoo_nnz": save_model(zoo, root / "zoo.nnz"),
             "int_nnz": root / "int8.nnz",
             "program_nnz": save_model(Tiny(), root / "program.nnz", example=torch.rand(2, 4))}
    files["int_nnz"].write_bytes(_int8_zoo_nnz(zoo))
    files["pt2"] = root / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.rand(2, 4),)), files["pt2"])
    files["onnx"] = root / "tiny.onnx"
    files["onnx"].write_bytes(_tiny_onnx())
    files["recipe"] = root / "recipe.yaml"
    files["recipe"].write_text("name: fuzz\nstages:\n  - prune: {sparsity: 0.5}\n"
                               "  - finetune: {epochs: 1, lr: 1.0e-3, label: polish}\n")
    files["npz"] = root / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(files["npz"], x=rng.random((12, 4), dtype=np.float32), y=np.arange(12) % 3)
    files["images"] = root / "images"
    for label in ("a", "b"):
        (files["images"] / label).mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 255, (6, 5), dtype=np.uint8)
            Image.fromarray(pixels).save(files["images"] / label / f"{index}.png")
    files["report"] = root / "report.json"
    model_row = dict.fromkeys(REPORT_MODEL_KEYS, 1.0) | {"name": "m", "stage": "dense"}
    files["report"].write_text(json.dumps({"nnzip_version": "0", "machine": {"cpu": "x"},
                                           "models": [model_row]}))
    # Every unmutated file loads (so the fuzzers start from valid files), and the first load
    # of each kind, with its imports (ONNX Runtime, torch.export), happens outside a deadline.
    x = torch.rand(2, 1, 4, 4)
    for kind in ("folder", "zoo_nnz"):
        assert torch.equal(load_model(files[kind])(x), zoo.eval()(x))
    assert load_model(files["int_nnz"])(x).shape == (2, 3)
    for kind in ("program_nnz", "pt2", "onnx"):
        assert load_model(files[kind])(torch.rand(2, 4)).shape == (2, 3)
    assert [step.label for step in load_recipe(files["recipe"]).steps] == ["prune", "polish"]
    assert load_npz(files["npz"]).num_classes == 3
    assert load_image_folder(files["images"]).num_classes == 2
    assert load_report(files["report"])["models"][0]["name"] == "m"
    return files


def _int8_zoo_nnz(zoo: nn.Module) -> bytes:
    """The zoo model as a version-1 .nnz whose fc1 weight is an int8 integer record."""
    state = dict(zoo.state_dict())
    weight = state["fc1.weight"]
    scale = weight.abs().amax(1, keepdim=True) / 127
    values = torch.round(weight / scale).to(torch.int64).clamp(-128, 127)
    state["fc1.weight"] = Integer(values, 8, -128, scale, torch.zeros(300, 1, dtype=torch.int32),
                                  {"kind": "per_channel"}, (300, -1))
    return encode_tensors(state, {"format_version": 1, "spec": model_spec(zoo), "extra": None},
                          version=1)


def _tiny_onnx() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _write(name: str, data: bytes, folder: str) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


def _nnz_with_header(data: bytes, header: object) -> bytes:
    """``data``'s payload under a new JSON header, with lengths and CRC valid (a forged file)."""
    magic, version, header_length, _ = struct.unpack_from("<4sHIQ", data)
    payload = data[18 + header_length:-4]
    text = zlib.compress(json.dumps(header).encode())
    content = struct.pack("<4sHIQ", magic, version, len(text), len(payload)) + text + payload
    return content + struct.pack("<I", zlib.crc32(content))


def _nnz_header(data: bytes) -> dict:
    return json.loads(zlib.decompress(data[18:18 + struct.unpack_from("<4sHIQ", data)[2]]))


# -- .nnz ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["zoo_nnz", "int_nnz", "program_nnz"])
@FAST
@given(mutations=byte_mutations)
def test_nnz_bytes_fuzz(valid, kind, mutations):
    data = mutate_bytes(valid[kind].read_bytes(), mutations)
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_model, _write("m.nnz", data, folder))


@pytest.mark.parametrize("kind", ["zoo_nnz", "int_nnz", "program_nnz"])
@FAST
@given(swaps=json_swaps)
@example(swaps=[([0.5, 0.0], None)])  # found by fuzzing: a program's layout without names
@example(swaps=[([0.375, 0.0, 0.5, 0.0, 0.0], None)])  # found: torch's unlifting asserts
def test_nnz_forged_header_fuzz(valid, kind, swaps):
    data = valid[kind].read_bytes()
    forged = _nnz_with_header(data, swap_json_values(_nnz_header(data), swaps))
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_model, _write("m.nnz", forged, folder))


@pytest.mark.parametrize(("field", "value"), [
    ("view", [7, 7]), ("view", "ab"), ("view", [-1, -1]), ("scale_shape", [3, 100]),
    ("zero_point_shape", [1, 300]), ("bits", 99), ("low", "x"), ("scheme", 5)])
def test_forged_integer_record_is_refused(valid, tmp_path, field, value):
    """Found by fuzzing: an integer record whose view, scale or zero point does not fit its
    values failed later, in dequantize, with a RuntimeError or TypeError."""
    data = valid["int_nnz"].read_bytes()
    header = _nnz_header(data)
    (record,) = [r for r in header["records"] if r["encoding"] == "integer"]
    record[field] = value
    with pytest.raises(NnzipError, match="corrupt"):
        load_model(_write("forged.nnz", _nnz_with_header(data, header), str(tmp_path)))


# -- model folders (spec.json + model.safetensors) -------------------------------------------
def _folder_copy(valid_folder: Path, folder: str) -> Path:
    target = Path(folder) / "model"
    target.mkdir()
    for file in valid_folder.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


@FAST
@given(swaps=json_swaps, rehash=st.booleans())
@example(swaps=[([0.5], "\n")], rehash=False)  # found: a message broken over two lines
def test_spec_json_fuzz(valid, swaps, rehash):
    spec = json.loads((valid["folder"] / "spec.json").read_text())
    forged = swap_json_values(spec, swaps)
    if rehash and isinstance(forged, dict):
        forged["spec_sha256"] = spec_digest(forged) if _plain(forged) else "0"
    with tempfile.TemporaryDirectory() as folder:
        target = _folder_copy(valid["folder"], folder)
        (target / "spec.json").write_text(json.dumps(forged))
        refuses_cleanly_or_loads(load_model, target)


def _plain(document) -> bool:
    try:
        json.dumps(document, allow_nan=False)
    except ValueError:
        return False
    return True


@FAST
@given(file=st.sampled_from(["spec.json", "model.safetensors"]), mutations=byte_mutations)
def test_model_folder_bytes_fuzz(valid, file, mutations):
    with tempfile.TemporaryDirectory() as folder:
        target = _folder_copy(valid["folder"], folder)
        (target / file).write_bytes(mutate_bytes((target / file).read_bytes(), mutations))
        refuses_cleanly_or_loads(load_model, target)


# -- .pt2 and ONNX ---------------------------------------------------------------------------
@SLOW
@given(mutations=byte_mutations)
def test_pt2_fuzz(valid, mutations):
    data = mutate_bytes(valid["pt2"].read_bytes(), mutations)
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_model, _write("m.pt2", data, folder))


@SLOW
@given(mutations=byte_mutations)
def test_onnx_fuzz(valid, mutations):
    data = mutate_bytes(valid["onnx"].read_bytes(), mutations)
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_model, _write("m.onnx", data, folder))


# -- recipes, data, reports ------------------------------------------------------------------
@FAST
@given(mutations=byte_mutations)
def test_recipe_fuzz(valid, mutations):
    data = mutate_bytes(valid["recipe"].read_bytes(), mutations)
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_recipe, _write("r.yaml", data, folder))


@FAST
@given(mutations=byte_mutations)
@example(mutations=[("flip", 0.8515625, 0)])  # found: a member flagged encrypted
@example(mutations=[("flip", 0.85546875, 0)])  # found: an unknown compression method
def test_npz_fuzz(valid, mutations):
    data = mutate_bytes(valid["npz"].read_bytes(), mutations)
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_npz, _write("d.npz", data, folder))


@FAST
@given(image=st.integers(0, 3), mutations=byte_mutations)
def test_image_folder_fuzz(valid, image, mutations):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "images"
        for source in valid["images"].rglob("*.png"):
            (root / source.parent.name).mkdir(parents=True, exist_ok=True)
            (root / source.parent.name / source.name).write_bytes(source.read_bytes())
        victim = sorted(root.rglob("*.png"))[image]
        victim.write_bytes(mutate_bytes(victim.read_bytes(), mutations))
        refuses_cleanly_or_loads(load_image_folder, root)


@FAST
@given(swaps=json_swaps)
def test_report_json_fuzz(valid, swaps):
    report = swap_json_values(json.loads(valid["report"].read_text()), swaps)
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_report, _write("report.json", json.dumps(report).encode(),
                                                     folder))


@FAST
@given(mutations=byte_mutations)
def test_report_bytes_fuzz(valid, mutations):
    data = mutate_bytes(valid["report"].read_bytes(), mutations)
    with tempfile.TemporaryDirectory() as folder:
        refuses_cleanly_or_loads(load_report, _write("report.json", data, folder))


def test_mutations_change_the_files(valid):
    """The fuzzers test something: a mutation changes the bytes, a swap changes the JSON."""
    data = valid["zoo_nnz"].read_bytes()
    assert mutate_bytes(data, [("flip", 0.5, 3)]) != data
    assert len(mutate_bytes(data, [("truncate", 0.5)])) == len(data) // 2
    header = _nnz_header(data)
    assert swap_json_values(header, [([0.99, 0.0], 10**9)]) != header
    with pytest.raises(NnzipError):
        load_model(_write("flipped.nnz", mutate_bytes(data, [("flip", 0.5, 3)]),
                          str(valid["zoo_nnz"].parent)))


# -- crashes fuzzing found in the .pt2 routing and recipe parsing, kept as regression tests --
def test_pt2_with_a_flipped_bit_in_an_entry_name(valid, tmp_path):
    data = mutate_bytes(valid["pt2"].read_bytes(), [("flip", 0.9026901104396811, 0)])
    refuses_cleanly_or_loads(load_model, _write("m.pt2", data, str(tmp_path)))


def test_pt2_with_a_flipped_bit_in_an_extract_version(valid, tmp_path):
    data = mutate_bytes(valid["pt2"].read_bytes(), [("flip", 0.9566912019524293, 6)])
    refuses_cleanly_or_loads(load_model, _write("m.pt2", data, str(tmp_path)))


def test_recipe_with_options_that_are_not_a_mapping(valid, tmp_path):
    data = mutate_bytes(valid["recipe"].read_bytes(), [("truncate", 0.3203125),
                                                      ("flip", 0.96875, 0)])
    refuses_cleanly_or_loads(load_recipe, _write("r.yaml", data, str(tmp_path)))
