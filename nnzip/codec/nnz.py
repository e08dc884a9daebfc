"""The .nnz file: one compressed model in one versioned, checksummed file.

Layout (little-endian)::

    magic b"\\x89NNZ" | format version u16 | header length u32 | payload length u64
    | header: zlib-compressed JSON (model spec, one record per tensor, each record's streams)
    | payload: the streams' bytes, in record order | CRC-32 of everything before it, u32

The header carries the zoo spec, so :func:`load_nnz` rebuilds the architecture with
:func:`~nnzip.models.create_model` and fills it with the decoded tensors: a plain model (shared
weights decoded to ``codebook[codes]``, integer weights dequantized) that computes exactly what
the compressed model computed. Nothing is unpickled. A truncated, bit-flipped or foreign file
fails the length or CRC check and raises :class:`NnzipError` before anything is decoded.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnzip.atomic import atomic_path
from nnzip.codec.tensors import Coded, Integer, decode_tensor, encode_tensor
from nnzip.errors import NnzipError

log = logging.getLogger(__name__)

MAGIC = b"\x89NNZ"
FORMAT = "nnzip-nnz"
FORMAT_VERSION = 1
SUFFIX = ".nnz"
_PREFIX = struct.Struct("<4sHIQ")
_CRC = struct.Struct("<I")


@dataclass
class NnzFile:
    """A decoded file: the header (spec, extra, records) and every tensor by name."""

    header: dict
    tensors: dict[str, torch.Tensor | Integer] = field(default_factory=dict)


# -- bytes -----------------------------------------------------------------------------------
def encode_tensors(tensors: dict[str, torch.Tensor | Coded | Integer], header: dict, *,
                   huffman: bool = True) -> bytes:
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
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head), len(body))
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
    if version != FORMAT_VERSION:
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
    try:
        header = json.loads(zlib.decompress(data[start:start + header_length]))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NnzipError(f"{source} has an unreadable header ({error}): save the model "
                         "again") from error
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
        for record, streams in _record_streams(header["records"], payload):
            result.tensors[str(record["name"])] = decode_tensor(record, streams)
    except NnzipError as error:
        raise NnzipError(f"{source}: {error}") from error
    except Exception as error:  # a header that passed the CRC but is inconsistent
        raise NnzipError(f"{source} is corrupt or from an incompatible writer "
                         f"({type(error).__name__}: {error}): save the model again") from error
    return result


# -- models ----------------------------------------------------------------------------------
def _plain_names(spec: dict) -> list[str]:
    """The state-dict names a fresh zoo model of ``spec`` has (shapes only, on 'meta')."""
    from nnzip.models.zoo import create_model

    with torch.device("meta"):
        fresh = create_model(spec["arch"], input_shape=tuple(spec["input_shape"]),
                             num_classes=spec["num_classes"], **spec["kwargs"])
    return list(fresh.state_dict())


def model_tensors(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor | Coded | Integer]:
    """Each plain state-dict name of ``model`` → its tensor, its codes or its integer weight.

    Works through the parametrizations of weight sharing and the wrappers of quantization, so
    the file holds the names of the plain architecture.
    """
    from nnzip.codec.quant_bridge import integer_weight
    from nnzip.share.modules import shared_weights

    shared = shared_weights(model)
    tensors: dict[str, torch.Tensor | Coded | Integer] = {}
    for name in names:
        module_name, _, attribute = name.rpartition(".")
        try:
            module = model.get_submodule(module_name) if module_name else model
        except AttributeError as error:
            raise NnzipError(f"the model has no {module_name!r} any more ({error}): it no "
                             "longer matches its zoo architecture") from error
        bridged = integer_weight(module)
        if bridged is not None:
            module, integer = bridged
            if attribute == "weight":
                tensors[name] = integer
                continue
        if name in shared:
            table = shared[name]
            tensors[name] = Coded(codebook=table.table().detach(), codes=table.codes,
                                  bits=table.bits, shape=table.shape)
            continue
        value = getattr(module, attribute, None)
        if not isinstance(value, torch.Tensor):
            raise NnzipError(f"the model has no tensor {name!r}: it no longer matches its zoo "
                             "architecture (e.g. after structured pruning); export it instead")
        tensors[name] = value.detach()
    return tensors


def nnz_bytes(model: nn.Module, *, huffman: bool = True, extra: dict | None = None) -> bytes:
    """The .nnz file of a zoo model (pruned, weight-shared or integer-quantized), as bytes."""
    from nnzip.models.io import _nnzip_version
    from nnzip.models.zoo import model_spec

    spec = model_spec(model)
    if spec is None:
        raise NnzipError(f"{type(model).__name__} was not created by nnzip's model zoo, so an "
                         ".nnz file could not rebuild it: save it with export_model (.pt2)")
    tensors = model_tensors(model, _plain_names(spec))
    return encode_tensors(tensors, {"format_version": FORMAT_VERSION, "spec": spec,
                                    "nnzip_version": _nnzip_version(), "huffman": huffman,
                                    "extra": extra}, huffman=huffman)


def save_nnz(model: nn.Module, path: str | os.PathLike, *, huffman: bool = True,
             extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as one .nnz file, atomically (temporary file, then rename)."""
    path = Path(path)
    data = nnz_bytes(model, huffman=huffman, extra=extra)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    log.debug("saved %s (%d bytes)", path, len(data))
    return path


