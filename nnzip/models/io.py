"""Saving and loading models without trusting pickle by default.

A zoo model is saved as a folder: ``model.safetensors`` (the state_dict; safetensors cannot run
code) and ``spec.json`` (the zoo spec, format version and the weights' sha256). Loading rebuilds the
architecture with :func:`create_model` and checks the weights against the hash.

A user's own architecture cannot be rebuilt from a spec, so :func:`save_model` refuses to write it
as a folder nothing could load; such models travel as an ``.nnz`` file (their ``torch.export``
program as JSON, tensors through the codec: :mod:`nnzip.models.nnz`) or a ``torch.export``
``.pt2``, which :func:`load_model` reads without pickle (:mod:`nnzip.models.pt2`). Plain
``torch.save`` pickles and TorchScript run code from the file when loaded (TorchScript's
``__setstate__`` can write files) and are read only when the caller says the file is trusted.
Every loaded model's weights are checked for NaN/Inf (:mod:`nnzip.models.finite`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model
from torch import nn

from nnzip.atomic import atomic_dir
from nnzip.bounded import loads_json, read_capped
from nnzip.codec.nnz import is_nnz
from nnzip.codec.program import dynamic_dims
from nnzip.errors import NnzipError
from nnzip.models.finite import check_finite
from nnzip.models.nnz import Example, load_nnz, nnzip_version, save_nnz
from nnzip.models.zoo import ZOO, check_spec, create_model, model_spec

logger = logging.getLogger(__name__)

FORMAT = "nnzip-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
#: Largest spec.json read: the spec is a few hundred bytes; ``extra`` holds small metadata.
MAX_SPEC_BYTES = 16 << 20
_PICKLE_PROTOCOL_2 = b"\x80"
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_EXPORT_HINT = ("export it with torch.export.save(torch.export.export(model, (example,)), "
                "'model.pt2'), which nnzip reads without pickle")
_TRUST_HINT = "pass --trust-pickle (trust_pickle=True) if you trust its source"


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def spec_digest(document: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of every spec.json field but ``spec_sha256`` itself.

    With it a changed spec (``hidden: 10**9``) is a corrupt file, like changed weights; it is an
    integrity check, not a signature: the bounds of :func:`~nnzip.models.zoo.check_spec` and the
    size check against the weights file are what keep a forged spec from allocating.
    """
    fields = {key: value for key, value in document.items() if key != "spec_sha256"}
    try:
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise NnzipError(f"spec fields are not plain JSON ({exc}): re-save the model") from exc
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_destination(path: Path) -> None:
    """Refuse to replace anything but an earlier model folder: the replacement deletes it."""
    if not path.exists():
        return
    if not path.is_dir():
        raise NnzipError(f"cannot save model to {path}: a file with that name exists; "
                         "choose a new folder name")
    if any(path.iterdir()) and not (path / SPEC_FILE).is_file():
        raise NnzipError(f"cannot save model to {path}: the folder exists and is not an nnzip "
                         "model folder; choose a new or empty folder")


