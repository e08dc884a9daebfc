"""The .nnz container: corrupt, truncated or foreign files fail with a clear NnzipError."""

import struct
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nnzip
from nnzip.codec import FORMAT_VERSION, decode_tensors, encode_tensors
from nnzip.codec.nnz import MAGIC
from nnzip.errors import NnzipError
from nnzip.models import create_model
from nnzip.models.nnz import load_nnz, save_nnz

SAMPLE = encode_tensors({"w": torch.arange(-50, 50, dtype=torch.float32).reshape(10, 10),
                         "b": torch.zeros(7)}, {"note": "test"}, huffman=True)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_single_bit_flip_is_caught(data):
    bit = data.draw(st.integers(0, 8 * len(SAMPLE) - 1))
    corrupt = bytearray(SAMPLE)
    corrupt[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(NnzipError):
        decode_tensors(bytes(corrupt))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(SAMPLE) - 1))
def test_any_truncation_is_caught(length):
    with pytest.raises(NnzipError, match="truncated|not an .nnz"):
        decode_tensors(SAMPLE[:length])


def test_a_newer_format_version_is_refused_by_name():
    newer = bytearray(SAMPLE)
    struct.pack_into("<H", newer, len(MAGIC), FORMAT_VERSION + 1)
    with pytest.raises(NnzipError, match=f"format version {FORMAT_VERSION + 1}"):
        decode_tensors(bytes(newer))


def test_a_consistent_but_wrong_record_is_an_error_not_a_crash():
    # Re-sign a file whose header lies about a stream: the CRC passes, decoding must not.
    prefix = struct.Struct("<4sHIQ")
    _, version, header_length, payload_length = prefix.unpack_from(SAMPLE)
    header = zlib.decompress(SAMPLE[prefix.size:prefix.size + header_length])
    header = header.replace(b'"shape":[10,10]', b'"shape":[10,11]')
    head = zlib.compress(header)
    body = SAMPLE[prefix.size + header_length:-4]
    content = prefix.pack(MAGIC, version, len(head), len(body)) + head + body
    with pytest.raises(NnzipError, match="corrupt"):
        decode_tensors(content + struct.pack("<I", zlib.crc32(content)))


def test_files_are_written_atomically_and_dispatch_on_the_suffix(tmp_path):
    model = create_model("lenet300", input_shape=(1, 8, 8), num_classes=10)
    path = nnzip.save(model, tmp_path / "m.nnz")
    assert path.read_bytes()[:4] == MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["m.nnz"]  # no temporary left behind
    loaded = nnzip.load(path)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    folder = nnzip.save(model, tmp_path / "folder")  # other paths keep the folder format
    assert (folder / "spec.json").is_file()


def test_foreign_and_missing_files_and_models_outside_the_zoo(tmp_path):
    foreign = tmp_path / "x.nnz"
    foreign.write_bytes(b"hello, not a model at all")
    with pytest.raises(NnzipError, match="not an .nnz file"):
        load_nnz(foreign)
    with pytest.raises(NnzipError, match="not found"):
        load_nnz(tmp_path / "missing.nnz")
    with pytest.raises(NnzipError, match="model zoo.*pass example="):
        save_nnz(torch.nn.Linear(2, 2), tmp_path / "y.nnz")


def test_model_level_names_that_moved_out_of_the_codec_say_where_they_went():
    with pytest.raises(ImportError, match="moved to nnzip.models.nnz"):
        from nnzip.codec.nnz import save_nnz  # noqa: F401
    with pytest.raises(ImportError, match="from nnzip.models.nnz import load_nnz"):
        from nnzip.codec import load_nnz  # noqa: F401
