"""Canonical Huffman coding of small-alphabet integer streams (codes, index gaps), exactly.

Deep Compression (Han et al. 2016, §4) Huffman-codes the cluster indices and the relative sparse
indices, whose distributions are far from uniform, for another 20–30 % off the packed size.

Hand-written rather than a dependency: the PyPI packages (``dahuffman``, ``huffman``) pickle or
embed their whole code table, encode symbol by symbol in Python and have no length limit. Here the
table is *canonical*, so only one code length per symbol is stored (5 bits each), code lengths are
limited to :data:`MAX_CODE_BITS` so the decoder can use a single lookup table, and encoding is
vectorized with numpy.
"""

from __future__ import annotations

import heapq

import numpy as np

from nnzip.codec.bitpack import pack_bits, packed_bytes, unpack_bits
from nnzip.errors import NnzipError

#: Longest code allowed: the decoder's lookup table has 2^MAX_CODE_BITS entries.
MAX_CODE_BITS = 16
_LENGTH_BITS = 5  # a code length 0..16 is stored in 5 bits


def code_lengths(counts: np.ndarray, limit: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code length of every symbol (0 for symbols that never occur), at most ``limit``.

    Lengths come from the usual merge of the two rarest subtrees; if the longest exceeds
    ``limit``, the counts are flattened (halved, kept ≥ 1) and the tree rebuilt, which converges
    to a balanced code of ⌈log2 n⌉ bits at worst.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1  # one symbol still needs one bit per occurrence to be counted
        return lengths
    if used.size > 2**limit:
        raise NnzipError(f"{used.size} distinct symbols cannot have Huffman codes of at most "
                         f"{limit} bits")
    weights = counts[used].copy()
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= limit:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights >> 1, 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    heap = [(int(w), index, [index]) for index, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = np.zeros(weights.size, dtype=np.int64)
    tiebreak = weights.size
    while len(heap) > 1:
        w1, _, left = heapq.heappop(heap)
        w2, _, right = heapq.heappop(heap)
        merged = left + right
        depth[merged] += 1
        heapq.heappush(heap, (w1 + w2, tiebreak, merged))
        tiebreak += 1
    return depth


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol: ordered by (length, symbol), consecutive integers."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    code, previous = 0, 0
    for symbol in order:
        length = int(lengths[symbol])
        code <<= length - previous
        codes[symbol] = code
        code += 1
        previous = length
    return codes


def _bits_of(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate each code's ``length`` bits, most significant first, as a 0/1 array."""
    total = int(lengths.sum())
    owner = np.repeat(np.arange(codes.size), lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(total) - np.repeat(starts, lengths)
    return ((codes[owner] >> (lengths[owner] - 1 - position)) & 1).astype(np.uint8)


def huffman_encode(symbols: np.ndarray) -> bytes:
    """``symbols`` (non-negative ints < 2^16) → table (5-bit lengths) + bitstream, as bytes.

    Layout: alphabet size (uint32), the code lengths bit-packed at 5 bits, then the codes. The
    symbol count is not stored: the caller knows it (it is in the tensor's record).
    """
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= 2**16):
        raise NnzipError("Huffman coding takes symbols from 0 to 65535")
    alphabet = int(symbols.max()) + 1 if symbols.size else 0
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    codes = canonical_codes(lengths)
    table = pack_bits(_as_tensor(lengths), _LENGTH_BITS).numpy().tobytes()
    stream = np.packbits(_bits_of(codes[symbols], lengths[symbols])).tobytes()
    return np.uint32(alphabet).tobytes() + table + stream


def huffman_decode(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`huffman_encode`: ``count`` int64 symbols."""
    if len(data) < 4:
        raise NnzipError("Huffman stream is truncated: corrupt data")
    alphabet = int(np.frombuffer(data[:4], dtype=np.uint32)[0])
    table_bytes = packed_bytes(alphabet, _LENGTH_BITS)
    if alphabet > 2**16 or len(data) < 4 + table_bytes:
        raise NnzipError("Huffman table is truncated or invalid: corrupt data")
    lengths = unpack_bits(_as_tensor(np.frombuffer(data[4:4 + table_bytes], dtype=np.uint8)),
                          _LENGTH_BITS, alphabet).numpy()
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.max(initial=0) > MAX_CODE_BITS or not lengths.any() or \
            np.sum(2.0 ** -lengths[lengths > 0]) > 1.0 + 1e-12:
        raise NnzipError("Huffman code lengths are invalid: corrupt data")
    bits = np.unpackbits(np.frombuffer(data[4 + table_bytes:], dtype=np.uint8))
    # Every bit position's next MAX_CODE_BITS bits as one integer: one table lookup per symbol.
    padded = np.concatenate([bits, np.zeros(MAX_CODE_BITS, dtype=np.uint8)]).astype(np.int64)
    windows = np.zeros(bits.size, dtype=np.int64)
    for offset in range(MAX_CODE_BITS):
        windows = (windows << 1) | padded[offset:offset + bits.size]
    lookup_symbol, lookup_length = _lookup_table(lengths)
    window_list = windows.tolist()
    symbol_of, length_of = lookup_symbol.tolist(), lookup_length.tolist()
    out = np.empty(count, dtype=np.int64)
    position, end = 0, bits.size
    for index in range(count):
        if position >= end:
            raise NnzipError("Huffman stream ends early: corrupt data")
        window = window_list[position]
        length = length_of[window]
        if length == 0:
            raise NnzipError("Huffman stream holds an invalid code: corrupt data")
        out[index] = symbol_of[window]
        position += length
    if position > end:
        raise NnzipError("Huffman stream ends early: corrupt data")
    return out


def _lookup_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every MAX_CODE_BITS-bit window: the symbol whose code prefixes it, and its length."""
    codes = canonical_codes(lengths)
    symbol = np.zeros(2**MAX_CODE_BITS, dtype=np.int64)
    length = np.zeros(2**MAX_CODE_BITS, dtype=np.int64)
    for s in np.flatnonzero(lengths):
        shift = MAX_CODE_BITS - int(lengths[s])
        start = int(codes[s]) << shift
        symbol[start:start + (1 << shift)] = s
        length[start:start + (1 << shift)] = lengths[s]
    return symbol, length


def _as_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.array(array, copy=True))
