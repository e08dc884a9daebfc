"""Output folders: checked before any work, written whole, never over an input.

Every command that writes (``--out``) first calls :func:`check_output`, before loading data or
measuring anything, so a mistake costs a second rather than a finished training or evaluation:
an output that is a file, lies under a file, cannot be written, is an unrelated folder, or would
replace one of the run's inputs (the model, the reference, the data, the recipe) is refused with
one line naming both paths.

A run then writes into a temporary sibling folder (:func:`staged_folder`, built on
:func:`nnzip.atomic.atomic_dir`) that replaces ``--out`` as a whole only when the run succeeds:
a reader never finds a report beside the stale artifacts of an earlier run (a ``model.nnz``
beside a report whose run saved ``model.pt2``), nor ``report.json`` without ``report.html``.
A crash leaves the previous folder untouched. On Ctrl-C the stages finished so far are kept,
as a consistent report set marked as interrupted, in ``OUT.interrupted`` beside ``--out``
(:func:`keep_interrupted`): ``--out`` itself only ever holds a finished run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from nnzip.atomic import atomic_dir, replace_folder
from nnzip.errors import NnzipError

#: Files that mark a folder as one a run of nnzip wrote its results to (replaceable by a rerun).
RUN_MARKERS = ("report.json", "deploy.json")
#: The file that marks a folder as an nnzip model folder (what ``nnzip train`` replaces).
MODEL_MARKERS = ("spec.json",)
#: The suffix of the folder holding an interrupted run's finished results, beside ``--out``.
INTERRUPTED_SUFFIX = ".interrupted"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``saved_to`` is the folder holding the results finished before it
    (None when nothing had finished). A KeyboardInterrupt, so callers that catch that still do."""

    def __init__(self, saved_to: Path | None):
        super().__init__(str(saved_to) if saved_to else "")
        self.saved_to = saved_to


