"""``torch.export`` ``.pt2`` archives read without unpickling anything.

``torch.export.load`` unpickles the archive's sample inputs (``data/sample_inputs/model.pt``,
falling back to ``torch.load(weights_only=False)``) and every weight or constant stored with
``use_pickle``: a crafted archive runs code while it is being opened. This reader takes only what
needs no pickle from the archive torch writes:

- every entry's zip CRC is checked first (:meth:`zipfile.ZipFile.testzip`), because torch's own
  reader never checks it: a flipped exponent bit in a weight would otherwise be measured;
- the program's JSON (``models/model.json``), checked and deserialized by
  :func:`nnzip.codec.program.program_from_parts`, which is also how ``.nnz`` files are read;
- weights and constants through their JSON configs, each rebuilt from its raw little-endian
  bytes with the dtype, sizes and strides the config names.

Entries that would need pickle (``use_pickle`` payloads, TorchScript or opaque objects, legacy
pickled weight files) and entries this reader does not know (compiled AOTInductor or ExecuTorch
code) are refused, naming the entry. The sample inputs are never read: without them
``ExportedProgram.module()`` compiles no guard code. The archive layout followed is torch's
``torch/export/pt2_archive/_package.py`` (hand-written because torch offers no loader that skips
pickle).
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnzip.codec.program import program_from_parts
from nnzip.errors import NnzipError

#: The name torch.export.save gives the one program it writes.
MODEL_NAME = "model"
#: Entries read (JSON configs, raw tensor bytes, small markers) or known and never read
#: (sample inputs: a pickle; extra/: the user's text files), relative to the archive's root.
_KNOWN_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt|extra/[^/]+")
_PAYLOAD_NAME = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
#: Bytes a JSON entry may hold: a program of a few billion parameters is tens of MB of JSON.
MAX_JSON_BYTES = 512 * 2**20
TRUST_HINT = ("pass --trust-pickle (trust_pickle=True) to open it with torch.export.load if you "
              "trust its source")


def _corrupt(source: str, why: str) -> NnzipError:
    return NnzipError(f"{source} is corrupt or truncated ({why}): export or save the model again")


def _root(names: list[str], source: str) -> str:
    """The one folder every entry of a torch archive lives in (the file's stem when written)."""
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise NnzipError(f"{source} is not a torch.export archive (its entries are not in one "
                         "folder): export the model with torch.export.save")
    return roots.pop() + "/"


def open_archive(path: Path) -> tuple[zipfile.ZipFile, str]:
    """The archive and its root folder, once every entry's CRC has been checked."""
    source = str(path)
    try:
        archive = zipfile.ZipFile(path)
        bad = archive.testzip()  # reads every entry: a mismatched CRC-32 names it
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
        raise _corrupt(source, f"{type(exc).__name__}: {exc}") from None
    if bad is not None:
        archive.close()
        raise _corrupt(source, f"entry {bad!r} does not match its CRC-32 checksum")
    return archive, _root(archive.namelist(), source)


def check_entries(archive: zipfile.ZipFile, root: str, source: str, size_bytes: int) -> None:
    """Refuse an entry this reader does not know, naming it (compiled code, pickled objects),
    and sizes the archive cannot hold (each entry is later read into memory of its size)."""
    for info in archive.infolist():
        name = info.filename[len(root):]
        if info.is_dir():
            continue
        if not _KNOWN_ENTRIES.fullmatch(name):
            raise NnzipError(f"{source} holds {info.filename!r}, an entry nnzip does not read "
                             "without pickle or compiled code (pickled objects, AOTInductor or "
                             f"ExecuTorch payloads, more than one program): {TRUST_HINT}, or "
                             "export the model again with torch.export.save")
        if info.compress_type != zipfile.ZIP_STORED:
            # torch writes every entry stored; a compressed one was not written by torch and
            # could expand without bound when read.
            raise NnzipError(f"{source} holds {info.filename!r} compressed, which "
                             "torch.export.save never writes: export the model again")
        if info.file_size != info.compress_size or info.file_size > size_bytes:
            raise _corrupt(source, f"entry {info.filename!r} claims {info.file_size:,} bytes")
    format_name = f"{root}archive_format"
    if format_name not in archive.namelist() or archive.read(format_name) != b"pt2":
        raise NnzipError(f"{source} is not a torch.export archive (no archive_format 'pt2'): "
                         "export the model with torch.export.save")
    order = f"{root}byteorder"
    if order in archive.namelist() and archive.read(order).decode("ascii", "replace") \
            != sys.byteorder:
        raise NnzipError(f"{source} was written on a {archive.read(order)!r}-endian machine, "
                         f"this one is {sys.byteorder}-endian: export the model here again")


def _json(archive: zipfile.ZipFile, name: str, source: str) -> Any:
    info = archive.getinfo(name)
    if info.file_size > MAX_JSON_BYTES:
        raise NnzipError(f"{source}: {name!r} holds {info.file_size:,} bytes of JSON, more than "
                         f"the {MAX_JSON_BYTES:,} nnzip reads: export the model again")
    try:
        return json.loads(archive.read(name))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _corrupt(source, f"{name!r}: {type(exc).__name__}") from None


def _int(value: Any, what: str, source: str) -> int:
    """A concrete integer written as ``{"as_int": n}`` (sizes, strides, offsets of weights)."""
    number = value.get("as_int") if isinstance(value, dict) else None
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise _corrupt(source, f"{what} is {str(value)[:60]}, not a non-negative integer")
    return number


def _dtype(code: Any, what: str, source: str) -> torch.dtype:
    from torch._export.serde.schema import ScalarType
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    try:
        return _SERIALIZE_TO_TORCH_DTYPE[ScalarType(code)]
    except (ValueError, KeyError):
        raise _corrupt(source, f"{what} has an unknown dtype code {code!r}") from None


def _flat(archive: zipfile.ZipFile, entry: str, dtype: torch.dtype, source: str) -> torch.Tensor:
    """The raw bytes of one payload entry as a flat tensor of ``dtype`` (little-endian, as
    torch writes them)."""
    data = bytearray(archive.getinfo(entry).file_size)  # read once, straight into place
    with archive.open(entry) as file:
        if file.readinto(data) != len(data):
            raise _corrupt(source, f"{entry!r} is shorter than its header says")
    size = torch.empty((), dtype=dtype).element_size()
    if len(data) % size:
        raise _corrupt(source, f"{entry!r} holds {len(data)} bytes, not a whole number of "
                               f"{dtype} elements")
    if not data:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(data, dtype=torch.uint8).view(dtype)


def _payloads(archive: zipfile.ZipFile, root: str, kind: str, source: str
              ) -> tuple[dict[str, torch.Tensor], set[str], dict[str, str]]:
    """(tensors by name, parameter names, aliases) of the weights or constants config."""
    config_name = f"{root}data/{kind}/{MODEL_NAME}_{kind}_config.json"
    if config_name not in archive.namelist():
        if kind == "weights":
            raise _corrupt(source, f"it lacks {config_name!r}")
        return {}, set(), {}
    config = _json(archive, config_name, source)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _corrupt(source, f"{config_name!r} has no 'config' mapping")
    tensors: dict[str, torch.Tensor] = {}
    parameters: set[str] = set()
    aliases: dict[str, str] = {}
    flats: dict[str, torch.Tensor] = {}
    first_view: dict[tuple, str] = {}
    for name, meta in entries.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise _corrupt(source, f"{config_name!r} describes {name!r} without a path")
        entry = f"{root}data/{kind}/{meta['path_name']}"
        if meta.get("use_pickle"):
            raise NnzipError(f"{source} stores {kind[:-1]} {name!r} as a pickle ({entry!r}), "
                             f"and unpickling runs whatever code it contains: {TRUST_HINT}")
        if not _PAYLOAD_NAME[kind].fullmatch(meta["path_name"]) \
                or entry not in archive.namelist():
            raise _corrupt(source, f"{name!r} points to {entry!r}, which the archive lacks")
        tensor_meta = meta.get("tensor_meta")
        if not isinstance(tensor_meta, dict):
            raise _corrupt(source, f"{name!r} has no tensor metadata")
        if tensor_meta.get("layout", 7) != 7:  # schema.Layout.Strided
            raise NnzipError(f"{source}: {kind[:-1]} {name!r} is a sparse or other non-strided "
                             "tensor, which nnzip does not read from a .pt2: export it dense")
        dtype = _dtype(tensor_meta.get("dtype"), repr(name), source)
        sizes = [_int(v, f"a size of {name!r}", source) for v in tensor_meta.get("sizes", [])]
        strides = [_int(v, f"a stride of {name!r}", source)
                   for v in tensor_meta.get("strides", [])]
        offset = _int(tensor_meta.get("storage_offset", {"as_int": 0}),
                      f"the offset of {name!r}", source)
        if len(sizes) != len(strides):
            raise _corrupt(source, f"{name!r} has {len(sizes)} sizes and {len(strides)} strides")
        if entry not in flats:
            flats[entry] = _flat(archive, entry, dtype, source)
        flat = flats[entry]
        if flat.dtype != dtype:  # another dtype over the same bytes
            try:
                flat = flat.view(torch.uint8).view(dtype)
            except RuntimeError:
                raise _corrupt(source, f"{entry!r} is not a whole number of {dtype} "
                                       "elements") from None
        numel = 1
        for size in sizes:
            numel *= size
        last = offset + sum((size - 1) * stride
                            for size, stride in zip(sizes, strides, strict=True))
        if numel and last >= flat.numel():
            raise _corrupt(source, f"{name!r} needs {last + 1} elements, {entry!r} holds "
                                   f"{flat.numel()}")
        view = (meta["path_name"], dtype, tuple(sizes), tuple(strides), offset)
        if view in first_view:  # a tied tensor: the same object, as the program had it
            aliases[name] = first_view[view]
            continue
        first_view[view] = name
        tensors[name] = torch.as_strided(flat, sizes, strides, offset) if numel \
            else torch.empty(sizes, dtype=dtype)
        if meta.get("is_param"):
            parameters.add(name)
    return tensors, parameters, aliases


def read_pt2(path: Path) -> nn.Module:
    """The module of the program a ``.pt2`` archive holds, read without any unpickling."""
    source = str(path)
    archive, root = open_archive(path)
    with archive:
        check_entries(archive, root, source, path.stat().st_size)
        program_name = f"{root}models/{MODEL_NAME}.json"
        if program_name not in archive.namelist():
            raise NnzipError(f"{source} holds no program {program_name!r}: export the model "
                             "with torch.export.save")
        document = _json(archive, program_name, source)
        if not isinstance(document, dict):
            raise _corrupt(source, f"{program_name!r} is not a JSON object")
        weights, parameters, weight_aliases = _payloads(archive, root, "weights", source)
        constants, _, constant_aliases = _payloads(archive, root, "constants", source)
    clash = sorted(set(weights) & set(constants))
    if clash:
        raise _corrupt(source, f"{', '.join(clash)} is both a weight and a constant")
    layout = {"parameters": sorted(parameters),
              "constants": sorted(set(constants) | set(constant_aliases)),
              "aliases": {**weight_aliases, **constant_aliases}}
    program = program_from_parts(document, {**weights, **constants}, layout, source)
    return program.module()


__all__ = ["open_archive", "read_pt2"]
