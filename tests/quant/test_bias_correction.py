import pytest
import torch
from torch import nn

from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.quant import QuantConfig, bias_correction, prepare, quantize_static, quantized_layers
from nnzip.quant.bias_correction import float_mode

NAMES = ("conv1", "conv2", "fc1", "fc2")


def _mean_outputs(model: nn.Module, modules: dict[str, nn.Module], batches) -> dict:
    """Mean output per channel of each module on ``batches``."""
    sums: dict[str, list] = {name: [] for name in modules}
    handles = [module.register_forward_hook(
        lambda m, _a, out, name=name: sums[name].append(
            out.movedim(1 if out.dim() > 2 else -1, 0).flatten(1).double().mean(dim=1)))
        for name, module in modules.items()]
    with torch.no_grad():
        for inputs, _ in batches:
            model(inputs)
    for handle in handles:
        handle.remove()
    return {name: torch.stack(values).mean(dim=0) for name, values in sums.items()}


def test_corrected_layers_have_the_float_mean_output_per_channel(lenet5, mnist):
    batches = calibration_batches(mnist, 2)  # equal-sized batches: the mean of means is exact
    config = QuantConfig(weight_bits=4, weight_granularity="tensor")
    quantized = quantize_static(lenet5, batches, config)
    reference = _mean_outputs(lenet5, {name: getattr(lenet5, name) for name in NAMES}, batches)
    shift_before = {name: (mean - reference[name]).abs().max() for name, mean in
                    _mean_outputs(quantized, quantized_layers(quantized), batches).items()}
    corrections = bias_correction(quantized, batches)
    assert set(corrections) == set(NAMES)
    after = _mean_outputs(quantized, quantized_layers(quantized), batches)
    for name in NAMES:
        shift_after = (after[name] - reference[name]).abs().max()
        assert shift_after < 1e-4, (name, float(shift_after))
        assert shift_before[name] > 100 * shift_after  # the correction did something
    # The float reference was the float model: the float weights and modes are back.
    assert all(layer.mode == "quantize" for layer in quantized_layers(quantized).values())


def test_correction_on_held_out_data_lowers_the_logit_shift(lenet5, mnist):
    batches = calibration_batches(mnist, 4)
    config = QuantConfig(weight_bits=4, weight_granularity="tensor")
    plain = quantize_static(lenet5, batches, config)
    corrected = quantize_static(lenet5, batches, QuantConfig(
        weight_bits=4, weight_granularity="tensor", bias_correction=True))
    test = [(mnist.test.tensors[0][:1000], None)]
    reference = _mean_outputs(lenet5, {"fc2": lenet5.fc2}, test)["fc2"]
    shift = {name: float((_mean_outputs(model, {"fc2": model.fc2}, test)["fc2"] - reference)
                         .abs().mean()) for name, model in (("plain", plain),
                                                            ("corrected", corrected))}
    assert shift["corrected"] < 0.5 * shift["plain"], shift


def test_a_layer_without_bias_gets_one_that_ships_in_the_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    batches = [torch.randn(32, 6) + 1 for _ in range(2)]
    config = QuantConfig(weight_bits=3, bias_correction=True)
    quantized = quantize_static(model, batches, config)
    assert all(layer.layer.bias is not None and float(layer.layer.bias.detach().abs().max()) > 0
               for layer in quantized_layers(quantized).values())
    fresh = prepare(model, config)  # prepared with the same config: loads the corrected biases
    fresh.load_state_dict(quantized.state_dict())
    x = torch.randn(5, 6)
    assert torch.equal(fresh(x), quantized(x))


def test_float_mode_computes_in_float_and_restores_the_modes(lenet5, mnist):
    quantized = quantize_static(lenet5, calibration_batches(mnist, 1), QuantConfig(weight_bits=4))
    x = mnist.test.tensors[0][:32]
    with float_mode(quantized), torch.no_grad():
        torch.testing.assert_close(quantized(x), lenet5(x), rtol=1e-5, atol=1e-5)
    assert all(layer.mode == "quantize" for layer in quantized_layers(quantized).values())
    assert not torch.allclose(quantized(x), lenet5(x), rtol=1e-3, atol=1e-3)


def test_bad_bias_correction_inputs_are_clear_errors(lenet5, mnist):
    with pytest.raises(NnzipError, match="needs calibration data"):
        bias_correction(quantize_static(lenet5, calibration_batches(mnist, 1)), [])
    with pytest.raises(NnzipError, match="not in 'quantize' mode: call convert"):
        bias_correction(prepare(lenet5), calibration_batches(mnist, 1))
    with pytest.raises(NnzipError, match="no QuantizedLayer"):
        bias_correction(lenet5, calibration_batches(mnist, 1))