def input_path(spec: str | os.PathLike | None) -> Path | None:
    """The path an input argument names, or None when it names no existing file or folder
    (a zoo or data set name such as ``digits``, ``hf:minilm``)."""
    if spec is None:
        return None
    path = Path(str(spec).removeprefix("hf:"))
    return path if path.exists() else None


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_not_over_inputs(out: Path, inputs: Mapping[str, Path | None],
                          option: str = "--out") -> None:
    """Refuse an output that is an input, contains one (replacing the folder would delete it) or
    lies inside an input folder (writing there would change it)."""
    target = out.resolve()
    for label, given in inputs.items():
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source:
            relation = "is"
        elif _within(source, target):
            relation = "contains"
        elif _within(target, source):
            relation = "lies inside"
        else:
            continue
        raise NnzipError(f"{option} {out} {relation} the input {label} {given}: writing the "
                         f"results there would overwrite it; choose an {option} outside it "
                         "(e.g. a new folder beside it)")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_writable_place(out: Path, option: str = "--out") -> None:
    """Refuse ``out`` when it lies under a file, or its folder cannot be created or written."""
    absolute = Path(os.path.abspath(out))
    for ancestor in absolute.parents:
        if ancestor.exists() and not ancestor.is_dir():
            raise NnzipError(f"{option} {out} lies under {ancestor}, which is a file, not a "
                             f"folder: choose an {option} whose parents are folders")
    parent = _nearest_existing(absolute.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NnzipError(f"{option} {out}: cannot write in {parent} (permission denied); choose "
                         f"an {option} in a folder you can write to")
    if absolute.is_dir() and not os.access(absolute, os.W_OK | os.X_OK):
        raise NnzipError(f"{option} {out}: the existing folder cannot be replaced (permission "
                         f"denied); choose a new {option} folder")


def check_replaceable_folder(out: Path, markers: tuple[str, ...] = RUN_MARKERS,
                             option: str = "--out") -> None:
    """``out`` may be absent, an empty folder, or a folder nnzip wrote (holding one of
    ``markers``), which the run replaces as a whole; never a file or an unrelated folder."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise NnzipError(f"{option} {out} is a file, not a folder: choose a new folder name "
                         "(the file is left as it is)")
    if any(out.iterdir()) and not any((out / marker).is_file() for marker in markers):
        raise NnzipError(f"{option} {out} is a folder nnzip did not write (no "
                         f"{' or '.join(markers)}) and is not empty; the run would replace it "
                         f"as a whole: choose a new or empty {option} folder")


def check_output(out: str | os.PathLike, *, inputs: Mapping[str, Path | None] | None = None,
                 markers: tuple[str, ...] = RUN_MARKERS, option: str = "--out") -> Path:
    """Every check of an output folder, done before any work: not over an input, not under a
    file, writable, and absent, empty or a folder nnzip wrote (see :func:`check_replaceable_
    folder`). Returns ``out`` as a Path."""
    out = Path(out)
    check_not_over_inputs(out, inputs or {}, option)
    check_writable_place(out, option)
    check_replaceable_folder(out, markers, option)
    return out


def check_output_file(out: str | os.PathLike, *, is_ours: Callable[[Path], bool],
                      inputs: Mapping[str, Path | None] | None = None,
                      option: str = "--out") -> Path:
    """The checks of an output that is one file (e.g. ``train --out model.nnz``): an existing
    file is replaced only when ``is_ours`` says nnzip wrote it; a folder is never replaced."""
    out = Path(out)
    check_not_over_inputs(out, inputs or {}, option)
    check_writable_place(out, option)
    if out.is_dir():
        raise NnzipError(f"{option} {out} is a folder, not a file: choose a new file name")
    if out.exists() and not is_ours(out):
        raise NnzipError(f"{option} {out} exists and is not a file nnzip wrote: choose a new "
                         "file name (the file is left as it is)")
    return out


def starts_with(path: Path, signature: bytes) -> bool:
    """Whether the file ``path`` begins with ``signature`` (e.g. the .nnz magic)."""
    with path.open("rb") as file:
        return file.read(len(signature)) == signature


def interrupted_folder(out: Path) -> Path:
    """Where an interrupted run into ``out`` keeps its finished results: ``OUT.interrupted``,
    or when that name holds something nnzip did not write, the first free ``OUT.interrupted-N``."""
    candidate = out.with_name(out.name + INTERRUPTED_SUFFIX)
    number = 1
    while True:
        try:
            check_replaceable_folder(candidate)
            return candidate
        except NnzipError:
            number += 1
            candidate = out.with_name(f"{out.name}{INTERRUPTED_SUFFIX}-{number}")


def keep_interrupted(staged: Path, out: Path) -> Path:
    """Move the staged folder of an interrupted run, already holding a consistent report set,
    to :func:`interrupted_folder` (replacing an earlier interrupted run's folder as a whole);
    ``out`` itself is left as it was."""
    destination = interrupted_folder(out)
    replace_folder(staged, destination)
    return destination


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike | None,
                  save_finished: Callable[[Path], bool] | None = None,
                  markers: tuple[str, ...] = RUN_MARKERS) -> Iterator[Path | None]:
    """Yield a temporary folder beside ``out`` to write the run into; when the block succeeds it
    replaces ``out`` as a whole (one rename). ``None`` in, ``None`` out (nothing is written).

    An exception leaves ``out`` untouched and removes the temporary folder. On Ctrl-C,
    ``save_finished(folder)`` writes what finished, marked as interrupted, into the temporary
    folder and returns whether there was anything; that folder is then kept beside ``out``
    (:func:`keep_interrupted`) and :class:`Interrupted` says where.
    """
    if out is None:
        yield None
        return
    out = check_output(out, markers=markers)  # again: the API has no up-front CLI check
    with atomic_dir(out) as folder:
        try:
            yield folder
        except KeyboardInterrupt:
            if save_finished is None or not save_finished(folder):
                raise Interrupted(None) from None
            raise Interrupted(keep_interrupted(folder, out)) from None


def final_paths(paths: Mapping[str, Path], staged: Path | None, out: Path | None
                ) -> dict[str, Path]:
    """``paths`` written into the staged folder, as they are named once it became ``out``."""
    if staged is None or out is None:
        return dict(paths)
    return {kind: Path(out) / Path(path).relative_to(staged) for kind, path in paths.items()}
