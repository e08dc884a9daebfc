import pytest
import torch

from nnzip.errors import NnzipError
from nnzip.quant.affine import (
    QScheme,
    dequantize,
    fake_quantize,
    grouped,
    minmax_qparams,
    quantization_error,
    quantize,
    ungrouped,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, granularity):
    torch.manual_seed(bits)
    x = torch.randn(6, 32) * torch.linspace(0.1, 5, 6)[:, None] + 0.3
    scheme = QScheme(bits=bits, symmetric=symmetric, signed=symmetric or bits == 8,
                     granularity=granularity, group_size=8)
    qp = minmax_qparams(x, scheme)
    q = quantize(x, qp)
    assert q.shape == x.shape
    assert int(q.min()) >= scheme.qmin and int(q.max()) <= scheme.qmax
    error = (dequantize(q, qp) - x).abs()
    step = ungrouped(qp.scale.expand_as(grouped(x, scheme)), x, scheme)
    assert bool((error <= step / 2 + 1e-6).all())


def test_integer_ranges_follow_the_onnx_conventions():
    assert (QScheme(8).qmin, QScheme(8).qmax) == (-127, 127)           # symmetric: narrow
    assert (QScheme(8, symmetric=False, signed=False).qmin,
            QScheme(8, symmetric=False, signed=False).qmax) == (0, 255)
    assert (QScheme(4, symmetric=False).qmin, QScheme(4, symmetric=False).qmax) == (-8, 7)
    assert QScheme(4).levels == 15 and QScheme(2).levels == 3


def test_zero_is_exact_and_symmetric_zero_point_is_zero():
    x = torch.tensor([0.0, 0.1, 0.7, 3.3])  # non-negative: asymmetric range still holds 0
    for scheme in (QScheme(8), QScheme(8, symmetric=False, signed=False), QScheme(3)):
        qp = minmax_qparams(x, scheme)
        assert float(dequantize(quantize(x, qp), qp)[0]) == 0.0
    assert int(minmax_qparams(torch.randn(100), QScheme(8)).zero_point) == 0


def test_per_channel_beats_per_tensor_on_a_layer_with_outlier_channels():
    torch.manual_seed(0)
    weight = torch.randn(16, 64) * 0.02
    weight[3] *= 100  # one outlier channel stretches the per-tensor scale for all others
    def error_on_normal_channels(scheme: QScheme) -> float:
        qp = minmax_qparams(weight, scheme)
        error = (dequantize(quantize(weight, qp), qp) - weight).pow(2).mean(dim=1)
        return float(torch.cat([error[:3], error[4:]]).mean())

    per_tensor = error_on_normal_channels(QScheme(8))
    per_channel = error_on_normal_channels(QScheme(8, granularity="channel"))
    assert per_channel < per_tensor / 1000  # ~100x smaller steps: ~10^4 smaller squared error
    assert quantization_error(weight, minmax_qparams(weight, QScheme(8, granularity="channel"))) \
        < quantization_error(weight, minmax_qparams(weight, QScheme(8)))


def test_per_channel_scales_one_per_output_channel_of_a_conv():
    weight = torch.randn(5, 3, 3, 3)
    qp = minmax_qparams(weight, QScheme(8, granularity="channel"))
    assert qp.scale.shape == (5, 1)
    torch.testing.assert_close(qp.scale.reshape(-1),
                               weight.abs().amax(dim=(1, 2, 3)) / 127)
    qp_axis1 = minmax_qparams(weight, QScheme(8, granularity="channel", axis=1))
    assert qp_axis1.scale.shape == (3, 1)
    assert quantize(weight, qp_axis1).shape == weight.shape


def test_fake_quantize_matches_the_round_trip_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    x = (torch.randn(4, 16) * 2).requires_grad_()
    scheme = QScheme(4, symmetric=False, granularity="channel")
    qp = minmax_qparams(x, scheme)
    out = fake_quantize(x, qp)
    torch.testing.assert_close(out, dequantize(quantize(x, qp), qp))
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # nothing clipped: min-max range
    # Clipped values get no gradient.
    y = torch.tensor([-10.0, 0.5, 10.0], requires_grad=True)
    narrow = minmax_qparams(torch.tensor([-1.0, 1.0]), QScheme(8))
    fake_quantize(y, narrow).sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("bad", [0, 1, 9, 16, 2.5])
def test_bits_outside_two_to_eight_are_a_clear_error(bad):
    with pytest.raises(NnzipError, match="bits must be an integer from 2 to 8"):
        QScheme(bits=bad)


def test_other_bad_schemes_are_clear_errors():
    with pytest.raises(NnzipError, match="needs group_size"):
        QScheme(granularity="group")
    with pytest.raises(NnzipError, match="symmetric scheme is signed"):
        QScheme(symmetric=True, signed=False)
    with pytest.raises(NnzipError, match="group_size 5 does not divide the 32"):
        minmax_qparams(torch.randn(4, 32), QScheme(granularity="group", group_size=5))


def test_a_constant_tensor_does_not_divide_by_zero():
    qp = minmax_qparams(torch.zeros(10), QScheme(8))
    assert torch.isfinite(dequantize(quantize(torch.zeros(10), qp), qp)).all()
