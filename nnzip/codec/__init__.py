"""On-disk encodings: bit packing (the .nnz container, sparse indices, Huffman: issue 6)."""

from nnzip.codec.bitpack import pack_bits, packed_bytes, unpack_bits

__all__ = ["pack_bits", "packed_bytes", "unpack_bits"]
