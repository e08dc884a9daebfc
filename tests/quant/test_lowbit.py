import math

import pytest
import torch

from nnzip.codec.bitpack import packed_bytes
from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.quant import (
    LowBitParams,
    LowBitScheme,
    QuantConfig,
    binary_weights,
    lowbit_dequantize,
    lowbit_fake_quantize,
    pack_codes,
    pow2_weights,
    prepare,
    quantize_static,
    quantized_layers,
    ternary_weights,
    unpack_codes,
)


def _weights(shape=(16, 8, 3, 3), seed=0) -> torch.Tensor:
    torch.manual_seed(seed)
    # Channels of very different magnitudes, so per-channel scales matter.
    return torch.randn(shape) * torch.logspace(-2, 0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))


def test_binary_codes_are_plus_minus_one_and_alpha_is_the_mean_magnitude_per_channel():
    weight = _weights()
    codes, scale = binary_weights(weight)
    assert codes.dtype == torch.int8 and codes.shape == weight.shape
    assert set(codes.unique().tolist()) == {-1, 1}
    assert torch.equal(codes, torch.where(weight >= 0, 1, -1).to(torch.int8))
    rows = weight.reshape(16, -1)
    assert torch.allclose(scale.flatten(), rows.abs().mean(dim=1))
    # α = mean|w| is the least-squares scale for sign(w): scaling it either way costs error.
    approx = lowbit_dequantize(codes, LowBitParams(scale, LowBitScheme("binary")))
    error = (approx - weight).pow(2).sum()
    for factor in (0.9, 1.1):
        assert (approx * factor - weight).pow(2).sum() > error


def test_ternary_threshold_is_0_7_mean_magnitude_and_keeps_the_papers_sparsity():
    weight = _weights((64, 4096))
    codes, scale = ternary_weights(weight)
    magnitude = weight.abs()
    threshold = 0.7 * magnitude.mean(dim=1, keepdim=True)
    assert torch.equal(codes == 0, magnitude <= threshold)
    assert torch.equal(codes[codes != 0], torch.sign(weight)[codes != 0].to(torch.int8))
    kept = magnitude > threshold
    kept_mean = (magnitude * kept).sum(1, keepdim=True) / kept.sum(1, keepdim=True)
    assert torch.allclose(scale, kept_mean)
    # Gaussian weights: Δ = 0.7·E|w| = 0.7·sqrt(2/π)·σ zeroes P(|z| < 0.559) ≈ 42 % of them.
    expected = math.erf(0.7 * math.sqrt(2 / math.pi) / math.sqrt(2))
    assert abs((codes == 0).float().mean().item() - expected) < 0.01
    # For that support the scale is optimal: the error grows when α moves.
    approx = lowbit_dequantize(codes, LowBitParams(scale, LowBitScheme("ternary")))
    error = (approx - weight).pow(2).sum()
    for factor in (0.95, 1.05):
        assert (approx * factor - weight).pow(2).sum() > error


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_pow2_values_are_exact_signed_powers_of_two_at_the_nearest_level(bits):
    weight = _weights()
    codes, scale = pow2_weights(weight, bits)
    top = 2 ** (bits - 1) - 1
    assert int(codes.abs().max()) <= top
    assert torch.equal(torch.log2(scale), torch.round(torch.log2(scale)))  # scale: a power of 2
    values = lowbit_dequantize(codes, LowBitParams(scale, LowBitScheme("pow2", bits)))
    nonzero = values[values != 0].abs()
    assert torch.equal(torch.log2(nonzero), torch.round(torch.log2(nonzero)))
    assert torch.equal(torch.sign(values[values != 0]), torch.sign(weight[values != 0]))
    # Each channel has 0 and `top` magnitudes scale·2^(1-top) … scale; every weight sits on the
    # nearest of them.
    rows, value_rows = weight.reshape(16, -1), values.reshape(16, -1)
    for row, value_row, channel_scale in zip(rows, value_rows, scale.flatten(), strict=True):
        levels = torch.cat([torch.zeros(1), channel_scale * 2.0 ** torch.arange(1 - top, 1.0)])
        nearest = levels[(row.abs()[:, None] - levels).abs().argmin(dim=1)]
        assert torch.allclose(value_row.abs(), nearest)
        assert len(value_row.abs().unique()) <= top + 1


@pytest.mark.parametrize("scheme", [LowBitScheme("binary"), LowBitScheme("ternary"),
                                    LowBitScheme("pow2", 4)])
