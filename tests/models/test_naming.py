"""A report row is named by what the model is (architecture and data), not by its folder."""

from torch import nn

from nnzip.models import create_model, load_model, save_model
from nnzip.models.naming import model_title


def test_zoo_models_are_named_by_architecture_and_data(tmp_path):
    lenet5 = create_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    assert model_title(lenet5, "mnist", fallback="x") == "LeNet-5 (MNIST)"
    resnet = create_model("resnet", input_shape=(3, 32, 32), num_classes=10, depth=32)
    assert model_title(resnet, "cifar10", fallback="x") == "ResNet-32 (cifar10)"
    assert model_title(resnet, None, fallback="x") == "ResNet-32"


def test_a_model_loaded_from_a_cache_folder_keeps_its_spec_name(tmp_path):
    model = create_model("lenet300", input_shape=(1, 8, 8), num_classes=10)
    folder = save_model(model, tmp_path / "lenet300-digits-d785a6554558")
    loaded = load_model(folder)
    assert model_title(loaded, "digits", fallback=folder.stem) == "LeNet-300-100 (8×8 digits)"


def test_a_model_without_a_spec_keeps_the_name_it_was_loaded_by():
    assert model_title(nn.Linear(4, 2), "mnist", fallback="my-model") == "my-model"
