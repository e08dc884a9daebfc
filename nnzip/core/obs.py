"""The Optimal Brain Surgeon machinery shared by GPTQ (quantization) and SparseGPT (pruning).

Both change a weight matrix column by column and move each column's error onto the columns not
yet visited, weighted by the inverse Hessian of the layer's reconstruction error
H = X Xᵀ / n (Hassibi & Stork 1993; Frantar et al. 2023 for the lazy block updates). What
differs is only the rule that gives a column its new values (rounding, or zeroing), passed to
:func:`obs_sweep`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nnzip.errors import NnzipError


class Hessian:
    """Running H = X Xᵀ / n over batches of input rows (each batch's product in float32, the
    running sum in float64: a convolution gives hundreds of thousands of rows)."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.sum: torch.Tensor | None = None  # made on the device of the first rows
        self.rows = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float()
        if self.sum is None:
            self.sum = torch.zeros(self.columns, self.columns, dtype=torch.float64,
                                   device=rows.device)
        self.sum += (rows.T @ rows).double()
        self.rows += rows.shape[0]

    def value(self) -> torch.Tensor:
        if self.rows == 0:
            raise NnzipError("GPTQ saw no calibration inputs for this layer: pass at least one "
                             "batch of training inputs")
        return (self.sum / self.rows).float()


def inverse_hessian_factor(hessian: torch.Tensor, damping: float,
                           method: str = "GPTQ") -> torch.Tensor:
    """Upper Cholesky factor of (H + damping · mean(diag H) · I)⁻¹."""
    hessian = hessian.clone()
    diagonal = torch.diagonal(hessian)
    # An input that is always 0 in calibration gives a zero row and column: make it the identity
    # there, so that column is simply rounded (or pruned) on its own and passes no error on.
    diagonal[diagonal == 0] = 1.0
    diagonal += damping * float(diagonal.mean())
    factor, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise NnzipError(f"the {method} Hessian is not positive definite even with damping "
                         f"{damping}: raise damping (e.g. 0.1) or use more calibration data")
    return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)


#: ``replace(block, offset, position, stop) -> column``: the new values (rounded, or with pruned
#: entries zeroed) of column ``offset`` of the current ``block`` (global column ``position``;
#: the block ends before column ``stop``). It may look at the block's later columns, which
#: already carry every update so far.
ColumnRule = Callable[[torch.Tensor, int, int, int], torch.Tensor]


def obs_sweep(working: torch.Tensor, inverse_factor: torch.Tensor, replace: ColumnRule,
              block_size: int = 128) -> torch.Tensor:
    """The Optimal Brain Surgeon column sweep shared by GPTQ and SparseGPT, in place.

    Column by column, ``replace`` gives the column's new values and the error it makes is moved
    onto the columns not yet visited with the rows of the upper Cholesky factor of H⁻¹
    (``inverse_factor``), so that ‖W X − W' X‖² grows as little as possible; updates to later
    blocks are applied once per block of ``block_size`` columns (lazy batch updates, Frantar et
    al. 2023). Returns ``working``, each column exactly as ``replace`` set it.
    """
    columns = working.shape[1]
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = working[:, start:stop].clone()
        errors = torch.zeros_like(block)
        for offset in range(stop - start):
            position = start + offset
            new_values = replace(block, offset, position, stop)
            error = (block[:, offset] - new_values) / inverse_factor[position, position]
            block[:, offset:] -= error.unsqueeze(1) * inverse_factor[position, position:stop]
            block[:, offset] = new_values  # exact: the update leaves round-off behind
            errors[:, offset] = error
        working[:, start:stop] = block
        working[:, stop:] -= errors @ inverse_factor[start:stop, stop:]
    return working
