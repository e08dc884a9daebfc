import torch

from nnzip.data import calibration_batches
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.quant import QAT, QuantConfig, quantize_static, quantized_layers
from nnzip.quant.qat import quantization_aware_training
from nnzip.recipe import parse_recipe
from nnzip.stage import Context
from nnzip.train import TrainConfig


def _val_accuracy(model, data) -> float:
    return accuracy(predict_logits(model, data.loader("val", batch_size=500)),
                    data.val.tensors[1])


def test_two_bit_qat_recovers_what_two_bit_ptq_loses(lenet300, mnist):
    config = QuantConfig(weight_bits=2)
    batches = calibration_batches(mnist, 4)
    ptq = quantize_static(lenet300, batches, config)
    qat, result = quantization_aware_training(
        lenet300, mnist, batches, config, TrainConfig(epochs=2, lr=1e-3, patience=None))
    ptq_accuracy, qat_accuracy = _val_accuracy(ptq, mnist), _val_accuracy(qat, mnist)
    assert qat_accuracy > ptq_accuracy + 0.01, (ptq_accuracy, qat_accuracy)
    assert result.best_val_accuracy == qat_accuracy  # the kept weights are the rounded ones
    for layer in quantized_layers(qat).values():
        assert layer.mode == "quantize"
        assert set(layer.weight_int.unique().tolist()) <= {-1, 0, 1}  # 2-bit narrow range
    # The input model is untouched.
    assert all(p.requires_grad for p in lenet300.parameters())
    assert not any(True for _ in quantized_layers(lenet300))


def test_qat_stage_from_a_recipe(lenet300, mnist):
    stage = parse_recipe({"stages": [{"qat": {"weight_bits": 4, "finetune_epochs": 1}}]}) \
        .steps[0].stage
    assert isinstance(stage, QAT)
    context = Context(data=mnist, progress=False)
    quantized = stage.apply(lenet300, context)
    assert context.details["layer_bits"] == {"fc1": 4, "fc2": 4, "fc3": 4}
    assert context.details["finetune_epochs"] == 1
    x = mnist.test.tensors[0][:8]
    assert quantized(x).shape == (8, 10) and torch.isfinite(quantized(x)).all()
