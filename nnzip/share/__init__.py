"""Weight sharing: k-means / GMM clustering of weights and vector (product) quantization."""

from nnzip.share.cluster import (
    LayerSharing,
    cluster_tensor,
    cluster_weights,
    cluster_weights_result,
    product_quantize,
    product_quantize_result,
    product_quantize_tensor,
    select_weights,
)
from nnzip.share.kmeans import gmm_1d, init_centroids, kmeans_1d, kmeans_vectors
from nnzip.share.modules import SharedWeight, share_weight, shared_weights, unshare

__all__ = ["LayerSharing", "SharedWeight", "cluster_tensor", "cluster_weights",
           "cluster_weights_result", "gmm_1d", "init_centroids", "kmeans_1d", "kmeans_vectors",
           "product_quantize", "product_quantize_result", "product_quantize_tensor",
           "select_weights", "share_weight", "shared_weights", "unshare"]
