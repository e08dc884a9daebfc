"""Tucker-2 decomposition of convolutions (Kim et al. 2016, "Compression of Deep Convolutional
Neural Networks for Fast and Low Power Mobile Applications").

A k×k kernel K (out, in, k, k) is decomposed along its two channel modes only,
K ≈ core ×₀ U_out ×₁ U_in with core (r_out, r_in, k, k), which is three convolutions in a row:
``1×1 (in → r_in) → k×k (r_in → r_out, the original stride/padding) → 1×1 (r_out → out)``.
The decomposition is tensorly's ``partial_tucker`` (HOOI). Ranks come from a target parameter
ratio or, as in Kim et al., from variational Bayesian matrix factorization (VBMF) of the two
unfoldings. The replacement is a plain ``nn.Sequential`` of ``nn.Conv1d`` / ``nn.Conv2d`` /
``nn.Conv3d`` (the same decomposition for any number of spatial dimensions).
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl
import torch
from scipy.optimize import minimize_scalar
from tensorly.decomposition import partial_tucker
from torch import nn

from nnzip.core.coverage import MethodResult
from nnzip.core.weights import Kind
from nnzip.errors import NnzipError
from nnzip.factorize.svd import (
    apply_plan,
    module_skip_reason,
    resolve_keep,
    select_layers,
    weights_by_name,
)

# --- VBMF ---------------------------------------------------------------------------------------
# Empirical VBMF with the global analytic solution of Nakajima, Sugiyama, Babacan & Tomioka 2013
# ("Global Analytic Solution of Fully-observed Variational Bayesian Matrix Factorization", JMLR
# 14, Thm. 13 and §6): the noise variance σ² is estimated by a 1-D minimisation, and every
# singular value above a threshold that follows from σ² is kept. This is the rank selection Kim et
# al. 2016 use. No maintained library ships it (Kim et al.'s code and its copies are unpackaged
# scripts), so it is written out here from the paper.

# τ̄: the threshold on τ, the solution of τ̄ = ... in Nakajima et al. 2013, Thm. 13, / √α.
_TAU_BAR_PER_SQRT_ALPHA = 2.5129


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_objective(sigma2: float, rows: int, cols: int, s: np.ndarray, residual: float,
                   x_bar: float) -> float:
    """The EVB free energy as a function of σ² (Nakajima et al. 2013, Eq. 43), up to constants."""
    alpha = rows / cols
    x = s ** 2 / (cols * sigma2)
    above, below = x[x > x_bar], x[x <= x_bar]
    tau_above = _tau(above, alpha)
    return float(np.sum(below - np.log(below)) + np.sum(above - tau_above)
                 + np.sum(np.log((tau_above + 1) / above))
                 + alpha * np.sum(np.log(tau_above / alpha + 1))
                 + residual / (cols * sigma2) + (rows - len(s)) * np.log(sigma2))


def vbmf_rank(matrix: np.ndarray | torch.Tensor) -> int:
    """The rank empirical VBMF keeps for ``matrix`` (singular values above the EVB threshold)."""
    y = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix,
                   dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 1:
        raise NnzipError(f"VBMF needs a non-empty matrix, got shape {y.shape}")
    if y.shape[0] > y.shape[1]:
        y = y.T  # the analysis assumes rows ≤ columns
    rows, cols = y.shape
    s = np.linalg.svd(y, compute_uv=False)
    if s[0] == 0:
        return 0
    alpha = rows / cols
    tau_bar = _TAU_BAR_PER_SQRT_ALPHA * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    # Bounds on σ² from the paper (§6): no more than ⌈rows/(1+α)⌉ − 1 components can be signal.
    h_ub = min(math.ceil(rows / (1 + alpha)) - 1, rows) - 1
    upper = np.sum(s ** 2) / (rows * cols)
    tail = s[max(h_ub + 1, 0):]
    lower = max(tail[0] ** 2 / (cols * x_bar), np.mean(tail ** 2) / cols) if len(tail) else 0.0
    if not 0 < lower < upper:
        lower = upper * 1e-6
    sigma2 = minimize_scalar(_evb_objective, args=(rows, cols, s, 0.0, x_bar),
                             bounds=(lower, upper), method="bounded").x
    threshold = math.sqrt(cols * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return int(np.sum(s > threshold))


# --- Tucker-2 -----------------------------------------------------------------------------------

def conv_params(in_channels: int, out_channels: int, kernel_area: int,
                ranks: tuple[int, int] | None = None) -> int:
    """Weights of a conv, or of its Tucker-2 form with ``ranks = (r_in, r_out)`` (no bias)."""
    if ranks is None:
        return in_channels * out_channels * kernel_area
    r_in, r_out = ranks
    return in_channels * r_in + r_in * r_out * kernel_area + r_out * out_channels


def ranks_for_ratio(in_channels: int, out_channels: int, kernel_area: int,
                    ratio: float) -> tuple[int, int]:
    """(r_in, r_out) = a·(in, out) with the largest a whose weights are ≤ ``ratio`` × original.

    Solves a(in² + out²) + a²·in·out·k² = ratio·in·out·k² for a, then rounds the ranks down.
    """
    if not 0.0 < ratio < 1.0:
        raise NnzipError(f"keep is the fraction of a conv's weights to keep, in (0, 1), got "
                         f"{ratio}: e.g. 0.4")
    quadratic = in_channels * out_channels * kernel_area
    linear = in_channels ** 2 + out_channels ** 2
    target = ratio * quadratic
    scale = (-linear + math.sqrt(linear ** 2 + 4 * quadratic * target)) / (2 * quadratic)
    return (max(1, math.floor(scale * in_channels)), max(1, math.floor(scale * out_channels)))


def vbmf_ranks(weight: torch.Tensor) -> tuple[int, int]:
    """(r_in, r_out) from VBMF of the kernel's input- and output-channel unfoldings (Kim et al.)."""
    kernel = weight.detach().cpu().double().numpy()
    r_out = vbmf_rank(tl.unfold(kernel, 0))
    r_in = vbmf_rank(tl.unfold(kernel, 1))
    return max(1, r_in), max(1, r_out)


