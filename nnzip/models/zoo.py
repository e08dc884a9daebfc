"""The model zoo: a name, an input shape and a class count in, a freshly initialised model out.

Layer sizes that follow from the data (input features, channels, image size) are derived from
``input_shape`` so a user never states them twice. Every model remembers how it was made in
``model.nnzip_spec`` — that plain dict is what :func:`nnzip.models.save_model` writes, and what
lets :func:`nnzip.models.load_model` rebuild the architecture without pickle.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models.causal_lm import CausalLM
from nnzip.models.lenet import LeNet5, LeNet300100
from nnzip.models.mobilenet import MobileNetV2
from nnzip.models.resnet import CifarResNet
from nnzip.models.vit import VisionTransformer

InputShape = tuple[int, ...]

#: Bounds on what a spec (which may come from an untrusted file) can ask for: the widest input
#: axis, the most input values per sample, and the most classes (a language model's vocabulary).
MAX_INPUT_DIM = 1 << 16
MAX_INPUT_VALUES = 1 << 26
MAX_CLASSES = 1 << 20


def _int(low: int, high: int) -> Any:
    return Annotated[int, Strict(), Field(ge=low, le=high)]


class _Options(BaseModel):
    """An architecture's options, type- and range-checked before anything is built.

    The bounds are generous for real use (ResNet-1202 is the deepest of He et al. 2016) and stop
    a spec that would take minutes or gigabytes just to construct (issue 15: ``depth: 1200002``).
    A field left out keeps the constructor's default; ``None`` is never a valid value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class LeNet300Options(_Options):
    pass


class LeNet5Options(_Options):
    channels: tuple[_int(1, 4096), _int(1, 4096)] = None
    hidden: _int(1, 1 << 16) = None


class ResNetOptions(_Options):
    depth: _int(1, 1202) = None  # 6n + 2 is checked (and explained) by CifarResNet
    width: _int(1, 1024) = None


class MobileNetV2Options(_Options):
    width_mult: Annotated[float, Strict(), Field(gt=0, le=8, allow_inf_nan=False)] = None


class GPTOptions(_Options):
    n_embd: _int(1, 8192) = None
    n_layer: _int(1, 128) = None
    n_head: _int(1, 128) = None
    n_inner: _int(1, 1 << 16) | None = None
    dropout: Annotated[float, Strict(), Field(ge=0, lt=1, allow_inf_nan=False)] = None


class ViTOptions(_Options):
    hidden: _int(1, 4096) = None
    depth: _int(1, 128) = None
    heads: _int(1, 128) = None
    mlp_dim: _int(1, 1 << 15) = None
    patch_size: _int(1, 256) = None
    stem_channels: _int(0, 1024) = None


def _flat_input(arch: str, input_shape: InputShape) -> dict[str, Any]:
    return {"in_features": math.prod(input_shape)}


def _image_channels(arch: str, input_shape: InputShape) -> dict[str, Any]:
    if len(input_shape) != 3:
        # A 3-D .npz array is read as (N, C, L) signals; older nnzip read it as grey images.
        grey = (" (grey images (N, H, W) in a .npz need layout='NHW' to gain a channel axis)"
                if len(input_shape) == 2 else "")
        raise NnzipError(f"{arch} needs image inputs shaped (channels, height, width), got "
                         f"{tuple(input_shape)}: use lenet300 for flat feature vectors{grey}")
    return {"in_channels": input_shape[0]}


def _token_positions(arch: str, input_shape: InputShape) -> dict[str, Any]:
    if len(input_shape) != 1:
        raise NnzipError(f"{arch} takes token ids shaped (positions,) per sample, got "
                         f"{tuple(input_shape)}: use token data such as --data stsb-lm")
    return {"n_positions": input_shape[0]}


