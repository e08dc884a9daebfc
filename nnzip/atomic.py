"""Write files and folders so that a reader never sees a half-written one.

Everything is first written next to its destination under a temporary name and then renamed with
:func:`os.replace`, which is atomic on POSIX file systems. An exception (or Ctrl-C) while writing
removes the temporary and leaves any previous file untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``destination`` in one rename."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                    dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes it owner-only; a plain open() would not
    try:
        yield tmp
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces the folder ``destination``."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp",
                                dir=destination.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        replace_folder(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(source: Path, destination: Path) -> None:
    """Move the folder ``source`` to ``destination``, replacing a folder already there whole."""
    if destination.exists():
        # Two renames keep the window without a folder as short as the file system allows.
        old = destination.with_name(f".{destination.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
        os.replace(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)


def write_text(destination: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``destination`` and return its path."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(destination)


def write_bytes(destination: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``destination`` and return its path."""
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)
