import pytest
import torch
from torch import nn

from nnzip.core.obs import Hessian
from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.quant import QuantConfig, convert, prepare, quantize_static, quantized_layers
from nnzip.quant.affine import QScheme, dequantize, minmax_qparams, quantize
from nnzip.quant.gptq import gptq, gptq_quantize_weight, layer_input_rows

W4 = QScheme(bits=4, granularity="channel")


def _layer_inputs(model: nn.Module, layer: nn.Module, batches) -> torch.Tensor:
    """Every input row the layer's weight multiplies on ``batches`` (float model)."""
    rows = []
    handle = layer.register_forward_pre_hook(
        lambda _m, args: rows.append(layer_input_rows(layer, args[0])))
    with torch.no_grad():
        for inputs, _ in batches:
            model(inputs)
    handle.remove()
    return torch.cat(rows)


def _output_error(weight: torch.Tensor, rounded: torch.Tensor, rows: torch.Tensor) -> float:
    """‖W X − W_q X‖² / ‖W X‖² on the rows X."""
    return float(((rows @ (weight - rounded).T) ** 2).sum() / ((rows @ weight.T) ** 2).sum())


@pytest.mark.parametrize("name, scheme", [
    ("fc1", W4), ("conv2", W4), ("fc1", QScheme(bits=4, granularity="group", group_size=50))])
def test_gptq_preserves_the_layer_output_better_than_rounding_to_nearest(lenet5, mnist, name,
                                                                        scheme):
    layer = getattr(lenet5, name)
    rows = _layer_inputs(lenet5, layer, calibration_batches(mnist, 2))
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    hessian = Hessian(weight.shape[1])
    hessian.add(rows)
    codes, qparams = gptq_quantize_weight(weight, hessian.value(), scheme)
    nearest = minmax_qparams(weight, scheme)
    gptq_error = _output_error(weight, dequantize(codes, qparams), rows)
    nearest_error = _output_error(weight, dequantize(quantize(weight, nearest), nearest), rows)
    # Measured on LeNet-5: 3-8 % of the round-to-nearest error; a broken update gives ≥ 100 %.
    assert gptq_error < 0.3 * nearest_error, (gptq_error, nearest_error)
    # On held-out inputs too (the test set), not only on the calibration rows.
    held_out = _layer_inputs(lenet5, layer, [(mnist.test.tensors[0][:256], None)])
    assert _output_error(weight, dequantize(codes, qparams), held_out) < \
        0.5 * _output_error(weight, dequantize(quantize(weight, nearest), nearest), held_out)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 7


def test_uncorrelated_inputs_reduce_gptq_to_rounding_to_nearest():
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    codes, qparams = gptq_quantize_weight(weight, torch.eye(64), W4)
    assert torch.equal(codes, quantize(weight, minmax_qparams(weight, W4)))


def test_lazy_block_updates_give_the_same_integers_for_any_block_size():
    torch.manual_seed(0)
    weight, rows = torch.randn(8, 96), torch.randn(500, 96) @ torch.randn(96, 96)
    hessian = rows.T @ rows / len(rows)
    whole, _ = gptq_quantize_weight(weight, hessian, W4, block_size=96)
    for block_size in (1, 32, 128):
        blocks, _ = gptq_quantize_weight(weight, hessian, W4, block_size=block_size)
        # float summation order differs between block sizes: allow a rare tie to round apart
        assert float((blocks != whole).float().mean()) < 0.01


def test_convolution_input_rows_reproduce_the_convolution():
    torch.manual_seed(0)
    for conv in (nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Conv2d(3, 5, (3, 2), dilation=2),
                 nn.Conv2d(3, 5, 3, padding="same", padding_mode="reflect")):
        x = torch.randn(2, 3, 9, 9)
        expected = conv(x) - conv.bias.reshape(1, -1, 1, 1)
        rows = layer_input_rows(conv, x) @ conv.weight.reshape(5, -1).T
        torch.testing.assert_close(rows.reshape(2, -1, 5).transpose(1, 2),
                                   expected.flatten(2), rtol=1e-5, atol=1e-5)


