import math

import pytest
import torch
import torch.nn.functional as F

from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.quant import (
    QAT,
    QuantConfig,
    calibrate,
    convert,
    lsq_fake_quantize,
    lsq_gradient_scale,
    prepare,
    quantize_static,
    quantized_layers,
)
from nnzip.recipe import parse_recipe


def test_gradient_scale_is_one_over_sqrt_of_count_times_qp():
    assert lsq_gradient_scale(800, 7) == pytest.approx(1 / math.sqrt(800 * 7))
    assert lsq_gradient_scale(1, 1) == 1.0
    with pytest.raises(NnzipError, match="N ≥ 1"):
        lsq_gradient_scale(0, 7)


def test_step_gradient_is_eq_3_of_the_paper_times_the_gradient_scale():
    x = torch.tensor([0.26, -0.74, 0.1, 3.0, -5.0, 0.0], requires_grad=True)
    step = torch.tensor(0.2, requires_grad=True)
    out = lsq_fake_quantize(x, step, -7, 7, gradient_scale=0.25)
    v = x.detach() / 0.2
    q = torch.clamp(torch.round(v), -7, 7)
    assert torch.allclose(out.detach(), q * 0.2)
    out.sum().backward()
    inside = (v >= -7) & (v <= 7)
    # ∂x̂/∂s = q − v inside the range, the clipped level outside (Esser et al. 2020, eq. 3).
    expected = 0.25 * torch.where(inside, q - v, q).sum()
    assert step.grad.item() == pytest.approx(expected.item(), rel=1e-5)
    assert step.grad.item() != 0
    # The input's gradient passes straight through inside the range and stops where clipped.
    assert torch.equal(x.grad, inside.float())


def test_lsq_with_a_zero_point_and_the_sign_levels():
    from nnzip.quant.lsq import sign_levels

    x = torch.tensor([0.05, 0.3, 0.9], requires_grad=True)
    step = torch.tensor(0.1, requires_grad=True)
    out = lsq_fake_quantize(x, step, 0, 3, zero_point=torch.tensor(2))
    # round(x/s) + z = 0 + 2 (round half to even), 5, 11 → clipped to 2, 3, 3 → (q − z)·s.
    assert torch.allclose(out, torch.tensor([0.0, 0.1, 0.1]))
    binary = lsq_fake_quantize(torch.tensor([-0.3, 0.0, 0.02]), torch.tensor(0.5), -1, 1,
                               levels=sign_levels)
    assert binary.tolist() == [-0.5, 0.5, 0.5]


def _lsq_model(model, mnist, config):
    prepared = prepare(model, config)
    calibrate(prepared, calibration_batches(mnist, 2))
    convert(prepared)
    for layer in quantized_layers(prepared).values():
        layer.learn_step_sizes()
        layer.set_mode("train")
    return prepared


@pytest.mark.parametrize("config", [QuantConfig(weight_bits=2, estimator="lsq"),
                                    QuantConfig(weight_format="binary", estimator="lsq")])
def test_short_lsq_training_lowers_the_loss_and_freezes_on_the_learned_steps(lenet5, mnist,
                                                                             config):
    ptq = quantize_static(lenet5, calibration_batches(mnist, 2),
                          QuantConfig(weight_bits=2) if config.weight_format == "affine"
                          else QuantConfig(weight_format="binary"))
    model = _lsq_model(lenet5, mnist, config)
    layers = quantized_layers(model)
    fc1 = layers["fc1"]
    assert torch.equal(fc1.weight_step.detach(), quantized_layers(ptq)["fc1"].weight_qparams.scale)
    assert fc1.weight_step.shape == (500, 1) and fc1.input_step.numel() == 1
    initial_steps = {name: layer.weight_step.detach().clone() for name, layer in layers.items()}

    x, y = mnist.train.tensors[0][:256], mnist.train.tensors[1][:256]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert fc1.weight_step.grad.abs().sum() > 0 and fc1.input_step.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(not torch.equal(initial_steps[name], layer.weight_step.detach())
               for name, layer in layers.items())

    with torch.no_grad():
        trained = model(x)
    learned_input_step = fc1.input_step.detach().clone()
    learned_weight_step = fc1.weight_step.detach().clone()
    for layer in layers.values():
        layer.finish_training()
    assert fc1.weight_step is None and fc1.mode == "quantize"
    assert torch.equal(fc1.weight_qparams.scale, learned_weight_step)
    assert torch.equal(fc1.input_qparams.scale, learned_input_step)
    with torch.no_grad():  # the frozen integer model computes what training computed
        assert torch.equal(model(x), trained)

    state = model.state_dict()
    assert not any(key.endswith("_step") for key in state)
    bits = fc1.weight_scheme.bits
    assert state["fc1.weight_packed"].numel() == 800 * 500 * bits // 8
    fresh = prepare(lenet5, QuantConfig(weight_bits=2)
                    if config.weight_format == "affine" else QuantConfig(weight_format="binary"))
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), model(x))


