"""The .nnz file: one compressed model in one versioned, checksummed file.

Layout (little-endian)::

    magic b"\\x89NNZ" | format version u16 | header length u32 | payload length u64
    | header: zlib-compressed JSON (the model's structure, one record per tensor, its streams)
    | payload: the streams' bytes, in record order | CRC-32 of everything before it, u32

This module is the container only: tensors and JSON in, tensors and JSON out. What the header
says about the model (a zoo spec, or a ``torch.export`` program from :mod:`nnzip.codec.program`)
and how a model becomes records is :mod:`nnzip.models.nnz`'s business. Version 1 files carry a
zoo spec; version 2 adds programs (a file is written at the lowest version that holds it, so zoo
files stay readable by older nnzip). Nothing is unpickled. A truncated, bit-flipped or foreign
file fails the length or CRC check and raises :class:`NnzipError` before anything is decoded.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnzip.bounded import inflate, loads_json
from nnzip.codec.tensors import Coded, Integer, check_decoded_sizes, decode_tensor, encode_tensor
from nnzip.errors import NnzipError

MAGIC = b"\x89NNZ"
FORMAT = "nnzip-nnz"
#: The newest format this nnzip writes and reads; it reads every version from 1.
FORMAT_VERSION = 2
SUFFIX = ".nnz"
#: Largest inflated header read (a torch.export program of a ViT is about 0.2 MB of JSON).
MAX_HEADER_BYTES = 16 << 20
_PREFIX = struct.Struct("<4sHIQ")
_CRC = struct.Struct("<I")


@dataclass
class NnzFile:
    """A decoded file: the header (spec, extra, records) and every tensor by name."""

    header: dict
    tensors: dict[str, torch.Tensor | Integer] = field(default_factory=dict)


# -- bytes -----------------------------------------------------------------------------------
def encode_tensors(tensors: dict[str, torch.Tensor | Coded | Integer], header: dict, *,
                   huffman: bool = True, version: int = FORMAT_VERSION) -> bytes:
    """The whole file for ``tensors`` with ``header`` (JSON) fields added to its header."""
    records, payload = [], []
    for name, value in tensors.items():
        record, streams = encode_tensor(name, value, huffman=huffman)
        record["streams"] = [meta for meta, _ in streams]
        records.append(record)
        payload += [data for _, data in streams]
    document = {**header, "format": FORMAT, "records": records}
    try:
        text = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise NnzipError(f"header metadata must be plain JSON ({error}): pass numbers, strings, "
                         "lists and dicts") from error
    head = zlib.compress(text, 9)
    body = b"".join(payload)
    prefix = _PREFIX.pack(MAGIC, version, len(head), len(body))
    content = prefix + head + body
    return content + _CRC.pack(zlib.crc32(content))


def _check_frame(data: bytes, source: str) -> tuple[dict, bytes]:
    if len(data) < _PREFIX.size + _CRC.size:
        raise NnzipError(f"{source} is truncated or not an .nnz file ({len(data)} bytes): save "
                         "the model again")
    magic, version, header_length, payload_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise NnzipError(f"{source} is not an .nnz file (no .nnz signature): pass a file written "
                         "by nnzip.save(model, 'model.nnz')")
    if not 1 <= version <= FORMAT_VERSION:
        raise NnzipError(f"{source} has .nnz format version {version}; this nnzip reads version "
                         f"{FORMAT_VERSION}: upgrade nnzip or save the model again")
    expected = _PREFIX.size + header_length + payload_length + _CRC.size
    if len(data) != expected:
        raise NnzipError(f"{source} is truncated or has trailing data ({len(data)} bytes, the "
                         f"header says {expected}): save the model again")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[:-_CRC.size]) != stored_crc:
        raise NnzipError(f"{source} is corrupt: its CRC-32 checksum does not match: save the "
                         "model again")
    start = _PREFIX.size
    fix = "save the model again"
    text = inflate(data[start:start + header_length], MAX_HEADER_BYTES, f"{source}'s header", fix)
    header = loads_json(text, f"{source}'s header", fix)
    if not isinstance(header, dict) or header.get("format") != FORMAT \
            or not isinstance(header.get("records"), list):
        raise NnzipError(f"{source} has no valid .nnz header: save the model again")
    return header, data[start + header_length:len(data) - _CRC.size]


def _record_streams(records: list, payload: bytes) -> Iterator[tuple[dict, list]]:
    offset = 0
    for record in records:
        streams = []
        for meta in record.get("streams", []):
            size = meta.get("nbytes") if isinstance(meta, dict) else None
            if not isinstance(size, int) or size < 0 or offset + size > len(payload):
                raise NnzipError("a stream runs past the payload: corrupt data")
            streams.append((meta, payload[offset:offset + size]))
            offset += size
        yield record, streams
    if offset != len(payload):
        raise NnzipError("the payload holds bytes no record uses: corrupt data")


def decode_tensors(data: bytes, source: str = "the .nnz data") -> NnzFile:
    """Check and decode a whole file's bytes."""
    header, payload = _check_frame(data, source)
    result = NnzFile(header=header)
    try:
        check_decoded_sizes(header["records"], len(payload))
        for record, streams in _record_streams(header["records"], payload):
            result.tensors[str(record["name"])] = decode_tensor(record, streams)
    except NnzipError as error:
        raise NnzipError(f"{source}: {error}") from error
    except Exception as error:  # a header that passed the CRC but is inconsistent
        raise NnzipError(f"{source} is corrupt or from an incompatible writer "
                         f"({type(error).__name__}: {error}): save the model again") from error
    return result