def check_ranks(ranks: tuple[int, int], in_channels: int, out_channels: int,
                name: str = "conv") -> tuple[int, int]:
    if len(ranks) != 2 or not all(isinstance(r, int) and r > 0 for r in ranks):
        raise NnzipError(f"{name}: Tucker-2 ranks must be two positive integers (r_in, r_out), "
                         f"got {ranks!r}")
    r_in, r_out = ranks
    if r_in > in_channels or r_out > out_channels:
        raise NnzipError(f"{name}: ranks (r_in={r_in}, r_out={r_out}) exceed the channels "
                         f"(in={in_channels}, out={out_channels}): use at most those")
    return r_in, r_out


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@torch.no_grad()
def tucker2_conv(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, ranks: tuple[int, int], *,
                 seed: int = 0) -> nn.Sequential:
    """``conv`` as 1×1 → k×k → 1×1 convolutions with ``ranks = (r_in, r_out)``; exact at full rank.

    Only the two channel modes are decomposed, so the same holds for Conv1d and Conv3d: the
    core keeps the kernel's spatial modes whatever their number.
    """
    if conv.groups != 1:
        raise NnzipError(f"Tucker-2 needs an ordinary convolution, got groups={conv.groups}: "
                         "leave grouped and depthwise convs out (exclude)")
    spatial = conv.weight.dim() - 2
    conv_type = _CONVS[spatial]
    out_channels, in_channels = conv.weight.shape[:2]
    r_in, r_out = check_ranks(tuple(ranks), in_channels, out_channels)
    kernel = conv.weight.detach().cpu().double().numpy()
    (core, (u_out, u_in)), _ = partial_tucker(kernel, rank=[r_out, r_in], modes=[0, 1],
                                              init="svd", random_state=seed)
    point = (1,) * spatial
    first = conv_type(in_channels, r_in, point, bias=False)
    middle = conv_type(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode)
    last = conv_type(r_out, out_channels, point, bias=conv.bias is not None)
    first.weight.copy_(torch.from_numpy(np.ascontiguousarray(u_in.T)).reshape(r_in, in_channels,
                                                                             *point))
    middle.weight.copy_(torch.from_numpy(np.ascontiguousarray(core)))
    last.weight.copy_(torch.from_numpy(np.ascontiguousarray(u_out)).reshape(out_channels, r_out,
                                                                           *point))
    if conv.bias is not None:
        last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last).to(device=conv.weight.device,
                                                 dtype=conv.weight.dtype)


