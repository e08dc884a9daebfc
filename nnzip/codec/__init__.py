"""On-disk encodings: bit packing, sparse indices, codebooks, Huffman coding, the .nnz file."""

from nnzip.codec.bitpack import pack_bits, packed_bytes, unpack_bits
from nnzip.codec.huffman import huffman_decode, huffman_encode
from nnzip.codec.nnz import (
    FORMAT_VERSION,
    decode_tensors,
    encode_tensors,
    is_nnz,
    load_nnz,
    nnz_bytes,
    save_nnz,
)
from nnzip.codec.tensors import Coded, Integer, decode_tensor, encode_tensor

__all__ = ["FORMAT_VERSION", "Coded", "Integer", "decode_tensor", "decode_tensors",
           "encode_tensor", "encode_tensors", "huffman_decode", "huffman_encode", "is_nnz",
           "load_nnz", "nnz_bytes", "pack_bits", "packed_bytes", "save_nnz", "unpack_bits"]
