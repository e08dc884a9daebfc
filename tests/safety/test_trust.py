"""Loading trusts nothing: no code runs from a model file, corrupt or poisoned models are refused.

Each malicious file here runs code the moment it is unpickled (or, for TorchScript, loaded): it
creates a marker file. The tests assert that no marker appears through any command that takes a
model, that the refusal is one line naming ``--trust-pickle``, and that corrupt (bit-flipped,
NaN-poisoned, dtype-forged) models are refused instead of measured.
"""

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import nnzip
from nnzip.cli import main
from nnzip.errors import NnzipError
from nnzip.models import create_model, export_model, load_model, save_model
from nnzip.models.io import SPEC_FILE, WEIGHTS_FILE, _sha256, spec_digest

INPUT_SHAPE = (1, 8, 8)  # scikit-learn's digits: the fastest real data the CLI reads
FAST = ["--repeats", "1", "--robustness-samples", "20", "--no-progress"]


class RunsCode:
    """Pickled, this object becomes ``eval(expression)`` when unpickled: the expression creates
    the marker file and then evaluates to a valid value (inputs, a tensor, a model)."""

    def __init__(self, marker: Path, value_expression: str) -> None:
        self.expression = (f"(open({str(marker)!r}, 'w').close(), {value_expression})[1]")

    def __reduce__(self):
        return eval, (self.expression,)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet300", input_shape=INPUT_SHAPE, num_classes=10).eval()


def _example() -> torch.Tensor:
    return torch.randn(2, *INPUT_SHAPE)


def _rewrite(path: Path, replace: dict[str, bytes]) -> None:
    """Rewrite a zip archive with some entries (matched by name suffix) replaced."""
    entries = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            data = archive.read(info)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            entries.append((info.filename, data))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data)


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def evil_sample_inputs_pt2(folder: Path, marker: Path) -> Path:
    """A real program whose sample inputs unpickle to code that runs, then to valid inputs."""
    path = export_model(_tiny_model(), folder / "sample_inputs.pt2", _example())
    inputs = "((__import__('torch').randn(2, 1, 8, 8),), {})"
    _rewrite(path, {"data/sample_inputs/model.pt": _pickled(RunsCode(marker, inputs))})
    return path


def evil_weight_pt2(folder: Path, marker: Path) -> Path:
    """A real program one of whose weights is stored as a ``use_pickle`` payload that runs code."""
    path = export_model(_tiny_model(), folder / "weight.pt2", _example())
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(name))
    fqn, meta = next(iter(config["config"].items()))
    meta["use_pickle"] = True
    shape = list(_tiny_model().state_dict()[fqn].shape)
    torch_ = "__import__('torch')"
    payload = RunsCode(marker, f"{torch_}.nn.Parameter({torch_}.zeros({shape}))")
    _rewrite(path, {"model_weights_config.json": json.dumps(config).encode(),
                    f"data/weights/{meta['path_name']}": _pickled(payload)})
    return path


def evil_pickle(folder: Path, marker: Path) -> Path:
    path = folder / "model.pt"
    torch.save(RunsCode(marker, "__import__('torch').nn.Linear(64, 10)"), path)
    return path


class _ScriptedWithSetstate(nn.Module):
    """TorchScript whose ``__setstate__`` (run by torch.jit.load) writes a file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = torch.zeros(10, 64)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.t()

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return self.weight, self.marker, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        torch.save(torch.ones(1), state[1])  # any file TorchScript can name
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[2]


def evil_torchscript(folder: Path, marker: Path) -> Path:
    path = folder / "model.ts"
    torch.jit.save(torch.jit.script(_ScriptedWithSetstate(str(marker))), path)
    return path


def _hf_folder(folder: Path, *, bin_only: bool) -> Path:
    """A tiny BERT with MiniLM's tokenizer; weights as pytorch_model.bin if ``bin_only``."""
    from transformers import BertConfig, BertModel

    from nnzip.models.hf import minilm_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    if bin_only:  # transformers 5 writes safetensors only: the older pickled form by hand
        torch.save(BertModel(config).state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, folder / name)
    return folder


def evil_hf_bin(folder: Path, marker: Path) -> Path:
    hf = _hf_folder(folder / "hf", bin_only=True)
    state = torch.load(hf / "pytorch_model.bin", weights_only=True)
    (hf / "pytorch_model.bin").write_bytes(_pickled(_WithState(marker, state)))
    return hf


