import pytest
import torch

from nnzip.codec import pack_bits, packed_bytes, unpack_bits
from nnzip.errors import NnzipError


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 12, 16])
@pytest.mark.parametrize("count", [0, 1, 7, 1000])
def test_round_trip_is_exact_and_takes_ceil_n_b_over_8_bytes(bits, count):
    generator = torch.Generator().manual_seed(bits * 1000 + count)
    low = -(2 ** (bits - 1))
    values = torch.randint(low, low + 2**bits, (count,), generator=generator)
    packed = pack_bits(values, bits, low)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(count, bits)
    assert torch.equal(unpack_bits(packed, bits, count, low), values)


def test_four_bits_take_half_the_bytes_of_int8():
    values = torch.randint(-8, 8, (4096,))
    assert pack_bits(values, 4, -8).numel() == 2048


def test_values_that_do_not_fit_and_wrong_lengths_are_clear_errors():
    with pytest.raises(NnzipError, match=r"outside \[-8, 7\] do not fit in 4 bits"):
        pack_bits(torch.tensor([8]), 4, -8)
    with pytest.raises(NnzipError, match="corrupt data"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 10)
    with pytest.raises(NnzipError, match="from 1 to 16"):
        pack_bits(torch.tensor([1]), 0)