def read_nnz(path: str | os.PathLike) -> NnzFile:
    """Read, check and decode the .nnz file at ``path``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise NnzipError(f"model not found: {path}: check the path") from error
    return decode_tensors(data, str(path))


def is_nnz(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an .nnz file (by suffix, or by signature if it exists)."""
    path = Path(path)
    if path.suffix.lower() == SUFFIX:
        return True
    if path.is_file():
        with path.open("rb") as file:
            return file.read(len(MAGIC)) == MAGIC
    return False


# -- measuring -------------------------------------------------------------------------------
#: Attribute a stage sets on a model to say "measure and save me as .nnz, with these options".
CODEC_ATTRIBUTE = "nnzip_codec"


def codec_options(model: nn.Module) -> dict | None:
    """The .nnz options a stage attached to ``model`` (``{"huffman": bool}``), else None."""
    options = getattr(model, CODEC_ATTRIBUTE, None)
    return dict(options) if isinstance(options, dict) else None


def set_codec_options(model: nn.Module, *, huffman: bool) -> None:
    setattr(model, CODEC_ATTRIBUTE, {"huffman": huffman})


def record_bytes(record: dict) -> tuple[int, int, int]:
    """(index bytes, value/code bytes, codebook/other bytes) of one encoded record."""
    sizes = [meta["nbytes"] for meta in record["streams"]]
    encoding = record["encoding"]
    if encoding == "sparse":
        used = 1 if record["index"] == "relative" else 2
        return sum(sizes[:used]), sum(sizes[used:]), 0
    if encoding == "codes":
        if "zero_code" in record:
            return sum(sizes[1:-1]), sizes[-1], sizes[0]
        return 0, sizes[1], sizes[0]
    if encoding == "integer":
        return 0, sizes[0], sum(sizes[1:])
    return 0, sum(sizes), 0


#: Names that lived here before the codec stopped importing models (issue 13), and where they are.
_MOVED = {**{name: "nnzip.models.nnz" for name in (
    "save_nnz", "load_nnz", "nnz_bytes", "model_from_nnz", "nnz_artifact", "layer_table")},
    "model_tensors": "nnzip.models.compact (compact_tensors)"}


def __getattr__(name: str):
    if name in _MOVED:
        raise ImportError(f"nnzip.codec.nnz.{name} moved to {_MOVED[name]}: write "
                          f"'from {_MOVED[name]} import {name}'", name=name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
