"""The model zoo and model files: create_model by name, save_model / load_model on disk."""

from nnzip.models.io import export_model, load_model, read_spec, save_model
from nnzip.models.lenet import LeNet5, LeNet300100
from nnzip.models.mobilenet import MobileNetV2
from nnzip.models.resnet import CifarResNet
from nnzip.models.zoo import ZOO, ZooEntry, create_model, model_spec

__all__ = [
    "ZOO", "CifarResNet", "LeNet5", "LeNet300100", "MobileNetV2", "ZooEntry", "create_model",
    "export_model", "load_model", "model_spec", "read_spec", "save_model",
]