def test_gptq_weights_are_on_the_grid_survive_refreezing_and_ship_in_the_state_dict(lenet5,
                                                                                   mnist):
    batches = calibration_batches(mnist, 2)
    config = QuantConfig(weight_bits=4, rounding="gptq")
    model = quantize_static(lenet5, batches, config)
    nearest = quantize_static(lenet5, batches, QuantConfig(weight_bits=4))
    x = mnist.test.tensors[0][:128]
    before = {name: layer.weight_int.clone() for name, layer in quantized_layers(model).items()}
    outputs = model(x)
    for name, layer in quantized_layers(model).items():
        assert layer.weight_fixed
        codes, qparams = layer.weight_int, layer.weight_qparams
        assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 7
        weight = layer.dequantized_weight()
        rows = codes.reshape(len(codes), -1).float()
        assert torch.equal(weight.reshape(len(codes), -1), qparams.scale * rows)
        assert torch.equal(quantize(weight, qparams), codes)  # re-rounding is a no-op
        # GPTQ chose other integers than rounding to nearest would have.
        assert not torch.equal(codes, quantized_layers(nearest)[name].weight_int)
    convert(model)  # freezing again keeps the GPTQ integers
    for name, layer in quantized_layers(model).items():
        layer.freeze()
        assert torch.equal(layer.weight_int, before[name]), name
    assert torch.equal(model(x), outputs)
    fresh = prepare(lenet5, config)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), outputs)
    assert all(layer.weight_fixed for layer in quantized_layers(fresh).values())


def test_training_releases_the_fixed_integers():
    layer = quantized_layers(convert(prepare(nn.Sequential(nn.Linear(4, 3)),
                                             QuantConfig(activation_bits=None))))["0"]
    layer.set_integer_weight(torch.zeros(3, 4, dtype=torch.int8), layer.weight_qparams)
    layer.freeze_weight()
    assert int(layer.weight_int.abs().sum()) == 0  # kept
    layer.set_mode("train")
    layer.freeze_weight()
    assert int(layer.weight_int.abs().sum()) > 0  # re-rounded from the (trained) float weight


def test_group_wise_gptq_and_grouped_convs_keep_nearest_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4),
                          nn.Flatten(), nn.Linear(4 * 3 * 3, 8)).eval()
    batches = [torch.randn(16, 4, 7, 7) for _ in range(2)]
    config = QuantConfig(weight_bits=4, weight_granularity="group", group_size=9,
                         activation_bits=None)
    prepared = convert(prepare(model, config))
    assert gptq(prepared, batches) == ["0", "4"]
    layers = quantized_layers(prepared)
    assert layers["4"].weight_qparams.scale.shape == (8, 4, 1)  # 8 rows x 4 groups of 9
    assert layers["0"].weight_fixed and layers["4"].weight_fixed
    assert not layers["2"].weight_fixed  # depthwise: kept round-to-nearest


def test_gptq_leaves_binary_layers_to_their_own_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    batches = [torch.randn(16, 12) for _ in range(2)]
    config = QuantConfig(weight_bits=4, layer_bits={"2": 1}, activation_bits=None)
    prepared = convert(prepare(model, config))
    assert gptq(prepared, batches) == ["0"]
    binary = quantized_layers(prepared)["2"]
    assert not binary.weight_fixed and set(binary.weight_int.unique().tolist()) <= {-1, 0, 1}


def test_bad_gptq_inputs_are_clear_errors(lenet5, mnist):
    with pytest.raises(NnzipError, match="GPTQ needs calibration data"):
        gptq(quantize_static(lenet5, calibration_batches(mnist, 1)), [])
    with pytest.raises(NnzipError, match="not in 'quantize' mode: call convert"):
        gptq(prepare(lenet5), calibration_batches(mnist, 1))
    with pytest.raises(NnzipError, match="no QuantizedLayer"):
        gptq(lenet5, calibration_batches(mnist, 1))
    with pytest.raises(NnzipError, match="act_order is a GPTQ option"):
        QuantConfig(act_order=True)
    with pytest.raises(NnzipError, match="GPTQ rounds to affine integers, not ternary"):
        QuantConfig(rounding="gptq", weight_format="ternary")
    with pytest.raises(NnzipError, match="group_size 7 does not divide the 12 inputs"):
        gptq_quantize_weight(torch.randn(3, 12), torch.eye(12),
                             QScheme(bits=4, granularity="group", group_size=7))
    with pytest.raises(NnzipError, match="Hessian must be 12×12"):
        gptq_quantize_weight(torch.randn(3, 12), torch.eye(4), W4)
    with pytest.raises(NnzipError, match="Linear and Conv2d layers with groups=1"):
        layer_input_rows(nn.Conv1d(2, 2, 3), torch.randn(1, 2, 5))
