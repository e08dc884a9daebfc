"""Per-tensor encodings of the .nnz file, each exactly invertible.

- ``dense``: every value, raw (float16 when that is lossless) or, for integer tensors, bit-packed.
- ``sparse``: the non-zero values and where they are. Positions are either *relative* indices —
  the gap since the previous entry in ``index_bits`` bits, with a filler zero entry whenever a gap
  does not fit (Deep Compression, Han et al. 2016, §2: 8 bits for conv, 5 for fc) — or CSR
  (entries per row + column indices). Every index width 2–8 and CSR are tried; the smallest wins.
- ``codes``: weight sharing. A codebook of k entries (scalars, or d-vectors for product
  quantization) and one ⌈log2 k⌉-bit code per entry; a pruned layer stores the codes of its
  non-zeros in sparse form, fillers taking the code of the exact-zero codebook entry.
- ``integer``: integer-quantized weights, bit-packed, with their scales and zero points.

Integer streams (codes, gaps) can be Huffman-coded when that is smaller (``huffman=True``).
Every value survives bit for bit (NaN payloads included), except that a −0.0 dropped by the sparse
form comes back as +0.0 (equal as a number, and in every product and sum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nnzip.codec.streams import (
    Stream,
    dtype_name,
    dtype_of,
    int_stream,
    raw_stream,
    read_ints,
    read_raw,
)
from nnzip.errors import NnzipError

INDEX_BITS = range(2, 9)


@dataclass(frozen=True)
class Coded:
    """A weight-shared tensor: ``codebook[codes]`` reshaped to ``shape`` is the tensor."""

    codebook: torch.Tensor  # (k,) or (k, d)
    codes: torch.Tensor  # integer, (n,) with n·d = numel
    bits: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Integer:
    """An integer-quantized tensor: ``(values − zero_point) · scale`` (broadcast) in float32.

    ``values`` lie in ``[low, low + 2^bits − 1]``; ``scheme`` is free JSON metadata.
    """

    values: torch.Tensor
    bits: int
    low: int
    scale: torch.Tensor
    zero_point: torch.Tensor
    scheme: dict
    #: The shape the scale broadcasts against (e.g. (out, in·kh·kw) for a conv), if not its own.
    view: tuple[int, ...] | None = None

    def dequantize(self) -> torch.Tensor:
        values = self.values if self.view is None else self.values.reshape(self.view)
        return ((values.to(torch.float32) - self.zero_point) * self.scale) \
            .reshape(self.values.shape)


def _nonzero_mask(values: torch.Tensor) -> np.ndarray:
    """True where a value is not zero; NaN is kept, and −0.0 counts as zero.

    Pruning by multiplying with a mask leaves −0.0 for about half the pruned weights; keeping
    their sign would cost an index per pruned weight. The sparse form therefore stores them as
    +0.0, which compares equal and multiplies to the same sums; every other bit is preserved.
    """
    flat = values.detach().reshape(-1).cpu()
    return (flat != 0).numpy().copy()


# -- positions -------------------------------------------------------------------------------
def relative_entries(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, is_filler) of the relative-index stream for sorted ``positions``.

    Each entry skips ``gap`` zeros and then holds a value; a gap wider than ``2^b − 1`` is split
    by filler entries that skip ``2^b − 1`` zeros and hold an (explicit) zero.
    """
    span = 1 << index_bits
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // span
    owner = np.repeat(np.arange(gaps.size), fillers + 1)
    starts = np.cumsum(fillers + 1) - (fillers + 1)
    rank = np.arange(owner.size) - starts[owner]
    is_filler = rank < fillers[owner]
    stream_gaps = np.where(is_filler, span - 1, gaps[owner] - fillers[owner] * span)
    return stream_gaps.astype(np.int64), is_filler