class _WithState:
    """Unpickles to the marker being created, then to the real state dict (passed as an
    argument the pickle carries, so the load would otherwise succeed)."""

    def __init__(self, marker: Path, state: dict) -> None:
        self.marker, self.state = marker, state

    def __reduce__(self):
        return eval, (f"(open({str(self.marker)!r}, 'w').close(), s)[1]", {"s": self.state})


EVIL = {"pt2-sample-inputs": evil_sample_inputs_pt2, "pt2-pickled-weight": evil_weight_pt2,
        "pickle": evil_pickle, "torchscript": evil_torchscript}


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    return save_model(_tiny_model(), tmp_path_factory.mktemp("benign") / "mlp")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "finetune.yaml"
    path.write_text("name: finetune\nstages:\n  - finetune:\n      epochs: 1\n")
    return path


def _argv(command: str, role: str, evil: Path, benign: Path, recipe: Path, out: Path
          ) -> list[str]:
    model, reference = (str(evil), None) if role == "model" else (str(benign), str(evil))
    argv = [command, "--model", model, "--no-progress"]
    if reference:
        argv += ["--reference", reference]
    if command in ("eval", "compress", "deploy"):
        argv += ["--data", "digits", "--out", str(out)]
    if command == "compress":
        argv += ["--recipe", str(recipe)]
    return argv


ROUTES = [("eval", "model"), ("eval", "reference"), ("compress", "model"), ("deploy", "model"),
          ("deploy", "reference"), ("sts", "model")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["pt2-pickled-weight", "pickle", "torchscript"])
@pytest.mark.parametrize(("command", "role"), ROUTES)
def test_no_command_runs_code_from_a_model_file(kind, command, role, tmp_path, capsys,
                                                 digits_model, recipe):
    marker = tmp_path / "MARKER"
    evil = EVIL[kind](tmp_path, marker)
    assert main(_argv(command, role, evil, digits_model, recipe, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--trust-pickle" in err, err
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", sorted(EVIL))
def test_nnzip_load_runs_no_code(kind, tmp_path):
    marker = tmp_path / "MARKER"
    evil = EVIL[kind](tmp_path, marker)
    if kind == "pt2-sample-inputs":  # a valid program: loaded, its sample inputs never read
        model = nnzip.load(evil)
        assert model(_example()).shape == (2, 10)
    else:
        with pytest.raises(NnzipError, match="--trust-pickle"):
            nnzip.load(evil)
    assert not marker.exists()


def test_pt2_never_unpickles_its_sample_inputs(tmp_path, capsys, digits_model):
    """Issue 15, Why 1: the crafted .pt2 was evaluated normally *and* ran its code."""
    marker = tmp_path / "MARKER"
    evil = evil_sample_inputs_pt2(tmp_path, marker)
    for role in ("model", "reference"):
        argv = _argv("eval", role, evil, digits_model, Path(), tmp_path / role) + FAST
        assert main(argv) == 0, capsys.readouterr().err
        assert (tmp_path / role / "report.json").is_file()
    deploy = tmp_path / "deploy"
    argv = _argv("deploy", "model", evil, digits_model, Path(), deploy) + [
        "--repeats", "1", "--batch-sizes", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (deploy / "deploy.json").is_file()
    assert not marker.exists()


@pytest.mark.parametrize("family", ["functional", "shared_layer", "conv1d"])
def test_user_exports_read_without_pickle_compute_what_torch_export_load_does(family, tmp_path):
    """Constants, buffers and tied weights come back as torch's own loader gives them."""
    from nnzip.models.examples import example_model

    model, x = example_model(family, batch=4)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model.eval(), (x,)), path)
    with torch.no_grad():
        assert torch.equal(load_model(path)(x), torch.export.load(path).module()(x))


def test_trust_pickle_opens_the_trusted_formats(tmp_path):
    model, x = _tiny_model(), _example()
    pickle_path = tmp_path / "model.pt"
    torch.save(model, pickle_path)
    script_path = tmp_path / "model.ts"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(model), script_path)
    export_path = export_model(model, tmp_path / "model.pt2", x)
    for path in (pickle_path, script_path, export_path):
        assert torch.equal(load_model(path, trust_pickle=True)(x), model(x)), path


