"""What a model is called in a report: what it is (architecture and data set), not its folder.

A folder written by the zoo cache is ``lenet5-mnist-d785a6554558``: the hash tells a reader
nothing. A zoo model carries its spec (``model.nnzip_spec``), so the report can say
"LeNet-5 (MNIST)" instead; a model without a spec (a user's pickle, an ONNX graph, a Hugging Face
encoder) keeps the name it was loaded by.
"""

from __future__ import annotations

from torch import nn

from nnzip.models.zoo import model_spec

#: How each zoo architecture is written in prose (the papers' spelling).
ARCH_TITLES = {
    "lenet300": "LeNet-300-100", "lenet5": "LeNet-5", "lenet5_small": "LeNet-5 small",
    "resnet8": "ResNet-8", "resnet20": "ResNet-20", "mobilenetv2": "MobileNetV2",
    "gpt": "GPT", "vit": "ViT",
}
#: How the built-in data sets are written; a user's data keeps its own name.
DATA_TITLES = {"mnist": "MNIST", "digits": "8×8 digits", "stsb-lm": "STS-B"}


def arch_title(spec: dict) -> str:
    """'ResNet-20' for {"arch": "resnet20"}, 'ResNet-32' for {"arch": "resnet", depth 32}."""
    arch = str(spec.get("arch"))
    if arch == "resnet" and "depth" in (spec.get("kwargs") or {}):
        return f"ResNet-{spec['kwargs']['depth']}"
    return ARCH_TITLES.get(arch, arch)


def model_title(model: nn.Module, data_name: str | None, fallback: str) -> str:
    """'LeNet-5 (MNIST)' for a zoo model measured on MNIST; ``fallback`` for a model without a
    zoo spec (it cannot say what it is)."""
    spec = model_spec(model)
    if spec is None:
        return fallback
    title = arch_title(spec)
    if not data_name:
        return title
    return f"{title} ({DATA_TITLES.get(data_name, data_name)})"