def relative_positions(gaps: np.ndarray) -> np.ndarray:
    return np.cumsum(gaps + 1) - 1


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def _position_options(positions: np.ndarray, shape: tuple[int, ...], huffman: bool
                      ) -> list[tuple[dict, list[Stream], np.ndarray | None]]:
    """Every way to store ``positions``: (index meta, streams, filler flags or None for CSR)."""
    options = []
    for bits in INDEX_BITS:
        gaps, is_filler = relative_entries(positions, bits)
        options.append(({"index": "relative", "index_bits": bits},
                        [int_stream(gaps, bits=bits, huffman=huffman)], is_filler))
    rows, cols = _rows_cols(shape)
    row_counts = np.bincount(positions // max(cols, 1), minlength=rows) if rows else \
        np.zeros(0, dtype=np.int64)
    column_bits = max(1, (max(cols, 1) - 1).bit_length())
    if column_bits <= 16 and (row_counts.size == 0 or row_counts.max() < 2**16):
        options.append(({"index": "csr"},
                        [int_stream(row_counts, huffman=huffman),
                         int_stream(positions % max(cols, 1), bits=column_bits,
                                    huffman=huffman)], None))
    return options


def _decode_positions(record: dict, streams: list[tuple[dict, bytes]], numel: int
                      ) -> tuple[np.ndarray, int]:
    """(positions of all entries, number of streams used)."""
    if record.get("index") == "relative":
        positions = relative_positions(read_ints(*streams[0]))
        used = 1
    elif record.get("index") == "csr":
        rows, cols = _rows_cols(tuple(record["shape"]))
        counts = read_ints(*streams[0])
        columns = read_ints(*streams[1])
        if counts.size != rows or counts.sum() != columns.size:
            raise NnzipError("CSR row counts do not match the column indices: corrupt data")
        positions = np.repeat(np.arange(rows), counts) * cols + columns
        used = 2
    else:
        raise NnzipError(f"unknown sparse index {record.get('index')!r}: corrupt data")
    if positions.size and (positions.min() < 0 or positions.max() >= numel
                           or np.any(np.diff(positions) <= 0)):
        raise NnzipError("sparse positions fall outside the tensor: corrupt data")
    return positions, used


def _size(streams: list[Stream]) -> int:
    return sum(len(data) for _, data in streams)


# -- encode ----------------------------------------------------------------------------------
def encode_tensor(name: str, value: torch.Tensor | Coded | Integer, *, huffman: bool = False,
                  allow_sparse: bool = True) -> tuple[dict, list[Stream]]:
    """The smallest record for one tensor: (JSON record without stream metas, streams)."""
    if isinstance(value, Coded):
        return _encode_coded(name, value, huffman, allow_sparse)
    if isinstance(value, Integer):
        return _encode_integer(name, value, huffman)
    return _encode_plain(name, value.detach().cpu(), huffman, allow_sparse)


def _base(name: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, encoding: str
          ) -> dict:
    return {"name": name, "shape": list(shape), "dtype": dtype_name(dtype), "encoding": encoding}


def _dense_streams(tensor: torch.Tensor, huffman: bool) -> list[Stream]:
    is_int = not tensor.dtype.is_floating_point and tensor.dtype != torch.bool
    if is_int and tensor.numel():
        span = int(tensor.max()) - int(tensor.min())
        if span < 2**16:
            packed = int_stream(tensor.reshape(-1).to(torch.int64).numpy(), huffman=huffman)
            raw = raw_stream(tensor)
            return [packed] if len(packed[1]) < len(raw[1]) else [raw]
    return [raw_stream(tensor)]


def _encode_plain(name: str, tensor: torch.Tensor, huffman: bool, allow_sparse: bool
                  ) -> tuple[dict, list[Stream]]:
    best = (_base(name, tensor.shape, tensor.dtype, "dense"), _dense_streams(tensor, huffman))
    keep = _nonzero_mask(tensor)
    if not allow_sparse or keep.all() or not tensor.numel():
        return best
    positions = np.flatnonzero(keep)
    flat = tensor.reshape(-1)
    for index_meta, position_streams, is_filler in _position_options(positions, tensor.shape,
                                                                     huffman):
        if is_filler is None:
            entries = flat[torch.from_numpy(positions)]
        else:
            entries = torch.zeros(is_filler.size, dtype=tensor.dtype)
            entries[torch.from_numpy(~is_filler)] = flat[torch.from_numpy(positions)]
        streams = [*position_streams, *_dense_streams(entries, huffman)]
        if _size(streams) < _size(best[1]):
            best = ({**_base(name, tensor.shape, tensor.dtype, "sparse"), **index_meta}, streams)
    return best


def _encode_coded(name: str, coded: Coded, huffman: bool, allow_sparse: bool
                  ) -> tuple[dict, list[Stream]]:
    codebook = coded.codebook.detach().cpu()
    codes = coded.codes.detach().reshape(-1).cpu().to(torch.int64)
    k = codebook.shape[0]
    if not 1 <= coded.bits <= 16 or k > 2**coded.bits:
        raise NnzipError(f"{name}: a codebook of {k} entries does not fit in {coded.bits} bits")
    if codes.numel() and (codes.min() < 0 or codes.max() >= k):
        raise NnzipError(f"{name}: codes index outside the codebook of {k} entries")
    if codes.numel() * math.prod(codebook.shape[1:]) != math.prod(coded.shape):
        raise NnzipError(f"{name}: {codes.numel()} codes of {tuple(codebook.shape[1:])} vectors "
                         f"do not make a tensor of shape {tuple(coded.shape)}")
    base = {**_base(name, tuple(coded.shape), codebook.dtype, "codes"),
            "codebook_shape": list(codebook.shape), "bits": coded.bits}
    codebook, codes = _used_entries(codebook, codes)
    k = codebook.shape[0]
    base["codebook_shape"] = list(codebook.shape)
    book = raw_stream(codebook)
    best = (dict(base), [book, int_stream(codes.numpy(), bits=coded.bits, huffman=huffman)])
    zero_rows = (~torch.from_numpy(_nonzero_mask(codebook.reshape(k, -1)).reshape(k, -1)
                                   .any(axis=1))).nonzero().reshape(-1) if k else []
    if allow_sparse and len(zero_rows):
        zero_code = int(zero_rows[0])
        positions = np.flatnonzero(codes.numpy() != zero_code)
        for index_meta, position_streams, is_filler in _position_options(
                positions, (codes.numel(),), huffman):
            if is_filler is None:
                continue  # codes are a flat stream: relative indices are the natural fit
            entries = np.full(is_filler.size, zero_code, dtype=np.int64)
            entries[~is_filler] = codes.numpy()[positions]
            streams = [book, *position_streams,
                       int_stream(entries, bits=coded.bits, huffman=huffman)]
            if _size(streams) < _size(best[1]):
                best = ({**base, "zero_code": zero_code, **index_meta}, streams)
    return best


def _used_entries(codebook: torch.Tensor, codes: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop codebook entries no code uses (codes renumbered; the decoded tensor is the same).

    k-means on a small or pruned layer leaves many clusters empty: an 8-bit codebook for a
    300-weight layer would otherwise cost more than the codes. An all-zero entry is kept: it is
    the filler of the sparse form.
    """
    k = codebook.shape[0]
    used = torch.zeros(k, dtype=torch.bool)
    used[codes] = True
    flat = codebook.reshape(k, -1)
    used |= ~torch.from_numpy(_nonzero_mask(flat).reshape(k, -1).any(axis=1)) if k else used
    if bool(used.all()):
        return codebook, codes
    renumber = torch.cumsum(used, 0) - 1
    return codebook[used], renumber[codes]


def _encode_integer(name: str, value: Integer, huffman: bool) -> tuple[dict, list[Stream]]:
    values = value.values.detach().cpu()
    record = {**_base(name, values.shape, torch.float32, "integer"), "bits": value.bits,
              "low": value.low, "scale_shape": list(value.scale.shape),
              "zero_point_shape": list(value.zero_point.shape),
              "zero_point_dtype": dtype_name(value.zero_point.dtype), "scheme": value.scheme,
              "view": None if value.view is None else list(value.view)}
    high = value.low + 2**value.bits - 1
    if values.numel() and (int(values.min()) < value.low or int(values.max()) > high):
        raise NnzipError(f"{name}: integer weights outside [{value.low}, {high}]")
    ints = values.reshape(-1).to(torch.int64).numpy()
    stream = int_stream(ints - value.low, bits=value.bits, huffman=huffman)
    return record, [stream, raw_stream(value.scale.float(), shrink_floats=False),
                    raw_stream(value.zero_point)]


# -- decode ----------------------------------------------------------------------------------
#: Elements a file may decode to without any payload (all-zero sparse tensors), and per payload
#: byte beyond that: an 8-bit relative index skips up to 256 zeros per entry and Huffman codes
#: an entry in one bit, so a genuine file stays far below 1024 elements per byte, while a forged
#: header claiming 5·10⁸ elements in 31 KB is refused before anything is allocated.
FREE_ELEMENTS = 1 << 24
ELEMENTS_PER_PAYLOAD_BYTE = 1024


def record_numel(record: object) -> int:
    """The element count a record's shape declares, checked to be a list of non-negative ints."""
    shape = record.get("shape") if isinstance(record, dict) else None
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        name = record.get("name") if isinstance(record, dict) else None
        raise NnzipError(f"record {name!r} has an invalid shape: corrupt data")
    return math.prod(shape)


def check_decoded_sizes(records: list, payload_bytes: int) -> None:
    """Refuse, before decoding anything, records whose shapes declare more elements than
    ``payload_bytes`` of streams could describe (see :data:`ELEMENTS_PER_PAYLOAD_BYTE`)."""
    total = sum(record_numel(record) for record in records)
    allowed = FREE_ELEMENTS + ELEMENTS_PER_PAYLOAD_BYTE * payload_bytes
    if total > allowed:
        raise NnzipError(f"its records declare {total:,} elements, more than {payload_bytes:,} "
                         f"bytes of data can hold (at most {allowed:,}): corrupt or forged data")


def decode_tensor(record: dict, streams: list[tuple[dict, bytes]]) -> torch.Tensor | Integer:
    """Inverse of :func:`encode_tensor` (an ``integer`` record comes back as :class:`Integer`)."""
    numel = record_numel(record)
    shape = tuple(record["shape"])
    encoding = record.get("encoding")
    dtype = dtype_of(record.get("dtype"))
    if encoding == "dense":
        return _read_dense(streams[0], dtype).reshape(shape)
    if encoding == "sparse":
        positions, used = _decode_positions(record, streams, numel)
        entries = _read_dense(streams[used], dtype)
        if entries.numel() != positions.size:
            raise NnzipError("sparse values do not match their positions: corrupt data")
        out = torch.zeros(numel, dtype=dtype)
        out[torch.from_numpy(positions)] = entries
        return out.reshape(shape)
    if encoding == "codes":
        return _decode_coded(record, streams, dtype, numel).reshape(shape)
    if encoding == "integer":
        ints = read_ints(*streams[0]) + int(record["low"])
        scale = read_raw(*streams[1], torch.float32).reshape(record["scale_shape"])
        zero_point = read_raw(*streams[2], dtype_of(record["zero_point_dtype"])) \
            .reshape(record["zero_point_shape"])
        if ints.size != numel:
            raise NnzipError("integer weights have the wrong count: corrupt data")
        view = _integer_view(record, shape, scale.shape, zero_point.shape)
        bits = record.get("bits")
        if not isinstance(bits, int) or not 1 <= bits <= 16:
            raise NnzipError(f"integer record with {bits!r} bits: corrupt data")
        return Integer(torch.from_numpy(ints).reshape(shape), bits, int(record["low"]), scale,
                       zero_point, dict(record["scheme"]), view)
    raise NnzipError(f"unknown tensor encoding {encoding!r}: corrupt data or a newer format")


def _integer_view(record: dict, shape: tuple[int, ...], scale_shape: torch.Size,
                  zero_point_shape: torch.Size) -> tuple[int, ...] | None:
    """The record's ``view``, checked now so that :meth:`Integer.dequantize` cannot fail later:
    it holds the tensor's elements, and the scale and zero point broadcast against it."""
    view = record.get("view")
    numel = math.prod(shape)
    target = tuple(shape)
    if view is not None:  # a reshape target, with at most one -1 (as torch.reshape takes it)
        known = [d for d in view if d != -1] if isinstance(view, list) else [None]
        valid = all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in known) \
            and len(view) - len(known) <= 1
        if valid and len(known) < len(view):
            rest = math.prod(known)
            valid = rest > 0 and numel % rest == 0
            target = tuple(numel // rest if d == -1 else d for d in view) if valid else target
        elif valid:
            valid, target = math.prod(view) == numel, tuple(view)
        if not valid:
            raise NnzipError(f"integer record {record.get('name')!r} has an invalid view: "
                             "corrupt data")
    try:
        fits = torch.broadcast_shapes(target, scale_shape, zero_point_shape) == target
    except RuntimeError:
        fits = False
    if not fits:
        raise NnzipError(f"integer record {record.get('name')!r}: its scale "
                         f"{tuple(scale_shape)} or zero point {tuple(zero_point_shape)} does not "
                         f"broadcast over {target}: corrupt data")
    return None if view is None else tuple(view)


def _read_dense(stream: tuple[dict, bytes], dtype: torch.dtype) -> torch.Tensor:
    meta, data = stream
    if meta.get("coding") == "raw":
        return read_raw(meta, data, dtype)
    return torch.from_numpy(read_ints(meta, data)).to(dtype)


def _decode_coded(record: dict, streams: list[tuple[dict, bytes]], dtype: torch.dtype,
                  numel: int) -> torch.Tensor:
    book_shape = tuple(record["codebook_shape"])
    codebook = read_raw(*streams[0], dtype).reshape(book_shape)
    vector = max(1, math.prod(book_shape[1:]))
    count = numel // vector
    if "zero_code" in record:
        positions, used = _decode_positions(record, streams[1:], count)
        entries = read_ints(*streams[1 + used])
        if entries.size != positions.size:
            raise NnzipError("sparse codes do not match their positions: corrupt data")
        codes = np.full(count, int(record["zero_code"]), dtype=np.int64)
        codes[positions] = entries
    else:
        codes = read_ints(*streams[1])
    if codes.size != count or (codes.size and (codes.min() < 0
                                               or codes.max() >= book_shape[0])):
        raise NnzipError("codes do not index the codebook: corrupt data")
    return codebook[torch.from_numpy(codes)].reshape(-1)