def test_trust_pickle_reads_a_pickled_weight_as_asked(tmp_path):
    """With --trust-pickle a .pt2 goes through torch.export.load, which unpickles: the user said
    the file is trusted, so its code runs (the marker appears) and the program loads."""
    marker = tmp_path / "MARKER"
    evil = evil_weight_pt2(tmp_path, marker)
    assert load_model(evil, trust_pickle=True)(_example()).shape == (2, 10)
    assert marker.exists()


def test_a_pickled_hf_folder_needs_trust_and_is_then_read_weights_only(tmp_path, capsys,
                                                                      recipe):
    marker = tmp_path / "MARKER"
    hf = evil_hf_bin(tmp_path, marker)
    capsys.readouterr()  # transformers' progress bar while the folder was written
    out = ["--out", str(tmp_path / "out")]
    for argv in (["eval", *out], ["sts"], ["compress", "--recipe", str(recipe), *out]):
        assert main([*argv, "--model", f"hf:{hf}", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--trust-pickle" in err, err
    with pytest.raises(NnzipError, match="--trust-pickle"):
        nnzip.load(hf)  # a folder with config.json: read as an encoder too
    with pytest.raises(NnzipError, match="never unpickles"):
        nnzip.load(f"hf:{hf}", trust_pickle=True)  # weights_only: the object is refused
    assert not marker.exists()
    benign = _hf_folder(tmp_path / "benign", bin_only=True)
    encoder = nnzip.load(f"hf:{benign}", trust_pickle=True)
    assert encoder(torch.tensor([[101, 2023, 102]])).shape == (1, 16)


def test_a_checkpoint_is_never_unpickled(tmp_path, capsys):
    """train --checkpoint reads with torch.load(weights_only=True): nothing in it runs."""
    marker = tmp_path / "MARKER"
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(RunsCode(marker, "{'version': 1}"), checkpoint)
    argv = ["train", "--arch", "lenet300", "--data", "digits", "--epochs", "1", "--out",
            str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err, err
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_checkpoint_is_not_run_either(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    checkpoint = evil_torchscript(tmp_path, marker)
    argv = ["train", "--arch", "lenet300", "--data", "digits", "--epochs", "1", "--out",
            str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--no-progress"]
    assert main(argv) == 2
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["data/aotinductor/model/model.so",
                                   "data/constants/opaque_obj_0", "data/constants/custom_obj_0",
                                   "data/weights/model.pt", "models/second.json"])
def test_a_pt2_with_compiled_or_pickled_entries_is_refused_by_name(entry, tmp_path):
    path = export_model(_tiny_model(), tmp_path / "model.pt2", _example())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as archive:
        name = f"{archive.namelist()[0].split('/')[0]}/{entry}"  # torch's root folder
        archive.writestr(name, b"\x80\x04anything")
    with pytest.raises(NnzipError, match="--trust-pickle") as info:
        load_model(path)
    assert name in str(info.value)


# --- corrupt or poisoned models --------------------------------------------------------------


def _flip_exponent_bit(path: Path) -> None:
    """Flip the top exponent bit of the first float of the first weight entry, in place."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/weights/weight_0"))
    data = bytearray(path.read_bytes())
    # The local header's name and extra-field lengths (torch pads the extra field to align data).
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    offset = info.header_offset + 30 + name_length + extra_length
    data[offset + 3] ^= 0x40  # little-endian float32: byte 3 holds the sign and high exponent
    path.write_bytes(bytes(data))


def test_a_bit_flipped_pt2_is_refused_by_its_crc(tmp_path):
    """Issue 15, Why 4: a flipped exponent bit was measured (19 %) although the CRC said so."""
    path = export_model(_tiny_model(), tmp_path / "model.pt2", _example())
    _flip_exponent_bit(path)
    with pytest.raises(NnzipError, match="CRC") as info:
        load_model(path)
    assert "weight_0" in str(info.value) and "corrupt" in str(info.value)


def _poison(model: nn.Module, name: str, count: int) -> nn.Module:
    with torch.no_grad():
        model.state_dict()[name].view(-1)[:count] = float("nan")
    return model


def test_nan_weights_are_refused_by_every_loader(tmp_path):
    """Issue 15, Why 4: one NaN weight gave 9.8 % with exit 0."""
    x = _example()
    files = {"folder": save_model(_poison(_tiny_model(), "fc2.weight", 3), tmp_path / "mlp"),
             "nnz": save_model(_poison(_tiny_model(), "fc2.weight", 3), tmp_path / "m.nnz"),
             "pt2": export_model(_poison(_tiny_model(), "fc2.weight", 3), tmp_path / "m.pt2",
                                 x)}
    pickled = tmp_path / "m.pt"
    torch.save(_poison(_tiny_model(), "fc2.weight", 3), pickled)
    files["pickle"] = pickled
    scripted = tmp_path / "m.ts"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(_poison(_tiny_model(), "fc2.weight", 3)), scripted)
    files["torchscript"] = scripted
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(_poison(_tiny_model(), "fc2.weight", 3), (x,), onnx_path, dynamo=False)
    files["onnx"] = onnx_path
    for kind, path in files.items():
        with pytest.raises(NnzipError, match="--allow-nonfinite") as info:
            load_model(path, trust_pickle=True)
        message = str(info.value)
        assert "3 NaN or infinite values" in message, (kind, message)
        assert kind == "onnx" or "fc2.weight" in message, (kind, message)
        assert load_model(path, trust_pickle=True, allow_nonfinite=True) is not None


def test_nan_weights_in_a_hugging_face_folder_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _hf_folder(tmp_path / "hf", bin_only=False)
    state = load_file(folder / "model.safetensors")
    state["embeddings.word_embeddings.weight"][0, :2] = float("inf")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NnzipError, match="2 NaN or infinite values in "
                                         "'transformer.embeddings.word_embeddings.weight'"):
        nnzip.load(f"hf:{folder}")
    assert nnzip.load(f"hf:{folder}", allow_nonfinite=True) is not None


def test_nan_model_cli_exits_2_unless_allowed(tmp_path, capsys):
    folder = save_model(_poison(_tiny_model(), "fc1.bias", 1), tmp_path / "nan")
    argv = ["eval", "--model", str(folder), "--data", "digits", "--out", str(tmp_path / "out"),
            *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'fc1.bias'" in err and "1 NaN" in err, err
    assert main([*argv, "--allow-nonfinite"]) == 0


def test_a_forged_safetensors_dtype_is_refused(tmp_path):
    """Issue 15, Why 4: a header whose dtype is changed (hash recomputed) loaded as garbage."""
    folder = save_model(_tiny_model(), tmp_path / "mlp")
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    header["fc1.weight"]["dtype"] = "I32"  # same width: the offsets still fit
    forged = json.dumps(header, separators=(",", ":")).encode()
    forged += b" " * (header_length - len(forged))
    weights.write_bytes(data[:8] + forged + data[8 + header_length:])
    with safe_open(weights, framework="pt") as file:  # a well-formed file, only the type lies
        assert file.get_slice("fc1.weight").get_dtype() == "I32"
    spec = json.loads((folder / SPEC_FILE).read_text())
    forged_spec = {**spec, "weights_sha256": _sha256(weights)}  # both hashes recomputed
    forged_spec["spec_sha256"] = spec_digest(forged_spec)
    (folder / SPEC_FILE).write_text(json.dumps(forged_spec))
    with pytest.raises(NnzipError, match="'fc1.weight' as I32.*float32"):
        load_model(folder)


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    import onnx

    x = _example()
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir()
    torch.onnx.export(_tiny_model(), (x,), path, dynamo=False)
    proto = onnx.load(str(path))
    secret = tmp_path / "secret.bin"
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    secret.write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"),
                       ("length", str(secret.stat().st_size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    with pytest.raises(NnzipError, match="outside the model's folder"):
        load_model(path)


def test_a_quantized_model_saved_as_float_is_a_warning(tmp_path, caplog, digits):
    """Issue 15, Why 4: the float .pt2 fallback of a quantized model was said at INFO level."""
    from nnzip.pipeline import save_final_model

    # Dynamic int8 per channel now exports (MatMulInteger); group-wise dynamic weights have
    # neither an ONNX nor a .nnz form.
    model = nnzip.apply(create_model("lenet300", input_shape=digits.input_shape,
                                     num_classes=digits.num_classes), "quantize",
                        mode="dynamic", granularity="group", group_size=4).model
    with caplog.at_level("WARNING"):
        path = save_final_model(model, tmp_path, digits)
    assert path.suffix == ".pt2"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("saved as a float model" in r.getMessage() for r in warnings), caplog.text


def test_the_finite_check_counts_nan_and_inf_in_floating_tensors_only():
    from nnzip.models.finite import nonfinite_counts

    counts = nonfinite_counts([("a", torch.tensor([1.0, float("inf"), float("nan")])),
                               ("b", torch.arange(3)), ("c", torch.zeros(2))])
    assert counts == {"a": 2}