def save_model(model: nn.Module, path: str | os.PathLike,
               extra: dict[str, Any] | None = None, *, example: Example | None = None) -> Path:
    """Save a zoo model as the folder ``path`` (``model.safetensors`` + ``spec.json``), atomically.

    A path ending in ``.nnz`` writes one compressed file instead (:mod:`nnzip.models.nnz`: sparse,
    weight-shared and integer weights stored compactly), which :func:`load_model` reads;
    any model torch.export can trace on ``example`` (a batch of inputs) can be saved that way.

    ``extra`` is any JSON-serialisable metadata (accuracy, data set, recipe) kept in spec.json.
    Models not made by :func:`create_model` raise :class:`NnzipError` pointing to .nnz and
    torch.export.
    """
    path = Path(path)
    if path.suffix.lower() == ".nnz":  # one compressed file (nnzip.codec) instead of a folder
        return save_nnz(model, path, example=example, extra=extra)
    spec = model_spec(model)
    if spec is None:
        raise NnzipError(f"{type(model).__name__} was not created by nnzip's model zoo, so a "
                         "weights folder could not be loaded again: save it as one .nnz file "
                         "(nnzip.save(model, 'model.nnz', example=batch)), or "
                         f"{_EXPORT_HINT}; load_model reads all of them")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise NnzipError(f"extra metadata must be JSON-serialisable ({exc}): "
                         "pass numbers, strings, lists and dicts") from exc
    _check_still_fits_spec(model, spec)
    _check_destination(path)
    with atomic_dir(path) as tmp:
        weights = tmp / WEIGHTS_FILE
        # safetensors drops aliases of shared tensors and makes every tensor contiguous.
        save_safetensors_model(model, str(weights))
        document = {**spec, "format": FORMAT, "format_version": FORMAT_VERSION,
                    "nnzip_version": nnzip_version(), "weights_sha256": _sha256(weights),
                    "extra": extra}
        document["spec_sha256"] = spec_digest(document)
        (tmp / SPEC_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    logger.debug("saved %s model to %s", spec["arch"], path)
    return path


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed and checked ``spec.json`` of a model folder (including ``extra``)."""
    spec_path = Path(path) / SPEC_FILE
    try:
        text = read_capped(spec_path, MAX_SPEC_BYTES, "model spec", "re-save the model")
    except FileNotFoundError as exc:
        raise NnzipError(f"{path} has no {SPEC_FILE}: pass a folder written by save_model") from exc
    except OSError as exc:
        raise NnzipError(f"{spec_path} is corrupt ({exc}): re-save the model") from exc
    spec = loads_json(text, f"{spec_path}", "re-save the model")
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise NnzipError(f"{spec_path} is not an nnzip model spec: pass a folder written by "
                         "save_model")
    if spec.get("format_version") != FORMAT_VERSION:
        raise NnzipError(f"{spec_path} has format version {spec.get('format_version')!r}, this "
                         f"nnzip reads version {FORMAT_VERSION}: upgrade nnzip or re-save")
    missing = [k for k in ("arch", "kwargs", "input_shape", "num_classes", "weights_sha256")
               if k not in spec]
    if missing:
        raise NnzipError(f"{spec_path} lacks {', '.join(missing)}: re-save the model")
    # Folders written before spec.json was hashed have no spec_sha256; they are still read, as
    # the bounds and size checks below protect them just the same.
    if "spec_sha256" in spec and spec["spec_sha256"] != spec_digest(spec):
        raise NnzipError(f"{spec_path} is corrupt: it does not match its spec_sha256 (it was "
                         "changed after saving): re-save the model")
    check_spec(spec["arch"], spec["input_shape"], spec["num_classes"], spec["kwargs"])
    return spec


def _mismatch(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
              ignore_missing: frozenset[str] = frozenset()) -> str | None:
    """'missing: …; unexpected: …; wrong shape: …' for two name → shape maps, None if equal."""
    missing = sorted(expected.keys() - found.keys() - ignore_missing)
    unexpected = sorted(found.keys() - expected.keys())
    wrong = [f"{k} (file {found[k]}, model {expected[k]})"
             for k in sorted(found.keys() & expected.keys()) if found[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return None
    return (f"missing: {', '.join(missing) or 'none'}; unexpected: "
            f"{', '.join(unexpected) or 'none'}; wrong shape: {', '.join(wrong) or 'none'}")


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_still_fits_spec(model: nn.Module, spec: dict[str, Any]) -> None:
    """A model reshaped in place (structured pruning, swapped layers) no longer fits its spec."""
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised for real
        fresh = create_model(spec["arch"], input_shape=tuple(spec["input_shape"]),
                             num_classes=spec["num_classes"], **spec["kwargs"])
    problem = _mismatch(_shapes(model), _shapes(fresh))
    if problem:
        raise NnzipError(f"this {spec['arch']} model no longer matches its zoo architecture "
                         f"({problem}), e.g. after structured pruning, so its weights could not "
                         f"be loaded again: {_EXPORT_HINT}")


def _tensor_groups(model: nn.Module) -> dict[str, int]:
    """Every state-dict name of ``model`` → the id of the tensor it names (tied names share one;
    works on the meta device, where every tensor's data_ptr is 0)."""
    named = [*model.named_parameters(remove_duplicate=False),
             *model.named_buffers(remove_duplicate=False)]
    return {name: id(tensor) for name, tensor in named}


def _check_weights_fit(model: nn.Module, weights: Path, arch: str) -> None:
    """Compare names, shapes and byte size in the file with the model (built on the meta
    device) before anything is allocated or copied."""
    try:
        with safe_open(weights, framework="pt") as file:
            found = {k: tuple(file.get_slice(k).get_shape()) for k in file.keys()}
            stored_dtypes = {k: file.get_slice(k).get_dtype() for k in file.keys()}
    except Exception as exc:
        raise NnzipError(f"weights file is corrupt or truncated: {weights} ({exc}): "
                         "re-save or retrain the model") from exc
    state = model.state_dict()
    # safetensors stores one name per shared tensor; the model's other names for it are aliases.
    groups = _tensor_groups(model)
    stored = {groups.get(k) for k in found.keys() & state.keys()}
    aliases = frozenset(k for k in state.keys() - found.keys()
                        if state[k].numel() and groups.get(k) in stored)
    problem = _mismatch(found, _shapes(model), aliases)
    if problem:
        raise NnzipError(f"weights in {weights} do not fit a {arch} model ({problem}): "
                         "re-save the model with this nnzip version")
    expected = sum(state[k].numel() * state[k].element_size() for k in found)
    with weights.open("rb") as file:
        header_bytes = int.from_bytes(file.read(8), "little")
    data_bytes = weights.stat().st_size - 8 - header_bytes
    if data_bytes != expected:
        raise NnzipError(f"weights in {weights} hold {data_bytes:,} bytes of tensors, a {arch} "
                         f"model of this spec needs {expected:,}: re-save the model")
    _check_weight_dtypes(stored_dtypes, state, weights, arch)  # same bytes, another type


def _check_weight_dtypes(stored: dict[str, str], state: dict[str, torch.Tensor], weights: Path,
                         arch: str) -> None:
    """A header whose dtype was changed (the hash recomputed to match) would have its bytes read
    as another type, a model of garbage: every dtype must be the one the model has."""
    from safetensors.torch import _TYPES  # safetensors' own name -> torch dtype table

    for name in sorted(stored.keys() & state.keys()):
        expected = state[name].dtype
        if _TYPES.get(stored[name]) != expected:
            raise NnzipError(f"weights in {weights} store {name!r} as {stored[name]}, but a {arch} "
                             f"model holds it as {str(expected).removeprefix('torch.')}: the "
                             "file is corrupt or was altered; re-save or retrain the model")


def _load_folder(path: Path) -> nn.Module:
    spec = read_spec(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise NnzipError(f"{path} has no {WEIGHTS_FILE}: re-save the model")
    if _sha256(weights) != spec["weights_sha256"]:
        raise NnzipError(f"weights file is corrupt or truncated: {weights} does not match the "
                         f"sha256 in {SPEC_FILE}: re-save or retrain the model")
    def build() -> nn.Module:
        return create_model(spec["arch"], input_shape=tuple(spec["input_shape"]),
                            num_classes=spec["num_classes"], **spec["kwargs"])

    with torch.device("meta"):  # shapes and sizes only: nothing allocated yet
        _check_weights_fit(build(), weights, spec["arch"])
    model = build()
    try:
        load_safetensors_model(model, weights, strict=True)
    except Exception as exc:  # malformed header or data despite a matching hash
        raise NnzipError(f"cannot read weights {weights} ({type(exc).__name__}: {exc}): "
                         "re-save the model") from exc
    return model.eval()


def _zip_names(path: Path) -> list[str] | None:
    """Entry names if ``path`` is a readable zip archive, else None."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    # A damaged central directory can also fail as an undecodable name or an unknown version.
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, NotImplementedError):
        return None


def _load_export(path: Path, trust_pickle: bool) -> nn.Module:
    """A ``.pt2`` without any unpickling (:mod:`nnzip.models.pt2`); with ``trust_pickle``, one
    that needs pickle too, through ``torch.export.load`` (its CRCs checked first all the same)."""
    from nnzip.models.pt2 import open_archive, read_pt2

    if not trust_pickle:
        return read_pt2(path)
    open_archive(path)[0].close()
    try:
        return torch.export.load(path).module()
    except Exception as exc:
        raise NnzipError(f"cannot read {path} as a torch.export archive; it may be corrupt or "
                         f"truncated ({type(exc).__name__}: {exc}): re-export the model") from exc


def _load_torchscript(path: Path, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        # torch.jit.load runs the TorchScript code of the file's classes (``__setstate__``) while
        # loading, and TorchScript can write files (torch.save): tests/safety/test_trust.py.
        raise NnzipError(f"{path} is TorchScript, whose code runs while it is loaded (it can "
                         f"write files): {_TRUST_HINT}, or {_EXPORT_HINT}")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as exc:
        raise NnzipError(f"cannot read {path} as TorchScript; it may be corrupt or truncated "
                         f"({type(exc).__name__}: {exc}): re-save it with torch.jit.save") from exc


def _load_pickle(path: Path, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        raise NnzipError(f"{path} is a pickled PyTorch file, and unpickling runs whatever code the "
                         f"file contains: {_TRUST_HINT}, or {_EXPORT_HINT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise NnzipError(f"cannot unpickle {path}: the model's class is not importable ({exc}): "
                         "run from where its code is importable, or " + _EXPORT_HINT) from exc
    except Exception as exc:
        raise NnzipError(f"cannot read {path}; it may be corrupt or truncated "
                         f"({type(exc).__name__}: {exc}): save it again") from exc
    if not isinstance(obj, nn.Module):
        raise NnzipError(f"{path} holds a {type(obj).__name__}, not a model (a state_dict has no "
                         "architecture): build the model with create_model and load_state_dict, "
                         "or save the whole model")
    return obj.eval()


def _load_hf_folder(path: Path, trust_pickle: bool) -> nn.Module:
    """A Hugging Face folder (``config.json``, no ``spec.json``): a sentence encoder, as
    ``hf:FOLDER`` loads it. A folder save_hf wrote from another wrapper (a causal LM) is not
    one, and is refused rather than loaded as an encoder."""
    from nnzip.models.hf import load_hf  # transformers is an optional extra
    from nnzip.models.hf_save import saved_wrapper

    wrapper = saved_wrapper(path)
    if wrapper not in (None, "SentenceEncoder"):
        raise NnzipError(f"{path} holds a {wrapper} saved by nnzip's save_hf; load_model reads "
                         "sentence encoders only: load it with transformers' from_pretrained "
                         "(its config.json names the class)")
    return load_hf(path, trust_pickle=trust_pickle)


def load_model(path: str | os.PathLike, *, trust_pickle: bool = False,
               allow_nonfinite: bool = False) -> nn.Module:
    """Load a model folder (save_model), an ``.nnz`` file, a torch.export ``.pt2``, an ``.onnx``
    file (run by ONNX Runtime), an OpenVINO IR ``.xml`` with its ``.bin`` beside it (run by
    OpenVINO, an optional extra), or, with ``trust_pickle``, TorchScript or a pickle.

    Nothing from the file is unpickled or run unless ``trust_pickle`` is set. A model whose
    weights hold NaN or Inf is refused, naming the tensor, unless ``allow_nonfinite`` is set.

    The format is recognised from the content, not the suffix. Models come back on the CPU and,
    except for ``.pt2`` programs (which do not support it), in eval mode. ``hf:FOLDER`` (or
    ``hf:minilm``, the shipped all-MiniLM-L6-v2) loads a Hugging Face encoder as a
    :class:`~nnzip.models.hf.SentenceEncoder`, and so does a folder with a ``config.json`` and no
    ``spec.json`` (what :func:`~nnzip.models.hf_save.save_hf` writes for an encoder).
    """
    model = _load_any(path, trust_pickle, allow_nonfinite)
    if not allow_nonfinite:
        check_finite(model, str(path))
    return model


def _load_any(path: str | os.PathLike, trust_pickle: bool, allow_nonfinite: bool) -> nn.Module:
    if str(path).startswith("hf:"):
        from nnzip.models.hf import load_hf  # transformers is an optional extra

        return load_hf(str(path)[3:], trust_pickle=trust_pickle)
    path = Path(path).expanduser()
    if not path.exists():
        hint = (f"{str(path)!r} is a zoo architecture, not a file: use create_model"
                if str(path) in ZOO else "check the path")
        raise NnzipError(f"model not found: {path}: {hint}")
    if path.is_file() and path.name in (SPEC_FILE, WEIGHTS_FILE) \
            and (path.parent / SPEC_FILE).is_file():
        path = path.parent  # the user pointed at a file inside a model folder
    if path.is_dir():
        if not (path / SPEC_FILE).is_file() and (path / "config.json").is_file():
            return _load_hf_folder(path, trust_pickle)
        return _load_folder(path)
    if is_nnz(path):
        return load_nnz(path)
    if path.suffix.lower() == ".onnx":
        from nnzip.models.onnx_file import check_onnx_file
        from nnzip.runtime.session import OrtModule  # runs in ONNX Runtime, callable like torch

        check_onnx_file(path, allow_nonfinite=allow_nonfinite)
        return OrtModule(path)
    if path.suffix.lower() == ".xml":
        from nnzip.runtime.openvino import OvModule  # OpenVINO IR: the .bin sits beside it

        # Bounded and safe: the .xml is read capped, refused with XML entities, its .bin checked
        # against the size it declares, its float constants for NaN/Inf (nnzip.runtime.openvino).
        return OvModule(path, allow_nonfinite=allow_nonfinite)
    names = _zip_names(path)
    if names is not None:
        if any(n.rsplit("/", 1)[-1] == "archive_format" for n in names):
            return _load_export(path, trust_pickle)
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return _load_torchscript(path, trust_pickle)
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return _load_pickle(path, trust_pickle)
        raise NnzipError(f"{path} is a zip archive but not a PyTorch model: pass a model folder, "
                         "a .pt2 or a TorchScript file")
    with path.open("rb") as file:
        head = file.read(4)
    if head == _ZIP_LOCAL_HEADER or path.suffix.lower() == ".pt2":
        raise NnzipError(f"model file is corrupt or truncated: {path} is an incomplete archive: "
                         "save or export it again")
    if head[:1] == _PICKLE_PROTOCOL_2:
        return _load_pickle(path, trust_pickle)  # torch.save's legacy, pre-zip format
    if path.suffix.lower() == ".safetensors":
        raise NnzipError(f"{path} holds weights only: pass the folder written by save_model, "
                         "which also has the spec.json describing the architecture")
    raise NnzipError(f"{path} is not a model file nnzip can read: pass a model folder "
                     "(save_model), a .pt2 (torch.export) or a TorchScript file")




def export_model(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Save any model as a ``torch.export`` program with a dynamic batch size (and sequence
    length, for token ids), atomically.

    This is how models outside the zoo (or zoo models whose shapes a method changed) are saved:
    the program carries its own graph, so :func:`load_model` needs no Python class to rebuild it.
    """
    from nnzip.atomic import atomic_path

    path = Path(path)
    batch = torch.export.Dim("batch", min=1)
    was_training = getattr(model, "training", False)
    try:
        model.eval()
    except NotImplementedError:  # an exported program's module keeps the mode it was made with
        pass
    try:
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=(dynamic_dims(example, batch),))
    except Exception as exc:
        raise NnzipError(f"cannot export {type(model).__name__} with torch.export "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0]}): make the forward "
                         "traceable (no data-dependent Python control flow)") from exc
    finally:
        if was_training:
            model.train()
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)
    return path


__all__ = ["export_model", "load_model", "model_spec", "read_spec", "save_model"]