def _skip_reason(conv: nn.modules.conv._ConvNd) -> str | None:
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return (f"{kind} conv (groups={conv.groups}): Tucker-2 of its channel modes needs an "
                "ordinary convolution")
    if math.prod(conv.kernel_size) == 1:
        return "1×1 conv (a Tucker-2 of it is an SVD with an extra layer)"
    return None


def factorize_convs_result(model: nn.Module, *, method: str | None = None,
                           keep: float | None = None, ranks: tuple[int, int] | None = None,
                           layers: list[str] | None = None,
                           exclude: list[str] | tuple[str, ...] = (), seed: int = 0,
                           ratio: float | None = None) -> MethodResult:
    """:func:`factorize_convs` with its coverage (details: what happened per layer)."""
    keep = resolve_keep(keep, ratio, "tucker")
    method = method or ("ratio" if keep is not None else "vbmf")
    if method not in ("vbmf", "ratio"):
        raise NnzipError(f"unknown Tucker rank method {method!r}: use 'vbmf' or 'ratio'")
    if ranks is None and method == "ratio" and keep is None:
        raise NnzipError("method 'ratio' needs keep=, the fraction of weights to keep, e.g. 0.4")
    if ranks is not None:
        check_ranks(tuple(ranks), math.inf, math.inf)
    weights = weights_by_name(model)
    done: dict[str, dict] = {}
    plan: dict[str, nn.Module] = {}
    for name in select_layers(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d), layers, exclude):
        conv = model.get_submodule(name)
        out_channels, in_channels = conv.weight.shape[:2]
        area = math.prod(conv.kernel_size)
        before = conv_params(in_channels, out_channels, area) + (
            out_channels if conv.bias is not None else 0)
        reason = _skip_reason(conv) or module_skip_reason(name, weights, model)
        if reason is not None:
            done[name] = {"skipped": reason, "params_before": before}
            continue
        if ranks is not None:
            chosen = (min(ranks[0], in_channels), min(ranks[1], out_channels))
        elif method == "ratio":
            chosen = ranks_for_ratio(in_channels, out_channels, area, keep)
        else:
            chosen = vbmf_ranks(conv.weight)
        after = before - conv_params(in_channels, out_channels, area) + conv_params(
            in_channels, out_channels, area, chosen)
        if chosen[0] >= in_channels or chosen[1] >= out_channels:
            # A full-rank mode would add a square 1×1 conv that removes nothing (e.g. 1 input
            # channel): the layer gets slower, not smaller.
            done[name] = {"skipped": f"ranks {list(chosen)} keep all {in_channels} input or "
                                     f"{out_channels} output channels", "params_before": before}
            continue
        if after >= before:
            done[name] = {"skipped": f"ranks {list(chosen)} would not save parameters "
                                     f"({after} vs {before})", "params_before": before}
            continue
        plan[name] = tucker2_conv(conv, chosen, seed=seed)
        done[name] = {"ranks": list(chosen), "params_before": before, "params_after": after}
    return apply_plan(model, "tucker", plan, done, (Kind.CONV,))


def factorize_convs(model: nn.Module, *, method: str | None = None, keep: float | None = None,
                    ranks: tuple[int, int] | None = None, layers: list[str] | None = None,
                    exclude: list[str] | tuple[str, ...] = (), seed: int = 0,
                    ratio: float | None = None) -> dict[str, dict]:
    """Replace k×k Conv1d/2d/3d layers of ``model`` in place by their Tucker-2 form.

    ``method="vbmf"`` (the default without ``keep``) picks each layer's ranks by VBMF,
    ``"ratio"`` from ``keep`` (kept fraction of weights; ``ratio`` is its old name);
    ``ranks=(r_in, r_out)`` fixes them (capped at each layer's channels). Grouped and 1×1
    convolutions, convolutions whose weight is tied to another layer, and layers whose
    decomposition would not hold fewer weights are left as they are and reported with
    ``"skipped"``; the others report ``ranks`` and parameter counts.
    :func:`factorize_convs_result` also returns the coverage.
    """
    return factorize_convs_result(model, method=method, keep=keep, ranks=ranks, layers=layers,
                                  exclude=exclude, seed=seed, ratio=ratio).details
