"""Model size: parameter counts and the bytes of a real serialized artifact.

Sizes are measured on disk, not estimated: the state dict is written as a safetensors file (a
plain, header-plus-raw-bytes format) and the file is weighed, so every byte a user would ship is
counted, header included.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from nnzip.errors import NnzipError


def count_params(model: nn.Module) -> int:
    """Number of scalar parameters (buffers such as BatchNorm running stats are not parameters).

    A tied tensor is one parameter, counted once (``model.parameters()`` yields it once).
    """
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Number of parameter entries that are not exactly zero.

    Only parameters are counted; buffers (running statistics, masks, quantization scales) are
    excluded, so the figure is comparable with :func:`count_params`. Quantized modules keep their
    weights in packed buffers, not parameters, so they contribute nothing here.
    """
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def _quantized_parts(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    # safetensors stores plain dtypes only: keep the integer codes and their scale / zero point.
    parts = {f"{name}.int_repr": tensor.int_repr()}
    if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        parts[f"{name}.scale"] = torch.tensor([tensor.q_scale()], dtype=torch.float64)
        parts[f"{name}.zero_point"] = torch.tensor([tensor.q_zero_point()], dtype=torch.int64)
    else:
        parts[f"{name}.scale"] = tensor.q_per_channel_scales()
        parts[f"{name}.zero_point"] = tensor.q_per_channel_zero_points()
    return parts


def _flat_tensors(name: str, value: object) -> dict[str, torch.Tensor]:
    """Plain tensors from one state-dict entry; packed tuples are flattened, non-tensors dropped."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return _quantized_parts(name, value) if value.is_quantized else {name: value}
    if isinstance(value, (tuple, list)):
        flat: dict[str, torch.Tensor] = {}
        for index, item in enumerate(value):
            flat.update(_flat_tensors(f"{name}.{index}", item))
        return flat
    return {}  # e.g. the dtype tag of dynamically quantized Linear: metadata, not weights


def _narrow_codes(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Weight-sharing codes (``*.parametrizations.<weight>.<i>.codes``) in the narrowest integer
    type that holds them, as a file of them would: an index into 16 shared values is one byte,
    not the eight of the int64 the model indexes with."""
    if not (name.startswith("parametrizations.") or ".parametrizations." in name) \
            or not name.endswith(".codes") \
            or tensor.is_floating_point() or tensor.numel() == 0:
        return tensor
    low, high = int(tensor.min()), int(tensor.max())
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return tensor.to(dtype)
    return tensor


def _view_key(tensor: torch.Tensor) -> tuple:
    """Identifies a tensor *view*: two names with the same key hold one tensor (tied weights)."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride(), tensor.dtype)


def _savable(state_dict: dict[str, object]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU tensors that share no memory, as ``safetensors`` requires, and the aliases.

    A tensor reachable under several names (an output layer tied to its embedding) is stored
    once, under its first name; ``aliases`` maps each other name to it, so it is counted once,
    as it is held once. Different views of one storage (rare) are stored as copies.
    """
    first_name: dict[tuple, str] = {}
    seen_storage: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, value in state_dict.items():
        for key, tensor in _flat_tensors(name, value).items():
            if tensor.numel() > 0:
                view = _view_key(tensor)
                if view in first_name:
                    aliases[key] = first_name[view]
                    continue
                first_name[view] = key
            storage = tensor.untyped_storage().data_ptr()
            tensor = _narrow_codes(key, tensor.cpu().contiguous())
            if storage in seen_storage and tensor.numel() > 0:
                tensor = tensor.clone()  # another view of a stored tensor: safetensors wants a copy
            seen_storage.add(storage)
            tensors[key] = tensor
    return tensors, aliases


def _raw_tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _raw_tensors(item)]
    return []


def state_tensor_bytes(model: nn.Module) -> int:
    """Bytes of the tensors a model holds: parameters, buffers and packed (quantized) weights.

    Quantized modules keep their weights in packed state-dict entries rather than parameters or
    buffers, so the state dict is walked too; a tensor seen twice (same memory) counts once.
    """
    tensors = [*model.parameters(), *model.buffers()]
    for value in model.state_dict().values():
        tensors += _raw_tensors(value)
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in tensors:
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def artifact_bytes(model: nn.Module) -> int:
    """Bytes of ``model.state_dict()`` written as a safetensors file (header included).

    A tied tensor (one tensor under several names) is written once and counted once; the file's
    metadata maps its other names to it. Counting it per name would make untying a tied
    embedding look like a saving while the model in fact grew.
    """
    tensors, aliases = _savable(model.state_dict())
    metadata = {"aliases": json.dumps(aliases)} if aliases else None
    with tempfile.TemporaryDirectory(prefix="nnzip-size-") as folder:
        path = Path(folder) / "model.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        return path.stat().st_size


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the tensors :func:`artifact_bytes` writes, without the file's header.

    The header (names, shapes, offsets) is a few hundred bytes: on a tiny model it can hide a
    real change of the weights' size, which this figure shows.
    """
    tensors, _ = _savable(model.state_dict())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes of an artifact on disk: a file's size, or the summed sizes of a folder's files."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    raise NnzipError(f"artifact {path} does not exist: pass the path of a saved model file "
                     "or folder")
