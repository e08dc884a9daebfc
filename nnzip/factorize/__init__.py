"""Low-rank factorization: truncated SVD of Linear layers and Tucker-2 of convolutions.

Both replace a layer by an ``nn.Sequential`` of standard layers, so every later stage
(pruning, quantization, export) sees ordinary Conv/Linear modules.
"""

from nnzip.factorize.svd import (
    factorize_linears,
    factorize_linears_result,
    rank_for_energy,
    rank_for_ratio,
    svd_linear,
)
from nnzip.factorize.tucker import (
    factorize_convs,
    factorize_convs_result,
    ranks_for_ratio,
    tucker2_conv,
    vbmf_rank,
)

__all__ = ["factorize_convs", "factorize_convs_result", "factorize_linears",
           "factorize_linears_result", "rank_for_energy", "rank_for_ratio", "ranks_for_ratio",
           "svd_linear", "tucker2_conv", "vbmf_rank"]
