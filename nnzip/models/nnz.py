"""Models as .nnz files: the structure from the zoo spec or from ``torch.export``, the tensors
through the codec.

- A zoo model whose tensors still fit its architecture is stored with its zoo spec (format
  version 1, the smallest file); loading rebuilds it with :func:`~nnzip.models.create_model`.
- Any other model — a user's own architecture, or a zoo model a method reshaped — is stored as
  its ``torch.export`` program (version 2, :mod:`nnzip.codec.program`), traced on ``example``
  inputs whose shapes and dtypes (not values) are kept; the batch dimension stays dynamic, and so
  does the sequence dimension of token ids (a transformer's program takes sentences of any
  length). Loading deserializes the program with the decoded tensors and returns
  ``program.module()``.

Either way the methods' state is stored compactly (:mod:`nnzip.models.compact`): shared weights
as codebook + codes, weight-only integer layers as their integers, zeros as sparse records, tied
tensors once. The loaded model is plain (shared weights decoded, integers dequantized) and
computes bit for bit what the saved model computed. Nothing is unpickled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnzip.atomic import atomic_path
from nnzip.codec.nnz import (
    SUFFIX,
    NnzFile,
    codec_options,
    encode_tensors,
    read_nnz,
    record_bytes,
)
from nnzip.codec.program import (
    describe_inputs,
    example_tuple,
    export_program,
    program_from_parts,
    program_parts,
)
from nnzip.codec.tensors import Coded, Integer, encode_tensor
from nnzip.errors import NnzipError
from nnzip.models.compact import (
    StructureChanged,
    compact_if_exact,
    compact_tensors,
    plain_model,
)
from nnzip.models.zoo import check_spec, create_model, model_spec

log = logging.getLogger(__name__)

#: The format version of each kind of file: the lowest that holds it.
ZOO_VERSION = 1
PROGRAM_VERSION = 2

Example = torch.Tensor | Sequence[torch.Tensor]


def nnzip_version() -> str:
    import nnzip  # at call time: nnzip/__init__ may import this module

    return str(getattr(nnzip, "__version__", "unknown"))


def _fresh_zoo_model(spec: dict, *, meta: bool) -> nn.Module:
    if meta:  # shapes only: nothing allocated, nothing initialised for real
        with torch.device("meta"):
            return _fresh_zoo_model(spec, meta=False)
    return create_model(spec["arch"], input_shape=tuple(spec["input_shape"]),
                        num_classes=spec["num_classes"], **spec["kwargs"])


def _shape(value: torch.Tensor | Coded | Integer) -> tuple[int, ...]:
    if isinstance(value, Coded):
        return tuple(value.shape)
    if isinstance(value, Integer):
        return tuple(value.values.shape)
    return tuple(value.shape)


def _zoo_tensors(model: nn.Module, spec: dict) -> dict[str, torch.Tensor | Coded | Integer]:
    """The zoo model's tensors by plain name; StructureChanged if they no longer fit its spec."""
    expected = {name: tuple(t.shape) for name, t in _fresh_zoo_model(spec, meta=True)
                .state_dict().items()}
    tensors = compact_tensors(model, list(expected))
    wrong = [f"{name} ({_shape(value)}, the {spec['arch']} has {expected[name]})"
             for name, value in tensors.items() if _shape(value) != expected[name]]
    if wrong:
        raise StructureChanged(f"this {spec['arch']} model no longer matches its zoo "
                               f"architecture (wrong shape: {', '.join(wrong)}), e.g. after "
                               "structured pruning")
    return tensors


def _header(huffman: bool, extra: dict | None, version: int) -> dict:
    return {"format_version": version, "nnzip_version": nnzip_version(), "huffman": huffman,
            "extra": extra}


def _program_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...], huffman: bool,
                   extra: dict | None) -> bytes:
    plain, compact = plain_model(model)
    program, dynamic_batch = export_program(plain, inputs)
    document, tensors, layout = program_parts(program)
    stored = {name: compact_if_exact(compact.get(name), tensor)
              for name, tensor in tensors.items()}
    header = {**_header(huffman, extra, PROGRAM_VERSION), "program": document,
              "layout": layout, "inputs": describe_inputs(inputs),
              "dynamic_batch": dynamic_batch, "torch_version": torch.__version__}
    return encode_tensors(stored, header, huffman=huffman, version=PROGRAM_VERSION)


def nnz_bytes(model: nn.Module, *, example: Example | None = None, huffman: bool = True,
              extra: dict | None = None) -> bytes:
    """The .nnz file of ``model`` (pruned, weight-shared, integer-quantized or plain), as bytes.

    A zoo model that still fits its architecture needs nothing else; any other model needs
    ``example`` (a batch of inputs, or a tuple of them) to be traced by ``torch.export``.
    """
    spec = model_spec(model)
    if spec is not None:
        try:
            tensors = _zoo_tensors(model, spec)
        except StructureChanged as error:
            if example is None:
                raise NnzipError(f"{error}: pass example= (a batch of inputs) to store it as a "
                                 "torch.export program instead") from None
            log.info("storing the %s model as a torch.export program: %s", spec["arch"], error)
        else:
            return encode_tensors(tensors, {**_header(huffman, extra, ZOO_VERSION), "spec": spec},
                                  huffman=huffman, version=ZOO_VERSION)
    elif example is None:
        raise NnzipError(f"{type(model).__name__} was not created by nnzip's model zoo, so its "
                         ".nnz file stores it as a torch.export program, which is traced on "
                         "example inputs: pass example= (a batch of inputs), e.g. "
                         "nnzip.save(model, 'model.nnz', example=batch)")
    return _program_bytes(model, example_tuple(example), huffman, extra)