def test_straight_through_gradient_passes_inside_the_range(scheme):
    weight = _weights((4, 16))
    weight[0, :4] = torch.tensor([1.5, -2.0, 0.999, -1.0])
    weight.requires_grad_(True)
    lowbit_fake_quantize(weight, scheme).sum().backward()
    if scheme.format == "pow2":  # the top level follows the largest weight: nothing is clipped
        expected = torch.ones_like(weight)
    else:
        expected = (weight.detach().abs() <= 1).float()
        assert expected[0, :4].tolist() == [0, 0, 1, 1]
    assert torch.equal(weight.grad, expected)


@pytest.mark.parametrize("scheme", [LowBitScheme("binary"), LowBitScheme("ternary"),
                                    LowBitScheme("pow2", 3), LowBitScheme("pow2", 5)])
def test_codes_pack_into_exactly_their_bits_and_back(scheme):
    weight = _weights((7, 13))  # 91 values: not a multiple of 8
    codes, _ = {"binary": binary_weights, "ternary": ternary_weights}.get(
        scheme.format, lambda w: pow2_weights(w, scheme.bits))(weight)
    packed = pack_codes(codes, scheme)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(91, scheme.bits)
    assert torch.equal(unpack_codes(packed, scheme, 91).reshape(codes.shape), codes)


@pytest.mark.parametrize(("config", "bits"), [
    (QuantConfig(weight_format="binary"), 1), (QuantConfig(weight_bits=1), 1),
    (QuantConfig(weight_format="ternary"), 2),
    (QuantConfig(weight_format="pow2", weight_bits=4), 4)])
def test_low_bit_lenet5_state_dict_is_packed_and_loads_back_exactly(lenet5, mnist, config, bits):
    from nnzip.evaluate import artifact_bytes

    quantized = quantize_static(lenet5, calibration_batches(mnist, 2), config)
    for layer in quantized_layers(quantized).values():
        assert layer.weight_scheme.bits == bits and layer.low_bit
    state = quantized.state_dict()
    assert "fc1.layer.weight" not in state
    assert state["fc1.weight_packed"].numel() == 800 * 500 * bits // 8
    assert state["fc1.weight_scale"].shape == (500, 1)
    packed_total = sum(v.numel() for k, v in state.items() if k.endswith("weight_packed"))
    weights_total = sum(m.layer.weight.numel() for m in quantized_layers(quantized).values())
    assert packed_total == sum(packed_bytes(m.layer.weight.numel(), bits)
                               for m in quantized_layers(quantized).values())
    assert packed_total <= weights_total * bits / 8 + 4
    assert artifact_bytes(quantized) < artifact_bytes(lenet5) * (bits + 1) / 32
    fresh = prepare(lenet5, config)
    fresh.load_state_dict(state)
    x = mnist.test.tensors[0][:64]
    assert torch.equal(fresh(x), quantized(x))


def test_four_bit_pow2_ptq_keeps_lenet5_accurate(lenet5, mnist):
    quantized = quantize_static(lenet5, calibration_batches(mnist, 4),
                                QuantConfig(weight_format="pow2", weight_bits=4))
    loader = mnist.loader("val", batch_size=500)
    labels = mnist.val.tensors[1]
    drop = accuracy(predict_logits(lenet5, loader), labels) - \
        accuracy(predict_logits(quantized, loader), labels)
    assert drop < 0.02, drop


def test_bad_low_bit_options_are_clear_errors():
    for bits in (0, 9):
        with pytest.raises(NnzipError, match=f"weight_bits must be .* from 1 to 8 .*{bits}"):
            QuantConfig(weight_bits=bits)
    with pytest.raises(NnzipError, match=r"layer_bits\['fc1'\] must be an integer from 1 to 8"):
        QuantConfig(layer_bits={"fc1": 12})
    with pytest.raises(NnzipError, match="pow2 weights take 2 to 8 bits"):
        QuantConfig(weight_format="pow2", weight_bits=1)
    with pytest.raises(NnzipError, match="binary weights take 1 bit"):
        LowBitScheme("binary", 4)
    with pytest.raises(NnzipError, match="fixed width.*use exclude"):
        QuantConfig(weight_format="ternary", layer_bits={"fc1": 8})
    with pytest.raises(NnzipError, match="one scale per output channel"):
        QuantConfig(weight_format="binary", weight_granularity="tensor")
    with pytest.raises(NnzipError, match="weight_range 'mse'.*use 'minmax'"):
        QuantConfig(weight_format="pow2", weight_range="mse")
    with pytest.raises(NnzipError, match="weight_format must be one of"):
        QuantConfig(weight_format="int3")
    assert QuantConfig(weight_bits=1).weight_scheme() == LowBitScheme("binary")
    assert QuantConfig(layer_bits={"fc1": 1}).weight_scheme(1) == LowBitScheme("binary")
