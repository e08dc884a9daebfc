"""On-disk encodings: bit packing, sparse indices, codebooks, Huffman coding, the .nnz container
and ``torch.export`` programs as JSON. The codec knows tensors, codebooks and programs, not the
methods that made them: models become .nnz files in :mod:`nnzip.models.nnz`."""

from nnzip.codec.bitpack import pack_bits, packed_bytes, unpack_bits
from nnzip.codec.huffman import huffman_decode, huffman_encode
from nnzip.codec.nnz import (
    FORMAT_VERSION,
    NnzFile,
    decode_tensors,
    encode_tensors,
    is_nnz,
    read_nnz,
)
from nnzip.codec.tensors import Coded, Integer, decode_tensor, encode_tensor

__all__ = ["FORMAT_VERSION", "Coded", "Integer", "NnzFile", "decode_tensor", "decode_tensors",
           "encode_tensor", "encode_tensors", "huffman_decode", "huffman_encode", "is_nnz",
           "pack_bits", "packed_bytes", "read_nnz", "unpack_bits"]


def __getattr__(name: str):
    from nnzip.codec import nnz

    return getattr(nnz, name)  # a moved name (save_nnz, load_nnz...) says where it went
