"""The zoo's vision transformer: built from transformers' ViT, saved and loaded exactly, and
compressed by the same stages as the CNNs (head pruning, Wanda, W8A8 with ONNX export)."""

import copy

import pytest
import torch
from torch import nn

import nnzip
from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.models import create_model, load_model, save_model
from nnzip.prune import encoder_layers, encoder_shape, prune_heads_and_neurons
from nnzip.prune.transformer import PruneHeads
from nnzip.quant.stages import Quantize

pytestmark = pytest.mark.usefixtures("one_thread")

MNIST_SHAPE = (1, 28, 28)
# A ViT for scikit-learn's 8×8 digits small enough to build and compress in a blink: 2×2 patches
# make a 4×4 token grid, 2 layers of 4 heads of 4 dimensions.
TINY = {"hidden": 16, "depth": 2, "heads": 4, "mlp_dim": 32, "patch_size": 2, "stem_channels": 8}


def _tiny(digits, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("vit", input_shape=digits.input_shape, num_classes=digits.num_classes,
                        **TINY).eval()


def _images(digits, count: int = 32) -> torch.Tensor:
    return digits.test.tensors[0][:count]


def test_vit_maps_mnist_images_to_logits_through_vit_layers():
    torch.manual_seed(0)
    model = create_model("vit", input_shape=MNIST_SHAPE, num_classes=10).eval()
    logits = model(torch.rand(3, *MNIST_SHAPE))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert sum(p.numel() for p in model.parameters()) == 173_194
    # 7×7 tokens of 64 dimensions and the class token, 4 layers of 4 heads.
    assert tuple(model.vit.embeddings.position_embeddings.shape) == (1, 50, 64)
    assert encoder_shape(model) == [{"heads": 4, "head_size": 16, "neurons": 128}] * 4
    names = {name for name, _ in model.named_modules()}
    assert {"vit.layers.3.attention.q_proj", "vit.layers.3.mlp.fc2"} <= names


def test_vit_build_is_deterministic_for_a_seed():
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(create_model("vit", input_shape=MNIST_SHAPE, num_classes=10))
    first, second = (m.state_dict() for m in models)
    assert list(first) == list(second)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_vit_options_are_checked_with_clear_errors():
    with pytest.raises(NnzipError, match="multiple of heads"):
        create_model("vit", input_shape=MNIST_SHAPE, num_classes=10, hidden=30, heads=4)
    with pytest.raises(NnzipError, match="does not take option"):
        create_model("vit", input_shape=MNIST_SHAPE, num_classes=10, image_size=32)
    with pytest.raises(NnzipError, match="image inputs"):
        create_model("vit", input_shape=(784,), num_classes=10)


def test_vit_folder_round_trips_exactly(tmp_path, digits):
    model = _tiny(digits)
    path = save_model(model, tmp_path / "vit")
    loaded = load_model(path)
    assert loaded.nnzip_spec["kwargs"] == TINY
    assert all(torch.equal(value, loaded.state_dict()[name])
               for name, value in model.state_dict().items())
    images = _images(digits)
    assert torch.equal(loaded(images), model(images))


def test_head_pruning_removes_heads_and_neurons_as_zeroing_them_would(digits):
    model, original = _tiny(digits), _tiny(digits)
    images = _images(digits)
    removed = prune_heads_and_neurons(model, calibration_batches(digits, 2), 0.5, 0.25)
    assert encoder_shape(model) == [{"heads": 2, "head_size": 4, "neurons": 24}] * 2
    for layer in encoder_layers(model):
        assert layer.part("attention.q_proj").weight.shape == (8, 16)
        assert layer.attention_output.weight.shape == (16, 8)
        assert layer.output.weight.shape == (16, 24)

    # The original computes the same with those heads' contexts and neurons' outputs zeroed.
    with torch.no_grad():
        for index, layer in enumerate(encoder_layers(original)):
            columns = [c for head in removed["heads"][index] for c in range(head * 4, head * 4 + 4)]
            layer.attention_output.weight[:, columns] = 0
            layer.output.weight[:, removed["neurons"][index]] = 0
        torch.testing.assert_close(model(images), original(images), rtol=1e-5, atol=1e-5)


def test_prune_heads_stage_shrinks_the_vit_on_its_training_data(digits):
    result = nnzip.apply(_tiny(digits), PruneHeads(head_ratio=0.25, neuron_ratio=0.5,
                                                   calibration="data", calibration_batches=2),
                         digits)
    assert encoder_shape(result.model) == [{"heads": 3, "head_size": 4, "neurons": 16}] * 2
    assert all(len(heads) == 1 for heads in result.details["removed_heads"].values())
    params = sum(p.numel() for p in result.model.parameters())
    assert params == result.details["params_after"] < result.details["params_before"]
    assert result.model(_images(digits)).shape == (32, 10)


def test_w8a8_quantizes_every_linear_and_conv_of_the_vit_and_exports_to_onnx(digits, tmp_path):
    from nnzip.runtime import OrtModule, export_onnx

    model = _tiny(digits)
    images = _images(digits, 64)
    with torch.no_grad():
        expected = model(images)
    result = nnzip.apply(copy.deepcopy(model), Quantize(calibration_batches=2), digits)
    layers = {name for name, module in model.named_modules()
              if isinstance(module, nn.Linear | nn.Conv2d)}
    assert len(layers) == 2 * 6 + 4  # q, k, v, o, fc1, fc2 per layer; 2 stem convs, patchify, head
    notes = {record.name: record.note for record in result.coverage.records}
    for layer in layers:
        assert "int8 activations" in notes[f"{layer}.weight"], (layer, notes[f"{layer}.weight"])
    with torch.no_grad():
        simulated = result.model(images)
    error = (simulated - expected).norm() / expected.norm()
    assert error < 0.05
    # transformers' ViT reads its patch projection's .weight: the ONNX view must offer it too.
    path = export_onnx(result.model, tmp_path / "vit.onnx", images[:2])
    torch.testing.assert_close(OrtModule(path)(images), simulated, rtol=1e-4, atol=1e-4)


def test_wanda_halves_every_linear_row_of_the_vit(digits):
    model = _tiny(digits)
    result = nnzip.apply(model, "prune", digits, sparsity=0.5, criterion="wanda",
                         finetune_epochs=0)
    for layer in encoder_layers(result.model):
        for linear in (layer.part("attention.k_proj"), layer.intermediate, layer.output):
            zeros_per_row = (linear.weight == 0).sum(dim=1)
            assert (zeros_per_row == linear.in_features // 2).all()
    assert result.coverage.changed_fraction > 0.4


def test_the_vit_has_nothing_to_fold_and_cle_refuses_it_by_name(digits):
    model = _tiny(digits)
    images = _images(digits)
    result = nnzip.apply(model, "fold_batchnorm", digits)
    assert result.details["folded"] == []
    assert torch.equal(result.model(images), _tiny(digits)(images))
    # Cross-layer equalization pairs layers on a torch.fx trace, which transformers' ViT defeats.
    with pytest.raises(NnzipError, match="torch.fx could not trace"):
        nnzip.apply(model, Quantize(weight_bits=4, equalize=True, calibration_batches=1), digits)
