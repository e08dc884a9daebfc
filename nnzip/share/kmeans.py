"""Clustering of weights: 1-D k-means (three initializations), Gaussian mixtures, vector k-means.

Weight sharing (Han et al. 2016, "Deep Compression", §3) replaces the weights of a layer by k
shared values, so each weight is stored as a ⌈log2 k⌉-bit index. The shared values are k-means
centroids of the layer's weights; the paper compares three initializations of the centroids and
finds *linear* (evenly spaced between the smallest and largest weight) best, because it keeps the
few large weights that matter most, which *density* (evenly spaced quantiles of the CDF) and
*random* (Forgy: k weights drawn at random) both under-represent.

The 1-D k-means is Lloyd's algorithm vectorized with numpy: with sorted centroids the nearest one
is found by ``searchsorted`` on the midpoints (O(n log k)), so a 235 000-weight layer clusters in
milliseconds. Vector k-means (for product quantization) runs on torch with ``cdist``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from nnzip.errors import NnzipError

Init = Literal["linear", "density", "random"]
MAX_CLUSTERS = 2**16


def check_clusters(clusters: int) -> int:
    if isinstance(clusters, bool) or not isinstance(clusters, int) \
            or not 2 <= clusters <= MAX_CLUSTERS:
        raise NnzipError(f"the number of clusters must be an integer from 2 to {MAX_CLUSTERS} "
                         f"(1 to 16 bits), got {clusters!r}")
    return clusters


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise NnzipError(f"bits per shared weight must be an integer from 1 to 16, got {bits!r} "
                         "(e.g. 8 for conv layers, 5 for fully connected ones)")
    return bits


def _values(values: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    flat = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                      dtype=np.float64).reshape(-1)
    if flat.size == 0:
        raise NnzipError(f"{what} is empty: there are no weights to cluster (is the layer fully "
                         "pruned?); exclude it")
    if not np.isfinite(flat).all():
        raise NnzipError(f"{what} holds NaN or infinite weights: fix the model before clustering")
    return flat


def init_centroids(values: np.ndarray, clusters: int, init: Init = "linear",
                   seed: int = 0) -> np.ndarray:
    """Starting centroids: ``linear``, ``density`` (quantiles) or ``random`` (Forgy)."""
    if init == "linear":
        return np.linspace(values.min(), values.max(), clusters)
    if init == "density":
        return np.quantile(values, np.linspace(0.0, 1.0, clusters))
    if init == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(values, size=clusters, replace=values.size < clusters))
    raise NnzipError(f"unknown k-means initialization {init!r}: use linear, density or random")


def assign_1d(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the *sorted* ``centroids`` for every value."""
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)


def kmeans_1d(values: torch.Tensor | np.ndarray, clusters: int, init: Init = "linear", *,
              iterations: int = 100, seed: int = 0, what: str = "the tensor"
              ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars: (sorted centroids (k,), code of every value (n,)).

    A cluster left empty keeps its previous centroid (it costs a code but never a wrong value).
    """
    check_clusters(clusters)
    flat = _values(values, what)
    centroids = np.sort(init_centroids(flat, clusters, init, seed))
    for _ in range(iterations):
        codes = assign_1d(flat, centroids)
        counts = np.bincount(codes, minlength=clusters)
        sums = np.bincount(codes, weights=flat, minlength=clusters)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        updated = np.sort(updated)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids, assign_1d(flat, centroids)


def gmm_1d(values: torch.Tensor | np.ndarray, clusters: int, init: Init = "linear", *,
           seed: int = 0, max_samples: int = 20_000, what: str = "the tensor"
           ) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian mixture of ``clusters`` components (scikit-learn, EM): (sorted means, codes).

    Each weight takes the component of highest posterior, which need not be the nearest mean
    (wide components claim the tails). EM is fitted on at most ``max_samples`` weights.
    """
    from sklearn.mixture import GaussianMixture

    check_clusters(clusters)
    flat = _values(values, what)
    rng = np.random.default_rng(seed)
    sample = flat if flat.size <= max_samples else rng.choice(flat, max_samples, replace=False)
    if np.unique(sample).size < clusters:
        return kmeans_1d(flat, clusters, init, seed=seed, what=what)  # EM needs distinct points
    means = np.sort(init_centroids(sample, clusters, init, seed))
    mixture = GaussianMixture(clusters, means_init=means.reshape(-1, 1), random_state=seed,
                              reg_covar=1e-10 + 1e-6 * float(sample.var()), max_iter=200)
    mixture.fit(sample.reshape(-1, 1))
    order = np.argsort(mixture.means_.reshape(-1))
    rank = np.empty_like(order)
    rank[order] = np.arange(clusters)
    codes = rank[mixture.predict(flat.reshape(-1, 1))]
    return mixture.means_.reshape(-1)[order], codes


def kmeans_vectors(vectors: torch.Tensor, clusters: int, *, iterations: int = 30,
                   lbg: bool = False, seed: int = 0, what: str = "the tensor"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the rows of ``vectors`` (n, d): (codebook (k, d), code of every row (n,)).

    Initialised with k distinct rows drawn at random, or with ``lbg`` by the splitting of Linde,
    Buzo & Gray (1980): start from the mean, split every codeword into c ± ε (ε a small random
    step), refine, repeat
    until there are ``clusters`` (rounded up to a power of two, then the least used dropped).
    """
    check_clusters(clusters)
    if vectors.numel() == 0:
        raise NnzipError(f"{what} is empty: there are no weights to cluster; exclude it")
    data = vectors.detach().float().cpu()
    generator = torch.Generator().manual_seed(seed)
    if lbg:
        codebook = data.mean(dim=0, keepdim=True)
        while codebook.shape[0] < clusters:
            # A random direction per codeword: one shared direction (c·(1 ± ε)) can leave two
            # true clusters under one codeword for good.
            spread = 1e-2 * data.std(dim=0, keepdim=True).clamp_min(1e-12) * torch.randn(
                codebook.shape, generator=generator)
            codebook = torch.cat([codebook - spread, codebook + spread])
            codebook, _ = _lloyd(data, codebook, iterations)
        if codebook.shape[0] > clusters:
            _, codes = _lloyd(data, codebook, 0)
            keep = torch.bincount(codes, minlength=codebook.shape[0]).argsort(descending=True)
            codebook = codebook[keep[:clusters]]
    else:
        pick = torch.randperm(data.shape[0], generator=generator)[:clusters]
        codebook = data[pick]
        if codebook.shape[0] < clusters:  # fewer rows than clusters: repeat some
            extra = torch.randint(data.shape[0], (clusters - codebook.shape[0],),
                                  generator=generator)
            codebook = torch.cat([codebook, data[extra]])
    return _lloyd(data, codebook, iterations)


def _nearest(data: torch.Tensor, codebook: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    return torch.cat([torch.cdist(part, codebook).argmin(dim=1)
                      for part in data.split(chunk)])


def _lloyd(data: torch.Tensor, codebook: torch.Tensor, iterations: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    codebook = codebook.clone()
    codes = _nearest(data, codebook)
    for _ in range(iterations):
        counts = torch.bincount(codes, minlength=codebook.shape[0]).unsqueeze(1)
        sums = torch.zeros_like(codebook).index_add_(0, codes, data)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), codebook)
        new_codes = _nearest(data, updated)
        codebook = updated
        if torch.equal(new_codes, codes):
            break
        codes = new_codes
    return codebook, codes
