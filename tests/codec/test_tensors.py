"""Every tensor encoding round-trips bit for bit (property-based, with hypothesis)."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnzip.codec.nnz import decode_tensors, encode_tensors
from nnzip.codec.tensors import Coded, relative_entries, relative_positions

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INT_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]

shapes = st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, except that the sparse form may turn −0.0 into +0.0 (still equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nonzero = (b != 0).reshape(-1)
    a_flat, b_flat = a.reshape(-1), b.reshape(-1)
    size = a.element_size()
    a_bits = a_flat[nonzero].view(torch.uint8).reshape(-1, size)
    b_bits = b_flat[nonzero].view(torch.uint8).reshape(-1, size)
    return torch.equal(a_bits, b_bits) and bool((a_flat[~nonzero] == 0).all())


def _round_trip(tensors: dict, huffman: bool) -> dict:
    return decode_tensors(encode_tensors(tensors, {}, huffman=huffman)).tensors


@st.composite
def tensors(draw):
    shape = draw(shapes)
    dtype = draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES + [torch.bool]))
    density = draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    numel = math.prod(shape)
    if dtype.is_floating_point:
        values = torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype)
        if draw(st.booleans()):  # values an fp16 stream holds exactly
            values = values.to(torch.float16).to(dtype)
    elif dtype == torch.bool:
        values = torch.ones(numel, dtype=torch.bool)
    else:
        info = torch.iinfo(dtype)
        span = draw(st.sampled_from([3, 300, 70_000]))
        low = max(info.min, -span)
        high = min(info.max, span)
        values = torch.randint(low, high + 1, (numel,), generator=generator).to(dtype)
    keep = torch.rand(numel, generator=generator) < density
    values = torch.where(keep, values, torch.zeros((), dtype=dtype))
    if dtype.is_floating_point and numel and draw(st.booleans()):
        values[0] = -0.0  # may come back as +0.0 (equal), see nnzip.codec.tensors
    return values.reshape(shape)


@settings(max_examples=150, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=4), st.booleans())
def test_dense_and_sparse_tensors_round_trip_bit_for_bit(values, huffman):
    named = {f"t{index}": value for index, value in enumerate(values)}
    decoded = _round_trip(named, huffman)
    assert list(decoded) == list(named)
    for name, value in named.items():
        assert _same_bits(decoded[name], value), name


@settings(max_examples=120, deadline=None)
@given(rows=st.integers(1, 40), columns=st.integers(1, 40), bits=st.integers(1, 10),
       vector=st.sampled_from([1, 2, 4]), zero=st.booleans(), sparsity=st.sampled_from(
           [0.0, 0.5, 0.97]), huffman=st.booleans(), half=st.booleans(),
       seed=st.integers(0, 2**31))
def test_coded_tensors_round_trip_to_codebook_of_codes(rows, columns, bits, vector, zero,
                                                       sparsity, huffman, half, seed):
    generator = torch.Generator().manual_seed(seed)
    columns *= vector
    k = 2**bits
    codebook = torch.randn((k, vector) if vector > 1 else (k,), generator=generator)
    if half:
        codebook = codebook.half().float()
    if zero:
        codebook[0] = 0.0
    codes = torch.randint(0, k, (rows * columns // vector,), generator=generator)
    codes[torch.rand(codes.numel(), generator=generator) < sparsity] = 0
    coded = Coded(codebook=codebook, codes=codes, bits=bits, shape=(rows, columns))
    decoded = _round_trip({"w": coded}, huffman)["w"]
    assert _same_bits(decoded, codebook[codes].reshape(rows, columns))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3000), max_size=200, unique=True), st.integers(2, 8))
def test_relative_indices_with_fillers_give_back_the_positions(positions, bits):
    positions = np.array(sorted(positions), dtype=np.int64)
    gaps, is_filler = relative_entries(positions, bits)
    assert gaps.max(initial=0) < 2**bits
    assert relative_positions(gaps)[~is_filler].tolist() == positions.tolist()


def test_sparse_storage_is_smaller_than_dense_for_a_pruned_weight():
    weight = torch.randn(300, 784)
    weight[torch.rand(weight.shape) < 0.95] = 0
    data = encode_tensors({"w": weight}, {}, huffman=False)
    assert len(data) < weight.numel() * 4 * 0.05 * 1.6  # values + ~5-bit indices + header
    assert decode_tensors(data).header["records"][0]["encoding"] == "sparse"


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 20), columns=st.integers(1, 30), bits=st.integers(2, 8),
       huffman=st.booleans(), seed=st.integers(0, 2**31))
def test_integer_weights_with_per_channel_scales_round_trip(rows, columns, bits, huffman, seed):
    from nnzip.codec.tensors import Integer

    generator = torch.Generator().manual_seed(seed)
    low = -(2 ** (bits - 1)) + 1
    values = torch.randint(low, -low + 1, (rows, columns), generator=generator)
    scale = torch.rand(rows, 1, generator=generator) + 1e-3
    zero_point = torch.zeros(rows, 1, dtype=torch.int32)
    integer = Integer(values=values, bits=bits, low=low, scale=scale, zero_point=zero_point,
                      scheme={"bits": bits, "granularity": "channel"})
    decoded = _round_trip({"w": integer}, huffman)["w"]
    assert torch.equal(decoded.values, values) and torch.equal(decoded.scale, scale)
    assert torch.equal(decoded.zero_point, zero_point) and decoded.scheme == integer.scheme