def save_nnz(model: nn.Module, path: str | os.PathLike, *, example: Example | None = None,
             huffman: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as one .nnz file, atomically (temporary file, then rename).

    Everything is encoded before the file is opened, so a model that cannot be saved leaves no
    file (and any earlier file at ``path`` untouched).
    """
    path = Path(path)
    data = nnz_bytes(model, example=example, huffman=huffman, extra=extra)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    log.debug("saved %s (%d bytes)", path, len(data))
    return path


def _zoo_model(file: NnzFile, source: str) -> nn.Module:
    spec = file.header.get("spec")
    if not isinstance(spec, dict) or not {"arch", "input_shape", "num_classes",
                                           "kwargs"} <= spec.keys():
        raise NnzipError(f"{source} has an invalid model spec: save it again")
    try:
        check_spec(spec["arch"], spec["input_shape"], spec["num_classes"], spec["kwargs"])
    except NnzipError as error:
        raise NnzipError(f"{source} has an invalid model spec ({error})") from None
    state = {name: value.dequantize() if isinstance(value, Integer) else value
             for name, value in file.tensors.items()}
    expected = _fresh_zoo_model(spec, meta=True).state_dict()  # shapes first, nothing allocated
    problems = sorted(set(expected) ^ set(state)) + sorted(
        n for n in set(expected) & set(state) if expected[n].shape != state[n].shape)
    if problems:
        raise NnzipError(f"{source} does not fit a {spec['arch']} model (names or shapes differ: "
                         f"{', '.join(problems)}): save it again with this nnzip")
    model = _fresh_zoo_model(spec, meta=False)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _program_model(file: NnzFile, source: str) -> nn.Module:
    document, layout = file.header.get("program"), file.header.get("layout")
    if not isinstance(document, dict) or not isinstance(layout, dict):
        raise NnzipError(f"{source} has no valid program: save the model again")
    tensors = {name: value.dequantize() if isinstance(value, Integer) else value
               for name, value in file.tensors.items()}
    program = program_from_parts(document, tensors, layout, source)
    # An exported program's module bakes in the mode it was exported in (eval): it refuses
    # .eval(), and nnzip's measurements skip the switch for it.
    try:
        return program.module()
    except Exception as error:  # torch's unlifting asserts on a forged (CRC-valid) program
        raise NnzipError(f"{source} holds a program this PyTorch cannot rebuild as a module "
                         f"({type(error).__name__}: {str(error)[:200]}): save the model "
                         "again") from None


def model_from_nnz(file: NnzFile, source: str = "the .nnz file") -> nn.Module:
    """Rebuild the model a decoded file describes (a plain model that computes as exported)."""
    if "program" in file.header:
        return _program_model(file, source)
    return _zoo_model(file, source)


def load_nnz(path: str | os.PathLike) -> nn.Module:
    """Read a .nnz file and rebuild its model (CPU; a zoo model in eval mode, a program as it
    was exported)."""
    return model_from_nnz(read_nnz(path), str(path))


def nnz_artifact(model: nn.Module, folder: str | os.PathLike, name: str = "model",
                 example: Example | None = None) -> Path | None:
    """Write ``model`` as ``folder/name.nnz`` if a stage asked for .nnz (else None): the file
    whose bytes the report's size is. A model outside the zoo is traced on ``example``; without
    one, or if torch.export cannot trace it, it is weighed as its state dict (logged)."""
    options = codec_options(model)
    if options is None:
        return None
    path = Path(folder) / f"{name}{SUFFIX}"
    if model_spec(model) is not None:
        return save_nnz(model, path, example=example, huffman=options["huffman"])
    if example is None:
        log.info("not a zoo model and no example inputs: weighed as its state dict, not as an "
                 ".nnz file")
        return None
    try:
        return save_nnz(model, path, example=example, huffman=options["huffman"])
    except NnzipError as error:
        log.warning("weighed as its state dict, not as an .nnz file: %s", error)
        return None


def layer_table(model: nn.Module) -> dict[str, dict]:
    """Deep Compression's Table 1 for every weight (Linear/Conv) of a zoo model, in bytes.

    For each weight: its count, the fraction kept (non-zero), and its size stored dense (fp32),
    after pruning (sparse fp32 with relative indices), after weight sharing (codes bit-packed)
    and after Huffman coding, with the average index and weight bits per kept weight.
    """
    from nnzip.prune.masks import PRUNABLE_TYPES

    spec = model_spec(model)
    if spec is None:
        raise NnzipError("the per-layer size table needs a zoo model (create_model)")

    def is_layer_weight(name: str) -> bool:
        module = model.get_submodule(name.rpartition(".")[0])
        wrapped = getattr(module, "layer", None)  # a quantized layer wraps the float one
        return isinstance(module, PRUNABLE_TYPES) or isinstance(wrapped, PRUNABLE_TYPES)

    names = [n for n in _fresh_zoo_model(spec, meta=True).state_dict()
             if n.endswith(".weight") and is_layer_weight(n)]
    tensors = compact_tensors(model, names)
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
            index, values, other = record_bytes(record)
            row[f"{label}_bytes"] = index + values + other
            row[f"{label}_index_bits"] = 8 * index / max(kept, 1)
            row[f"{label}_weight_bits"] = 8 * values / max(kept, 1)
        row["bits"] = value.bits if isinstance(value, (Coded, Integer)) else 32
        table[name] = row
    return table


__all__ = ["layer_table", "load_nnz", "model_from_nnz", "nnz_artifact",
           "nnz_bytes", "save_nnz"]
