"""The .nnz file for every user-style family: stored as its torch.export program with the tensors
through the codec, loaded back without pickle, computing bit for bit what was saved; tied
tensors stored once and still tied; a model torch.export cannot trace refused by its cause."""

import copy
import pickle

import pytest
import torch
from torch import nn

import nnzip
from nnzip.codec import read_nnz
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig
from nnzip.models.nnz import load_nnz, save_nnz
from nnzip.pipeline import compress
from nnzip.recipe import parse_recipe
from tests.generality.conftest import example, example_splits

TIED = {"lstm_lm": ("decoder", "embed"), "gru_lm": ("decoder", "embed")}
#: Eager nn.MultiheadAttention under no_grad takes a fused kernel (native MHA); torch.export
#: traces the composite path, which eager also takes with autograd on. The .nnz model is the
#: traced program, so under no_grad these families match the program, not the fused kernel.
FUSED_EAGER = {"vit", "text_transformer"}


def _prune_half(model: nn.Module) -> nn.Module:
    """Zero the smaller half (by magnitude) of every weight matrix and kernel, with torch."""
    with torch.no_grad():
        for parameter in model.parameters():  # a tied tensor is listed once
            if parameter.dim() >= 2:
                threshold = parameter.abs().flatten().kthvalue(parameter.numel() // 2).values
                parameter.masked_fill_(parameter.abs() <= threshold, 0.0)
    return model


def _assert_same_outputs(family: str, loaded: nn.Module, model: nn.Module) -> None:
    for batch in (8, 3):  # the example's batch size and another one (the batch is dynamic)
        inputs = example(family, batch=batch)[1]
        assert torch.equal(loaded(inputs), model(inputs))
        with torch.no_grad():
            reference = torch.export.export(model, (inputs,)).module() \
                if family in FUSED_EAGER else model
            assert torch.equal(loaded(inputs), reference(inputs))


def test_every_family_round_trips_bit_for_bit_plain_and_half_pruned(family, tmp_path):
    model, inputs = example(family)
    plain = save_nnz(model, tmp_path / "plain.nnz", example=inputs)
    _assert_same_outputs(family, load_nnz(plain), model)
    header = read_nnz(plain).header
    assert header["dynamic_batch"] and header["inputs"][0]["shape"] == list(inputs.shape)
    assert header["inputs"][0]["dtype"] == str(inputs.dtype).removeprefix("torch.")

    _prune_half(model)
    pruned = nnzip.save(model, tmp_path / "pruned.nnz", example=inputs)
    _assert_same_outputs(family, load_nnz(pruned), model)
    encodings = {r["name"]: r["encoding"] for r in read_nnz(pruned).header["records"]}
    weights = [name for name, p in model.named_parameters() if p.dim() >= 2 and p.numel() >= 64]
    assert weights and all(encodings[name] == "sparse" for name in weights)
    assert pruned.stat().st_size < plain.stat().st_size


@pytest.mark.parametrize("family", sorted(TIED))
def test_a_tied_embedding_is_stored_once_and_stays_tied(family, tmp_path):
    model, inputs = example(family)
    output, embedding = TIED[family]
    tied = save_nnz(model, tmp_path / "tied.nnz", example=inputs)
    names = [r["name"] for r in read_nnz(tied).header["records"]]
    assert f"{embedding}.weight" in names and f"{output}.weight" not in names
    loaded = load_nnz(tied)
    assert getattr(loaded, output).weight is getattr(loaded, embedding).weight

    untied = copy.deepcopy(model)
    getattr(untied, output).weight = nn.Parameter(getattr(model, embedding).weight.clone())
    separate = save_nnz(untied, tmp_path / "untied.nnz", example=inputs)
    table_bytes = getattr(model, embedding).weight.numel() * 4
    assert separate.stat().st_size - tied.stat().st_size > 0.9 * table_bytes


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_a_model_torch_export_cannot_trace_is_refused_by_cause_and_writes_nothing(tmp_path):
    path = tmp_path / "model.nnz"
    path.write_bytes(b"an earlier file")
    with pytest.raises(NnzipError, match=r"DataDependent.*torch\.export could not export it "
                                         r"\(.*data-dependent.*torch\.where"):
        save_nnz(DataDependent(), path, example=torch.randn(2, 4))
    assert path.read_bytes() == b"an earlier file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.nnz"]  # no temporary left behind


def test_loading_never_unpickles(tmp_path, monkeypatch):
    saved = {}
    for family in ("vit", "lstm_lm"):
        model, inputs = example(family)
        saved[family] = (save_nnz(model, tmp_path / f"{family}.nnz", example=inputs), model,
                         inputs)

    def refuse(*args, **kwargs):
        raise AssertionError("the .nnz loader must not unpickle")

    for module, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    for path, model, inputs in saved.values():
        assert torch.equal(nnzip.load(path)(inputs), model(inputs))


def test_a_weight_shared_user_model_is_saved_by_the_pipeline_as_nnz(tmp_path):
    model = example("shared_layer")[0]
    data = example_splits("shared_layer")
    recipe = parse_recipe({"stages": [{"cluster": {"bits": 4, "finetune_epochs": 0}}]})
    result = compress(model, recipe, data, out_dir=tmp_path, progress=False,
                      eval_config=EvalConfig(warmup=1, repeats=2, robustness_samples=50))
    assert result.paths["model"].name == "model.nnz"
    encodings = {r["name"]: r["encoding"]
                 for r in read_nnz(result.paths["model"]).header["records"]}
    assert encodings["shared.weight"] == "codes"
    inputs = data.test.tensors[0]
    assert torch.equal(nnzip.load(result.paths["model"])(inputs), result.model(inputs))
    rows = result.report["models"]
    assert rows[-1]["size_bytes"] == result.paths["model"].stat().st_size


@pytest.mark.parametrize("family", ["conv1d", "densenet"])
def test_a_weight_only_int8_user_model_stores_its_integers_and_round_trips(family, tmp_path):
    from nnzip.quant.ptq import QuantConfig, convert, prepare

    model, inputs = example(family)
    quantized = convert(prepare(model, QuantConfig(activation_bits=None)))
    path = save_nnz(quantized, tmp_path / "int8.nnz", example=inputs)
    records = read_nnz(path).header["records"]
    weights = [name for name, p in model.named_parameters() if p.dim() >= 2]
    assert all(r["encoding"] == "integer" for r in records if r["name"] in weights)
    assert len([r for r in records if r["name"] in weights]) == len(weights)
    assert torch.equal(load_nnz(path)(inputs), quantized(inputs))
