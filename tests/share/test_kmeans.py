import numpy as np
import pytest
import torch

from nnzip.errors import NnzipError
from nnzip.share import cluster_tensor, gmm_1d, init_centroids, kmeans_1d, kmeans_vectors


def test_kmeans_finds_well_separated_clusters_with_every_init():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 500) for c in (-1.0, 0.2, 3.0)])
    for init in ("linear", "density", "random"):
        centroids, codes = kmeans_1d(values, 3, init, seed=1)
        assert np.allclose(centroids, [-1.0, 0.2, 3.0], atol=0.01), init
        assert np.all(np.diff(centroids) > 0)
        assert np.abs(centroids[codes] - values).max() < 0.1


def test_linear_init_spans_the_range_and_density_follows_the_cdf():
    values = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 10.0])
    assert init_centroids(values, 3, "linear").tolist() == [0.0, 5.0, 10.0]
    assert init_centroids(values, 3, "density")[1] == 0.0


def test_kmeans_assigns_each_value_its_nearest_centroid():
    values = np.random.default_rng(1).normal(size=5000)
    centroids, codes = kmeans_1d(values, 16)
    nearest = np.abs(values[:, None] - centroids[None]).argmin(axis=1)
    assert np.array_equal(codes, nearest)


def test_gmm_gives_sorted_means_and_valid_codes():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(-2, 0.1, 400), rng.normal(2, 0.1, 400)])
    means, codes = gmm_1d(values, 2)
    assert np.allclose(means, [-2, 2], atol=0.05)
    assert set(codes[:400]) == {0} and set(codes[400:]) == {1}


def test_vector_kmeans_and_lbg_recover_codewords():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [2.0, 2.0]])
    vectors = base.repeat(50, 1) + 0.01 * torch.randn(200, 2, generator=torch.Generator()
                                                       .manual_seed(0))
    for lbg in (False, True):
        codebook, codes = kmeans_vectors(vectors, 4, lbg=lbg, seed=3)
        error = (codebook[codes] - vectors).pow(2).sum(dim=1).max()
        assert codebook.shape == (4, 2) and error < 1e-2, lbg


@pytest.mark.parametrize("clusters", [1, 0, 2**16 + 1, 2.5])
def test_cluster_counts_outside_2_to_65536_are_refused(clusters):
    with pytest.raises(NnzipError, match="from 2 to 65536"):
        kmeans_1d(np.ones(10), clusters)


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_bit_widths_outside_1_to_16_are_refused(bits):
    with pytest.raises(NnzipError, match="from 1 to 16"):
        cluster_tensor(torch.randn(10), bits)


def test_empty_or_fully_pruned_layers_are_refused():
    with pytest.raises(NnzipError, match="empty"):
        cluster_tensor(torch.zeros(0, 4), 4)
    with pytest.raises(NnzipError, match="entirely pruned"):
        cluster_tensor(torch.zeros(3, 4), 4)
    with pytest.raises(NnzipError, match="empty"):
        kmeans_vectors(torch.zeros(0, 4), 4)
