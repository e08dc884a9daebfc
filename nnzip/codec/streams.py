"""Streams: the byte runs a tensor record is made of (raw floats, bit-packed or Huffman ints).

Each stream is described by a small JSON dict (its coding, element count, byte length) kept in the
.nnz header, so the payload holds nothing but data.
"""

from __future__ import annotations

import numpy as np
import torch

from nnzip.codec.bitpack import pack_bits, packed_bytes, unpack_bits
from nnzip.codec.huffman import huffman_decode, huffman_encode
from nnzip.errors import NnzipError

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

Stream = tuple[dict, bytes]


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise NnzipError(f"tensors of dtype {dtype} cannot be stored in an .nnz file: use one of "
                         f"{', '.join(DTYPES)}")
    return DTYPE_NAMES[dtype]


def dtype_of(name: object) -> torch.dtype:
    if name not in DTYPES:
        raise NnzipError(f"unknown dtype {name!r} in the file: corrupt data or a newer format")
    return DTYPES[name]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def raw_stream(values: torch.Tensor, shrink_floats: bool = True) -> Stream:
    """Values in their own dtype, or in float16 when that keeps every bit (lossless only)."""
    values = values.detach().reshape(-1).cpu().contiguous()
    stored = values
    if shrink_floats and values.dtype in (torch.float32, torch.float64) and values.numel():
        half = values.to(torch.float16)
        if _same_bits(half.to(values.dtype), values):
            stored = half
    data = stored.view(torch.uint8).numpy().tobytes() if stored.numel() else b""
    return {"coding": "raw", "dtype": dtype_name(stored.dtype), "count": values.numel(),
            "nbytes": len(data)}, data


def int_stream(values: np.ndarray | torch.Tensor, *, bits: int | None = None,
               huffman: bool = False) -> Stream:
    """Integers bit-packed at ``bits`` (default: the fewest that hold their range), or
    Huffman-coded when ``huffman`` is set and that is smaller."""
    values = torch.as_tensor(np.asarray(values, dtype=np.int64)).reshape(-1)
    count = values.numel()
    low = int(values.min()) if count else 0
    high = int(values.max()) if count else 0
    if bits is None:
        bits = max(1, (high - low).bit_length())
        if low >= 0 and high < 2**bits:
            low = 0  # non-negative data: no offset needed at the same width
    else:
        low = min(low, 0)
    if bits > 16:
        raise NnzipError(f"integers spanning {high - low + 1} values need {bits} bits; at most "
                         "16 can be packed")
    data = pack_bits(values, bits, low).numpy().tobytes()
    meta = {"coding": "packed", "bits": bits, "low": low, "count": count, "nbytes": len(data)}
    if huffman and count and low >= 0 and high < 2**16:
        coded = huffman_encode(values.numpy())
        if len(coded) < len(data):
            return {"coding": "huffman", "count": count, "nbytes": len(coded)}, coded
    return meta, data


def _count(meta: dict) -> int:
    count = meta.get("count")
    if not isinstance(count, int) or count < 0:
        raise NnzipError("stream without a valid element count: corrupt data")
    return count


def read_ints(meta: dict, data: bytes) -> np.ndarray:
    """The int64 values of an int stream."""
    count = _count(meta)
    if meta.get("coding") == "packed":
        bits, low = meta.get("bits"), meta.get("low")
        if not isinstance(bits, int) or not isinstance(low, int):
            raise NnzipError("packed stream without bits/low: corrupt data")
        packed = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
            torch.zeros(0, dtype=torch.uint8)
        if packed.numel() != packed_bytes(count, bits):
            raise NnzipError("packed stream has the wrong length: corrupt data")
        return unpack_bits(packed, bits, count, low).numpy()
    if meta.get("coding") == "huffman":
        if count > 8 * len(data):  # every Huffman code is at least one bit long
            raise NnzipError(f"Huffman stream of {len(data)} bytes cannot hold {count} values: "
                             "corrupt data")
        return huffman_decode(data, count)
    raise NnzipError(f"unknown integer stream coding {meta.get('coding')!r}: corrupt data")


def read_raw(meta: dict, data: bytes, dtype: torch.dtype) -> torch.Tensor:
    """The values of a raw stream, converted (losslessly) to ``dtype``."""
    count = _count(meta)
    if meta.get("coding") != "raw":
        raise NnzipError(f"expected a raw stream, found {meta.get('coding')!r}: corrupt data")
    stored = dtype_of(meta.get("dtype"))
    itemsize = torch.empty(0, dtype=stored).element_size()
    if len(data) != count * itemsize:
        raise NnzipError("raw stream has the wrong length: corrupt data")
    if count == 0:
        return torch.zeros(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(stored).to(dtype)
