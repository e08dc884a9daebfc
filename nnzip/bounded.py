"""Reading untrusted bytes in bounded memory: size caps, capped inflation, JSON with a depth cap.

Every reader that sizes an allocation from a file (an .nnz header, a spec.json, a report.json, a
recipe) checks the size *before* it reads, inflates or parses: a small hostile file must not make
nnzip allocate gigabytes or recurse until the interpreter fails (issue 15, item 3).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from nnzip.errors import NnzipError

#: Deepest JSON nesting any nnzip file needs (a torch.export program is about 11 deep).
MAX_JSON_DEPTH = 64
#: Most JSON containers (objects and lists) one document may hold: about 64 bytes each once
#: parsed, so a document of many tiny lists stays far below the memory a file's size suggests.
MAX_JSON_CONTAINERS = 2_000_000
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_CHUNK = 1 << 20


def read_capped(path: str | os.PathLike, max_bytes: int, what: str, fix: str) -> bytes:
    """The bytes of ``path``, refused with :class:`NnzipError` if it holds more than
    ``max_bytes`` (checked before reading, and again while reading in case it grows)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise NnzipError(f"{what} {path} is {size:,} bytes, more than the {max_bytes:,} allowed: "
                         f"{fix}")
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise NnzipError(f"{what} {path} grew past {max_bytes:,} bytes while read: {fix}")
    return data


def inflate(data: bytes, max_bytes: int, what: str, fix: str) -> bytes:
    """zlib-decompress ``data``, refusing output longer than ``max_bytes`` before producing it
    (a zlib bomb of 1 MB inflates to 1 GB)."""
    decompressor = zlib.decompressobj()
    try:
        out = decompressor.decompress(data, max_bytes)
        if decompressor.unconsumed_tail:
            raise NnzipError(f"{what} inflates to more than {max_bytes:,} bytes "
                             f"(a decompression bomb or a corrupt file): {fix}")
        out += decompressor.flush()
    except zlib.error as error:
        raise NnzipError(f"{what} is not valid zlib data ({error}): {fix}") from error
    if not decompressor.eof or len(out) > max_bytes:
        raise NnzipError(f"{what} is truncated or inflates past {max_bytes:,} bytes: {fix}")
    return out


def json_structure(text: bytes) -> tuple[int, int]:
    """(deepest nesting, number of containers) of a JSON text, without parsing it.

    Hand-written: the standard ``json`` module has no depth limit (it recurses until
    ``RecursionError``) and no container count. Strings are blanked first so brackets inside
    them do not count; the scan is numpy over 1 MB chunks, so it needs no recursion and little
    memory.
    """
    bare = _STRING.sub(b'""', text)
    depth = deepest = containers = 0
    for start in range(0, len(bare), _CHUNK):
        codes = np.frombuffer(bare, dtype=np.uint8, count=min(_CHUNK, len(bare) - start),
                              offset=start)
        opens = (codes == ord("[")) | (codes == ord("{"))
        closes = (codes == ord("]")) | (codes == ord("}"))
        if not (opens.any() or closes.any()):
            continue
        running = depth + np.cumsum(opens.astype(np.int32) - closes.astype(np.int32))
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
        containers += int(opens.sum())
    return deepest, containers


def loads_json(text: bytes | str, what: str, fix: str, *, max_depth: int = MAX_JSON_DEPTH,
               max_containers: int = MAX_JSON_CONTAINERS) -> Any:
    """``json.loads`` after checking nesting depth and container count, so a hostile document
    ends in :class:`NnzipError` rather than ``RecursionError`` or gigabytes of small objects."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    deepest, containers = json_structure(raw)
    if deepest > max_depth:
        raise NnzipError(f"{what} nests JSON {deepest} levels deep, more than the {max_depth} "
                         f"allowed: {fix}")
    if containers > max_containers:
        raise NnzipError(f"{what} holds {containers:,} JSON objects/lists, more than the "
                         f"{max_containers:,} allowed: {fix}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise NnzipError(f"{what} is not readable JSON ({error}): {fix}") from error


__all__ = ["MAX_JSON_CONTAINERS", "MAX_JSON_DEPTH", "inflate", "json_structure", "loads_json",
           "read_capped"]


def load_json_file(path: str | os.PathLike, name: str, max_bytes: int, what: str, fix: str,
                   missing: str) -> tuple[Path, Any]:
    """Read the JSON file ``path`` (or the file called ``name`` in the folder ``path``), capped
    at ``max_bytes`` and parsed with :func:`loads_json`: the path read and the document. A
    missing file ends in :class:`NnzipError` saying ``missing`` (what to pass instead), an
    unreadable one saying ``fix``; ``what`` names the document in both (e.g. "report")."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    try:
        text = read_capped(path, max_bytes, what, fix)
    except FileNotFoundError:
        raise NnzipError(f"{what} {path} does not exist: {missing}") from None
    except OSError as error:
        raise NnzipError(f"{what} {path} is not readable ({error}): {fix}") from None
    return path, loads_json(text, f"{what} {path}", fix)
