"""Helpers of the generality suite (importable by name: test folders are not packages)."""

import torch
from torch.utils.data import TensorDataset

from nnzip.data.splits import DataSplits
from nnzip.models.examples import EXAMPLES, example_model

FAMILIES = list(EXAMPLES)


def example(name: str, batch: int = 8):
    """A fresh model of family ``name`` and a batch of inputs of its dtype and shape."""
    return example_model(name, batch=batch)


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).norm() / reference.norm().clamp_min(1e-12))


def example_splits(name: str, samples: int = 64, seed: int = 0) -> DataSplits:
    """Random inputs of the family's shape and dtype, labelled by the model's own argmax.

    Enough for calibration and a short fine-tune; the labels are the float model's predictions,
    so accuracy on them is agreement with the original model.
    """
    model, inputs = example_model(name, batch=samples, seed=seed)
    with torch.no_grad():
        outputs = model(inputs)
    labels = outputs.argmax(dim=-1)
    third = samples // 3
    parts = [TensorDataset(inputs[i * third:(i + 1) * third], labels[i * third:(i + 1) * third])
             for i in range(3)]
    return DataSplits(name=f"example-{name}", train=parts[0], val=parts[1], test=parts[2],
                      num_classes=int(outputs.shape[-1]), input_shape=tuple(inputs.shape[1:]))