def model_from_nnz(file: NnzFile, source: str = "the .nnz file") -> nn.Module:
    """Rebuild the zoo model a decoded file describes (a plain model, in eval mode)."""
    from nnzip.models.zoo import create_model

    spec = file.header.get("spec")
    try:
        model = create_model(spec["arch"], input_shape=tuple(spec["input_shape"]),
                             num_classes=spec["num_classes"], **spec["kwargs"])
    except (TypeError, KeyError) as error:
        raise NnzipError(f"{source} has an invalid model spec ({error}): save it again") from error
    state = {name: value.dequantize() if isinstance(value, Integer) else value
             for name, value in file.tensors.items()}
    expected = model.state_dict()
    problems = sorted(set(expected) ^ set(state)) + sorted(
        n for n in set(expected) & set(state) if expected[n].shape != state[n].shape)
    if problems:
        raise NnzipError(f"{source} does not fit a {spec['arch']} model (names or shapes differ: "
                         f"{', '.join(problems)}): save it again with this nnzip")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_nnz(path: str | os.PathLike) -> nn.Module:
    """Read a .nnz file and rebuild its model (CPU, eval mode)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise NnzipError(f"model not found: {path}: check the path") from error
    return model_from_nnz(decode_tensors(data, str(path)), str(path))


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


def nnz_artifact(model: nn.Module, folder: str | os.PathLike, name: str = "model") -> Path | None:
    """Write ``model`` as ``folder/name.nnz`` if a stage asked for .nnz (else None): the file
    whose bytes the report's size is."""
    from nnzip.models.zoo import model_spec

    options = codec_options(model)
    if options is None:
        return None
    if model_spec(model) is None:
        log.info("not a zoo model: weighed as its state dict, not as an .nnz file")
        return None
    return save_nnz(model, Path(folder) / f"{name}{SUFFIX}", huffman=options["huffman"])


def _index_and_value_bytes(record: dict) -> tuple[int, int, int]:
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


def layer_table(model: nn.Module) -> dict[str, dict]:
    """Deep Compression's Table 1 for every weight (Linear/Conv) of a zoo model, in bytes.

    For each weight: its count, the fraction kept (non-zero), and its size stored dense (fp32),
    after pruning (sparse fp32 with relative indices), after weight sharing (codes bit-packed)
    and after Huffman coding, with the average index and weight bits per kept weight.
    """
    from nnzip.models.zoo import model_spec
    from nnzip.prune.masks import PRUNABLE_TYPES

    spec = model_spec(model)
    if spec is None:
        raise NnzipError("the per-layer size table needs a zoo model (create_model)")
    def is_layer_weight(name: str) -> bool:
        module = model.get_submodule(name.rpartition(".")[0])
        wrapped = getattr(module, "layer", None)  # a quantized layer wraps the float one
        return isinstance(module, PRUNABLE_TYPES) or isinstance(wrapped, PRUNABLE_TYPES)

    names = [n for n in _plain_names(spec) if n.endswith(".weight") and is_layer_weight(n)]
    tensors = model_tensors(model, names)
    table = {}
    for name, value in tensors.items():
        dense = value if isinstance(value, torch.Tensor) else None
        if dense is None:
            module = model.get_submodule(name.rpartition(".")[0])
            dense = getattr(module, "weight", None)
            if not isinstance(dense, torch.Tensor):
                dense = value.dequantize()
        dense = dense.detach().float()
        kept = int((dense != 0).sum())
        _, pruned_streams = encode_tensor(name, dense, huffman=False)
        row = {"weights": dense.numel(), "kept": kept, "dense_bytes": 4 * dense.numel(),
               "pruned_bytes": sum(len(data) for _, data in pruned_streams)}
        for label, huffman in (("shared", False), ("huffman", True)):
            record, streams = encode_tensor(name, value, huffman=huffman)
            record["streams"] = [m for m, _ in streams]
            index, values, other = _index_and_value_bytes(record)
            row[f"{label}_bytes"] = index + values + other
            row[f"{label}_index_bits"] = 8 * index / max(kept, 1)
            row[f"{label}_weight_bits"] = 8 * values / max(kept, 1)
        row["bits"] = value.bits if isinstance(value, (Coded, Integer)) else 32
        table[name] = row
    return table
