import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnzip.codec.huffman import (
    MAX_CODE_BITS,
    canonical_codes,
    code_lengths,
    huffman_decode,
    huffman_encode,
)
from nnzip.errors import NnzipError


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=400))
def test_any_symbol_stream_round_trips_exactly(symbols):
    data = huffman_encode(np.array(symbols, dtype=np.int64))
    assert huffman_decode(data, len(symbols)).tolist() == symbols


def test_skewed_streams_shrink_below_fixed_width():
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.5, size=20_000) - 1  # mostly 0s and 1s
    symbols = np.minimum(symbols, 31)
    assert len(huffman_encode(symbols)) < 20_000 * 5 / 8 * 0.5


def test_code_lengths_are_capped_and_satisfy_kraft():
    counts = np.array([2**i for i in range(40)])  # a Fibonacci-like skew: unlimited depth 39
    lengths = code_lengths(counts)
    assert lengths.max() <= MAX_CODE_BITS
    assert np.sum(2.0 ** -lengths) <= 1.0


def test_canonical_codes_are_prefix_free():
    lengths = code_lengths(np.array([50, 20, 20, 5, 3, 1, 1]))
    codes = canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_single_symbol_and_truncated_streams():
    data = huffman_encode(np.zeros(10, dtype=np.int64))
    assert huffman_decode(data, 10).tolist() == [0] * 10
    with pytest.raises(NnzipError, match="corrupt"):
        huffman_decode(huffman_encode(np.arange(50) % 7)[:-3], 50)
    with pytest.raises(NnzipError, match="corrupt"):
        huffman_decode(b"\x01", 3)
