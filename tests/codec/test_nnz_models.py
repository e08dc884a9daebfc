"""A compressed LeNet saved as .nnz predicts exactly what it predicted before, on real MNIST."""

import torch
from torch import nn

import nnzip
from nnzip.codec import decode_tensors
from nnzip.evaluate.size import artifact_bytes
from nnzip.models.nnz import model_from_nnz, nnz_bytes
from nnzip.prune import magnitude_prune
from nnzip.share import cluster_weights, product_quantize


def _outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(batch) for batch in images.split(2000)])


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_pruned_clustered_lenet300_round_trips_bit_for_bit_on_mnist(lenet300, mnist, tmp_path):
    model = _copy(lenet300)
    magnitude_prune(model, 0.92)
    cluster_weights(model, 5)
    path = nnzip.save(model, tmp_path / "lenet300.nnz")
    loaded = nnzip.load(path)
    images = mnist.test.tensors[0]
    assert torch.equal(_outputs(loaded, images), _outputs(model, images))  # every logit bit
    assert path.stat().st_size * 40 < artifact_bytes(lenet300)


def test_lenet5_with_8_bit_conv_and_5_bit_fc_codes_round_trips_on_mnist(lenet5, mnist, tmp_path):
    model = _copy(lenet5)
    magnitude_prune(model, 0.9)
    cluster_weights(model, conv_bits=8, linear_bits=5)
    loaded = nnzip.load(nnzip.save(model, tmp_path / "lenet5.nnz"))
    images = mnist.test.tensors[0][:3000]
    assert torch.equal(_outputs(loaded, images), _outputs(model, images))


def test_product_quantized_and_plain_pruned_models_round_trip(lenet300, mnist):
    images = mnist.test.tensors[0][:1000]
    pq = _copy(lenet300)
    product_quantize(pq, dim=4, bits=6, layers=["fc1", "fc2"])
    pruned = _copy(lenet300)
    magnitude_prune(pruned, 0.9)
    for model in (pq, pruned):
        loaded = model_from_nnz(decode_tensors(nnz_bytes(model)))
        assert torch.equal(_outputs(loaded, images), _outputs(model, images))
    assert len(nnz_bytes(pruned)) < 0.25 * artifact_bytes(lenet300)


def test_weight_only_int8_quantized_model_round_trips(lenet5, mnist):
    from nnzip.quant.ptq import QuantConfig, convert, prepare

    model = convert(prepare(_copy(lenet5), QuantConfig(activation_bits=None)))
    file = decode_tensors(nnz_bytes(model))
    encodings = {r["name"]: r["encoding"] for r in file.header["records"]}
    assert all(encodings[f"{layer}.weight"] == "integer"
               for layer in ("conv1", "conv2", "fc1", "fc2"))
    loaded = model_from_nnz(file)
    images = mnist.test.tensors[0][:2000]
    assert torch.equal(_outputs(loaded, images), _outputs(model, images))
    assert len(nnz_bytes(model)) < 0.3 * artifact_bytes(lenet5)
