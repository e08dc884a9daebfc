import json

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models import create_model, export_model, load_model, read_spec, save_model
from nnzip.models.io import spec_digest

SHAPE = (1, 28, 28)


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet8", input_shape=SHAPE, num_classes=10)
    model.train()
    model(torch.rand(16, *SHAPE))  # non-trivial BN running statistics must survive the trip
    return model.eval()


@pytest.fixture
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet5", input_shape=SHAPE, num_classes=10).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1))


def test_save_load_reproduces_outputs_exactly(tmp_path, resnet, x):
    folder = save_model(resnet, tmp_path / "net", extra={"val_accuracy": 0.5})
    loaded = load_model(folder)
    assert torch.equal(loaded(x), resnet(x)) and not loaded.training
    assert loaded.nnzip_spec == resnet.nnzip_spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]  # no temp entries left
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "spec.json"]
    spec = read_spec(folder)
    assert spec["format"] == "nnzip-model" and spec["format_version"] == 1
    assert spec["arch"] == "resnet8" and spec["extra"] == {"val_accuracy": 0.5}
    assert len(spec["weights_sha256"]) == 64 and spec["nnzip_version"]


def test_save_replaces_an_earlier_model_folder(tmp_path, resnet, lenet, x):
    save_model(resnet, tmp_path / "net")
    save_model(lenet, tmp_path / "net")
    assert torch.equal(load_model(tmp_path / "net")(x), lenet(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]


def test_save_refuses_to_replace_an_unrelated_folder(tmp_path, lenet):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(NnzipError, match="not an nnzip model folder"):
        save_model(lenet, tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def test_user_architecture_save_points_to_torch_export(tmp_path):
    with pytest.raises(NnzipError, match="torch.export"):
        save_model(nn.Sequential(nn.Linear(3, 2)), tmp_path / "user")
    assert not any(tmp_path.iterdir())


def test_model_reshaped_after_creation_is_not_saved_as_a_zoo_model(tmp_path, lenet):
    lenet.fc1 = nn.Linear(800, 250)  # what structured pruning does to a layer
    lenet.fc2 = nn.Linear(250, 10)
    with pytest.raises(NnzipError, match="fc1.weight .*torch.export"):
        save_model(lenet, tmp_path / "net")
    assert not any(tmp_path.iterdir())


def test_flipped_weight_bytes_are_reported_as_corrupt(tmp_path, lenet):
    folder = save_model(lenet, tmp_path / "net")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(NnzipError, match="corrupt"):
        load_model(folder)


def test_truncated_weights_are_an_error(tmp_path, lenet):
    folder = save_model(lenet, tmp_path / "net")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(NnzipError, match="truncated"):
        load_model(folder)


def test_weights_that_do_not_fit_the_spec_list_the_keys(tmp_path):
    folder = save_model(create_model("lenet300", input_shape=SHAPE, num_classes=10),
                        tmp_path / "net")
    spec = read_spec(folder)
    forged = {**spec, "arch": "lenet5"}
    (folder / "spec.json").write_text(json.dumps({**forged, "spec_sha256": spec_digest(forged)}))
    with pytest.raises(NnzipError, match="missing: .*conv1.weight.*unexpected: fc3.bias") as info:
        load_model(folder)
    assert "fc1.weight (file (300, 784), model (500, 800))" in str(info.value)


def test_export_program_round_trip(tmp_path, lenet, x):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(lenet, (x,)), path)
    torch.testing.assert_close(load_model(path)(x), lenet(x), rtol=0, atol=0)


def test_torchscript_needs_trust_and_round_trips(tmp_path, resnet, x):
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(resnet), path)
    with pytest.raises(NnzipError, match="--trust-pickle"):  # its code runs while loading
        load_model(path)
    torch.testing.assert_close(load_model(path, trust_pickle=True)(x), resnet(x), rtol=0, atol=0)


def test_pickled_model_needs_trust(tmp_path, lenet, x):
    path = tmp_path / "model.pt"
    torch.save(lenet, path)
    with pytest.raises(NnzipError, match="--trust-pickle"):
        load_model(path)
    assert torch.equal(load_model(path, trust_pickle=True)(x), lenet(x))


def test_pickled_state_dict_is_not_a_model(tmp_path, lenet):
    path = tmp_path / "weights.pth"
    torch.save(lenet.state_dict(), path)
    with pytest.raises(NnzipError, match="state_dict"):
        load_model(path, trust_pickle=True)


@pytest.mark.parametrize("kind", ["pt2", "ts", "pt"])
def test_truncated_model_files_name_the_file(tmp_path, lenet, x, kind):
    path = tmp_path / f"model.{kind}"
    if kind == "pt2":
        torch.export.save(torch.export.export(lenet, (x,)), path)
    elif kind == "ts":
        torch.jit.save(torch.jit.script(lenet), path)
    else:
        torch.save(lenet, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NnzipError, match="truncated") as info:
        load_model(path, trust_pickle=True)
    assert str(path) in str(info.value)


def test_missing_path_and_zoo_name_are_explained(tmp_path):
    with pytest.raises(NnzipError, match="not found"):
        load_model(tmp_path / "nothing.pt2")
    with pytest.raises(NnzipError, match="create_model"):
        load_model("lenet5")


def test_unknown_file_is_an_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(NnzipError, match="not a model file"):
        load_model(path)


def test_exported_token_model_takes_any_batch_and_sentence_length(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 3)).eval()
    loaded = load_model(export_model(model, tmp_path / "tokens.pt2",
                                     torch.randint(0, 50, (2, 7))))
    for shape in ((2, 7), (3, 12)):
        ids = torch.randint(0, 50, shape)
        assert torch.equal(loaded(ids), model(ids))