def _image_channels_and_size(arch: str, input_shape: InputShape) -> dict[str, Any]:
    return {**_image_channels(arch, input_shape), "input_size": tuple(input_shape[1:])}


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo architecture.

    ``derive`` maps the input shape to constructor arguments; ``fixed`` are arguments the name
    implies (resnet8 is depth 8) and the user therefore may not pass.
    """

    model_class: type[nn.Module]
    description: str
    derive: Callable[[str, InputShape], dict[str, Any]]
    schema: type[_Options]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def options(self, arch: str, input_shape: InputShape) -> set[str]:
        """Constructor arguments a user may still set."""
        parameters = set(inspect.signature(self.model_class).parameters)
        derived = set(self.derive(arch, input_shape))
        return parameters - derived - set(self.fixed) - {"num_classes"}


ZOO: dict[str, ZooEntry] = {
    "lenet300": ZooEntry(LeNet300100, "LeNet-300-100, fully connected (266k params on MNIST)",
                         _flat_input, LeNet300Options),
    "lenet5": ZooEntry(LeNet5, "Caffe LeNet-5 of Deep Compression (431k params on MNIST)",
                       _image_channels_and_size, LeNet5Options),
    "lenet5_small": ZooEntry(LeNet5, "LeNet-5 with 10/20 filters and 100 hidden units (38k "
                             "params on MNIST, 11× fewer): a distillation student",
                             _image_channels_and_size, LeNet5Options,
                             {"channels": [10, 20], "hidden": 100}),
    "resnet8": ZooEntry(CifarResNet, "CIFAR ResNet-8 (He et al. 2016), 78k params",
                        _image_channels, ResNetOptions, {"depth": 8}),
    "resnet20": ZooEntry(CifarResNet, "CIFAR ResNet-20 (He et al. 2016), 0.27M params",
                         _image_channels, ResNetOptions, {"depth": 20}),
    "resnet": ZooEntry(CifarResNet, "CIFAR ResNet of any depth 6n+2 (option: depth)",
                       _image_channels, ResNetOptions),
    "mobilenetv2": ZooEntry(MobileNetV2, "small MobileNetV2 with depthwise convs",
                            _image_channels, MobileNetV2Options),
    "gpt": ZooEntry(CausalLM, "GPT-2-style causal LM from a transformers config, LM head tied to "
                    "the embedding (4.7M params on stsb-lm, 3.9M of them the embedding)",
                    _token_positions, GPTOptions),
    "vit": ZooEntry(VisionTransformer, "small vision transformer: transformers' ViT after a conv "
                    "stem, 4 layers of 4 heads (173k params on MNIST; needs nnzip[transformers])",
                    _image_channels_and_size, ViTOptions),
}


def _check_shape(input_shape: Any, num_classes: Any) -> InputShape:
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else ()
    if not 1 <= len(shape) <= 4 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_INPUT_DIM
            for d in shape) or math.prod(shape) > MAX_INPUT_VALUES:
        raise NnzipError(f"input_shape must be 1 to 4 positive ints without the batch axis, each "
                         f"at most {MAX_INPUT_DIM} and {MAX_INPUT_VALUES:,} values in all, e.g. "
                         f"(1, 28, 28), got {input_shape!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) \
            or not 1 <= num_classes <= MAX_CLASSES:
        raise NnzipError(f"num_classes must be an int from 1 to {MAX_CLASSES:,}, got "
                         f"{num_classes!r}")
    return shape


def check_options(arch: str, kwargs: Mapping[str, Any]) -> None:
    """Type- and range-check ``arch``'s options (:class:`_Options`), before anything is built."""
    try:
        ZOO[arch].schema.model_validate(dict(kwargs))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'options'}={item['input']!r}: "
            f"{item['msg']}" for item in error.errors())
        raise NnzipError(f"{arch} option(s) out of range or of the wrong type ({problems}): "
                         "pass sizes within the stated bounds") from None


def check_spec(arch: Any, input_shape: Any, num_classes: Any, kwargs: Any) -> InputShape:
    """Check a zoo spec (which may come from a file) before anything is built: a known
    architecture, a bounded input shape and class count, options it takes, within their bounds
    (:class:`_Options`); returns the input shape as a tuple."""
    if not isinstance(arch, str) or arch not in ZOO:
        raise NnzipError(f"unknown architecture {arch!r}: choose one of {', '.join(ZOO)}")
    entry = ZOO[arch]
    shape = _check_shape(input_shape, num_classes)
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise NnzipError(f"{arch} options must be a mapping of names to values, got "
                         f"{kwargs!r}")
    allowed = entry.options(arch, shape)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise NnzipError(f"{arch} does not take option(s) {', '.join(unknown)}: valid options are "
                         f"{', '.join(sorted(allowed)) or 'none'} (input sizes come from "
                         "input_shape)")
    check_options(arch, kwargs)
    try:
        json.dumps(dict(kwargs))
    except (TypeError, ValueError) as exc:
        raise NnzipError(f"{arch} options must be plain JSON values (numbers, strings), got "
                         f"{kwargs!r}: pass numbers or strings") from exc
    return shape


def create_model(arch: str, *, input_shape: tuple[int, ...], num_classes: int,
                 **kwargs: Any) -> nn.Module:
    """A new ``arch`` model for inputs of ``input_shape`` (no batch axis) and ``num_classes``.

    ``kwargs`` are the architecture's remaining options (``depth`` for "resnet", ``width``,
    ``width_mult``); they must be JSON values, since they are saved with the model.
    """
    shape = check_spec(arch, input_shape, num_classes, kwargs)
    entry = ZOO[arch]
    model = entry.model_class(**entry.derive(arch, shape), **entry.fixed, **kwargs,
                              num_classes=num_classes)
    model.nnzip_spec = {"arch": arch, "kwargs": dict(kwargs), "input_shape": list(shape),
                        "num_classes": num_classes}
    return model


def model_spec(model: nn.Module) -> dict | None:
    """A copy of how a zoo model was made (arch, kwargs, input_shape, num_classes), else None."""
    spec = getattr(model, "nnzip_spec", None)
    if not isinstance(spec, dict):
        return None
    try:
        return json.loads(json.dumps(spec))  # a deep copy that also proves it can be saved
    except (TypeError, ValueError) as exc:
        raise NnzipError(f"model.nnzip_spec is not plain JSON ({exc}): recreate the model with "
                         "create_model") from exc
