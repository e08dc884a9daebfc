import pytest
import torch
from torch import nn

from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.models import create_model
from nnzip.quant.modules import QuantizedLayer, quantized_layers
from nnzip.quant.ptq import (
    QuantConfig,
    calibrate,
    convert,
    prepare,
    quantizable_layers,
    quantize_dynamic,
    quantize_static,
)


def _test_accuracy(model: nn.Module, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=1000)),
                    data.test.tensors[1])


def test_int8_static_ptq_of_lenet5_loses_at_most_0_3_points_on_mnist(lenet5, mnist):
    quantized = quantize_static(lenet5, calibration_batches(mnist, 8), QuantConfig())
    layers = quantized_layers(quantized)
    assert set(layers) == {"conv1", "conv2", "fc1", "fc2"}
    for layer in layers.values():
        assert layer.weight_int.dtype == torch.int8
        assert int(layer.weight_int.abs().max()) == 127  # min-max: the largest weight hits 127
        assert layer.input_qparams.zero_point.dtype == torch.int32
    drop = _test_accuracy(lenet5, mnist) - _test_accuracy(quantized, mnist)
    assert drop <= 0.003, f"int8 PTQ lost {100 * drop:.2f} points"
    assert isinstance(lenet5.conv1, nn.Conv2d)  # the input model is untouched


def test_prepare_folds_batchnorm_and_wraps_every_conv_and_linear():
    torch.manual_seed(0)
    model = create_model("resnet8", input_shape=(1, 28, 28), num_classes=10).eval()
    convs_and_linears = quantizable_layers(model)
    prepared = prepare(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert set(quantized_layers(prepared)) == set(convs_and_linears)
    x = torch.rand(16, 1, 28, 28)
    calibrate(prepared, [x])
    torch.testing.assert_close(prepared(x), model(x), rtol=1e-4, atol=1e-4)  # observing = float
    convert(prepared)
    quantized, reference = prepared(x), model(x)
    assert not torch.equal(quantized, reference)
    cosine = nn.functional.cosine_similarity(quantized.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.99


def test_quantized_layer_computes_with_the_dequantized_integer_weight():
    torch.manual_seed(0)
    layer = QuantizedLayer(nn.Linear(8, 4), QuantConfig().weight_scheme(), input_scheme=None)
    layer.freeze()
    x = torch.randn(3, 8)
    expected = nn.functional.linear(x, layer.dequantized_weight(), layer.layer.bias)
    torch.testing.assert_close(layer(x), expected)
    step = layer.weight_qparams.scale
    assert bool(((layer.dequantized_weight() - layer.layer.weight).abs() <= step / 2 + 1e-7).all())


def test_group_wise_four_bit_weights_on_a_linear_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    config = QuantConfig(weight_bits=4, weight_granularity="group", group_size=16,
                         activation_bits=None)
    quantized = convert(prepare(model, config))
    first = quantized_layers(quantized)["0"]
    assert first.weight_qparams.scale.shape == (32, 4, 1)  # 32 rows x 4 groups of 16
    assert int(first.weight_int.max()) <= 7 and int(first.weight_int.min()) >= -7


def test_dynamic_quantization_in_one_call_keeps_lenet300_predictions(lenet300, mnist):
    quantized = quantize_dynamic(lenet300)
    assert set(quantized_layers(quantized)) == {"fc1", "fc2", "fc3"}
    ours = predict_logits(quantized, mnist.loader("test", batch_size=1000)).argmax(1)
    reference = predict_logits(lenet300, mnist.loader("test", batch_size=1000)).argmax(1)
    assert float((ours == reference).float().mean()) >= 0.995


def test_bad_inputs_are_clear_errors(lenet5):
    with pytest.raises(NnzipError, match="calibration set is empty"):
        quantize_static(lenet5, [])
    with pytest.raises(NnzipError, match="has no quantizable layer"):
        prepare(nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(NnzipError, match=r"exclude: 'fc9' matches no quantizable layers.*did you "
                                          r"mean 'fc2'.*conv1, conv2, fc1, fc2"):
        prepare(lenet5, QuantConfig(skip=("fc9",)))
    with pytest.raises(NnzipError, match=r"layer_bits: 'fc3' matches no quantizable layers"):
        prepare(lenet5, QuantConfig(layer_bits={"fc3": 4}))
    with pytest.raises(NnzipError, match="weight_bits must be an integer from 1 to 8"):
        prepare(lenet5, QuantConfig(weight_bits=12))
    with pytest.raises(NnzipError, match="not quantizable"):
        QuantizedLayer(nn.LSTM(4, 4), QuantConfig().weight_scheme())


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_state_dict_holds_packed_integers_and_loads_back_exactly(lenet5, mnist, bits):
    from nnzip.evaluate import artifact_bytes

    config = QuantConfig(weight_bits=bits)
    quantized = quantize_static(lenet5, calibration_batches(mnist, 2), config)
    state = quantized.state_dict()
    assert "conv1.weight_packed" in state and "conv1.layer.weight" not in state
    assert state["fc1.weight_packed"].dtype == torch.uint8
    assert state["fc1.weight_packed"].numel() == 800 * 500 * bits // 8
    ratio = artifact_bytes(quantized) / artifact_bytes(lenet5)
    assert ratio <= {8: 0.27, 4: 0.15}[bits], ratio  # issue 4's size targets
    # A fresh prepared model loads the packed state and computes the same outputs.
    fresh = prepare(lenet5, config)
    fresh.load_state_dict(state)
    x = mnist.test.tensors[0][:64]
    assert torch.equal(fresh(x), quantized(x))


def test_skip_is_the_old_name_of_exclude_and_still_works(caplog):
    from nnzip.quant.stages import Quantize

    with caplog.at_level("WARNING"):
        assert QuantConfig(skip=("fc1",)).exclude == ("fc1",)
        assert Quantize.model_validate({"skip": ["fc*"]}).exclude == ["fc*"]
    assert "now called 'exclude'" in caplog.text
    with pytest.raises(NnzipError, match="give .exclude. only"):
        QuantConfig(skip=("fc1",), exclude=("fc2",))