def test_lsq_layer_gradient_uses_per_channel_count(lenet5, mnist):
    model = _lsq_model(lenet5, mnist, QuantConfig(weight_bits=4, estimator="lsq"))
    fc1 = quantized_layers(model)["fc1"]
    fc1.layer.weight.requires_grad_(False)
    weight = fc1.layer.weight.reshape(500, -1)
    fc1._lsq_weight().sum().backward()
    step = fc1.weight_step.detach()
    v = weight / step
    q = torch.clamp(torch.round(v), -7, 7)
    per_channel = torch.where((v >= -7) & (v <= 7), q - v, q).sum(dim=1, keepdim=True)
    expected = per_channel / math.sqrt(800 * 7)  # N = 800 weights per channel, Qp = 7
    assert torch.allclose(fc1.weight_step.grad, expected, rtol=1e-3, atol=1e-5)
    assert expected.abs().max() > 1e-2  # a real, non-zero gradient


def test_lsq_options_are_validated_up_front(lenet5, mnist):
    with pytest.raises(NnzipError, match="use quantization_aware_training"):
        quantize_static(lenet5, calibration_batches(mnist, 1), QuantConfig(estimator="lsq"))
    with pytest.raises(NnzipError, match="break pow2"):
        QuantConfig(weight_format="pow2", weight_bits=4, estimator="lsq")
    with pytest.raises(NnzipError, match=r"stage 1 \(quantize\).*use the qat stage"):
        parse_recipe({"stages": [{"quantize": {"estimator": "lsq"}}]})
    with pytest.raises(NnzipError, match=r"stage 1 \(qat\).*break pow2"):
        parse_recipe({"stages": [{"qat": {"weight_format": "pow2", "estimator": "lsq"}}]})
    with pytest.raises(NnzipError, match=r"binary weights take 1 bit.*leave weight_bits out"):
        parse_recipe({"stages": [{"qat": {"weight_format": "binary", "weight_bits": 4}}]})
    with pytest.raises(NnzipError, match="mode dynamic quantizes affine"):
        parse_recipe({"stages": [{"quantize": {"mode": "dynamic", "weight_format": "ternary"}}]})
    stage = parse_recipe({"stages": [{"qat": {"weight_format": "ternary", "estimator": "lsq",
                                              "lr": 1e-3}}]}).steps[0].stage
    assert isinstance(stage, QAT)
    assert stage.config().estimator == "lsq" and stage.config().weight_format == "ternary"


def test_binary_lsq_qat_stage_keeps_what_validation_measured(lenet300, mnist):
    from nnzip.evaluate.accuracy import accuracy, predict_logits
    from nnzip.stage import Context

    stage = parse_recipe({"stages": [{"qat": {"weight_format": "binary", "estimator": "lsq",
                                              "lr": 1e-3, "finetune_epochs": 1}}]}).steps[0].stage
    context = Context(data=mnist, progress=False)
    quantized = stage.apply(lenet300, context)
    assert context.details["weight_format"] == {"fc1": "binary", "fc2": "binary", "fc3": "binary"}
    assert context.details["layer_bits"] == {"fc1": 1, "fc2": 1, "fc3": 1}
    val = accuracy(predict_logits(quantized, mnist.loader("val", batch_size=500)),
                   mnist.val.tensors[1])
    # The frozen 1-bit model is the one validation scored during training (learned steps kept).
    assert val == context.details["finetune_best_val_accuracy"] > 0.8
    for layer in quantized_layers(quantized).values():
        assert layer.mode == "quantize" and layer.weight_step is None
        assert set(layer.weight_int.unique().tolist()) == {-1, 1}
