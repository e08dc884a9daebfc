"""The shared fit loop: real accuracy on MNIST, hooks, early stopping, checkpoint and resume."""

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.models import create_model
from nnzip.train import TrainConfig, fit, train_zoo_model


def _test_accuracy(model, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", 512)), data.test.tensors[1])


def test_lenet5_reaches_975_percent_on_the_10000_mnist_test_images(lenet5, mnist):
    assert len(mnist.test) == 10_000
    assert _test_accuracy(lenet5, mnist) >= 0.975


def test_lenet300_reaches_95_percent_on_the_10000_mnist_test_images(lenet300, mnist):
    assert _test_accuracy(lenet300, mnist) >= 0.95


def test_train_zoo_model_reuses_the_cache_instead_of_retraining(zoo_cache, mnist, lenet5):
    cached = train_zoo_model("lenet5", mnist, cache_dir=zoo_cache, progress=False)
    for key, value in lenet5.state_dict().items():
        assert torch.equal(value, cached.state_dict()[key])
    assert len(list(zoo_cache.glob("lenet5-mnist-*"))) == 1
    assert not list(zoo_cache.glob("*.ckpt")), "the checkpoint is removed once the model is saved"


def _mlp(digits, seed=0):
    torch.manual_seed(seed)
    return create_model("lenet300", input_shape=digits.input_shape,
                        num_classes=digits.num_classes)


def test_step_hook_keeps_masked_weights_at_zero_through_training(digits):
    model = _mlp(digits)
    mask = (torch.rand_like(model.fc1.weight) > 0.5).float()
    model.fc1.weight.data *= mask
    steps = []

    def keep_mask(m, step):
        m.fc1.weight.data *= mask
        steps.append(step)

    fit(model, digits, TrainConfig(epochs=2, patience=None), step_hook=keep_mask, progress=False)
    assert torch.all(model.fc1.weight[mask == 0] == 0)
    assert (model.fc1.weight[mask == 1] != 0).float().mean() > 0.99
    assert steps == list(range(len(steps))) and len(steps) > 10


def test_loss_hook_replaces_the_objective(digits):
    model = _mlp(digits)
    seen = []

    def loss_fn(outputs, targets, inputs):
        seen.append((outputs.shape[0], inputs.shape[0]))
        return nn.functional.cross_entropy(outputs, targets)

    result = fit(model, digits, TrainConfig(epochs=1), loss_fn=loss_fn, progress=False)
    assert seen and all(batch == inputs for batch, inputs in seen)
    assert result.best_val_accuracy > 0.8


def test_early_stopping_stops_when_validation_stops_improving(digits):
    model = _mlp(digits)
    # A learning rate this small leaves the validation accuracy unchanged after the first epoch.
    result = fit(model, digits, TrainConfig(epochs=20, lr=1e-12, patience=2), progress=False)
    assert result.stopped_early
    assert result.epochs_run == 3 and result.best_epoch == 1


def test_an_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(digits, tmp_path):
    config = TrainConfig(epochs=4, patience=None, seed=3)
    straight = _mlp(digits)
    fit(straight, digits, config, progress=False)

    interrupted = _mlp(digits)
    checkpoint = tmp_path / "run.ckpt"
    steps_per_epoch = len(digits.train) // config.batch_size

    def stop_in_epoch_three(model, step):
        if step == 2 * steps_per_epoch + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, digits, config, step_hook=stop_in_epoch_three, checkpoint=checkpoint,
            progress=False)
    resumed = _mlp(digits, seed=99)  # different start: everything must come from the checkpoint
    result = fit(resumed, digits, config, checkpoint=checkpoint, progress=False)
    assert result.epochs_run == 4 and len(result.history) == 4
    for key, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6), key
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"], "no temporary files remain"


def test_a_finished_checkpoint_is_loaded_without_training_again(digits, tmp_path):
    config = TrainConfig(epochs=2, patience=None)
    first = _mlp(digits)
    fit(first, digits, config, checkpoint=tmp_path / "c.ckpt", progress=False)
    calls = []
    again = _mlp(digits, seed=5)
    fit(again, digits, config, checkpoint=tmp_path / "c.ckpt", progress=False,
        step_hook=lambda m, s: calls.append(s))
    assert calls == []
    assert torch.equal(first.fc1.weight, again.fc1.weight)


def test_corrupt_checkpoint_is_a_clear_error(digits, tmp_path):
    checkpoint = tmp_path / "bad.ckpt"
    checkpoint.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(NnzipError, match="corrupt.*delete it"):
        fit(_mlp(digits), digits, TrainConfig(epochs=1), checkpoint=checkpoint, progress=False)


def test_checkpoint_from_other_options_is_refused(digits, tmp_path):
    checkpoint = tmp_path / "c.ckpt"
    fit(_mlp(digits), digits, TrainConfig(epochs=1), checkpoint=checkpoint, progress=False)
    with pytest.raises(NnzipError, match="other training options"):
        fit(_mlp(digits), digits, TrainConfig(epochs=1, lr=0.5), checkpoint=checkpoint,
            progress=False)


def test_diverging_loss_is_a_clear_error(digits):
    def nan_loss(outputs, targets, inputs):
        return outputs.sum() * float("nan")

    with pytest.raises(NnzipError, match="diverged.*learning rate"):
        fit(_mlp(digits), digits, TrainConfig(epochs=1), loss_fn=nan_loss, progress=False)


def test_bad_options_are_rejected_before_training():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
