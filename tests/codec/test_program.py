"""Programs in .nnz files: a zoo model a method reshaped is stored as its program, and a forged
program (a non-operator call, code in a shape expression) is refused before torch reads it."""

import json

import pytest
import torch
from torch import nn

from nnzip.codec import decode_tensors, encode_tensors
from nnzip.codec.program import _expressions, _nodes
from nnzip.errors import NnzipError
from nnzip.models import create_model
from nnzip.models.nnz import load_nnz, model_from_nnz, nnz_bytes, save_nnz


def test_a_reshaped_zoo_model_is_stored_as_its_program_with_an_example(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=(1, 8, 8), num_classes=10).eval()
    model.fc1, model.fc2 = nn.Linear(64, 40), nn.Linear(40, 100)  # as channel pruning leaves it
    with pytest.raises(NnzipError, match=r"no longer matches.*fc1\.weight.*pass example="):
        save_nnz(model, tmp_path / "m.nnz")
    assert not list(tmp_path.iterdir())
    images = torch.randn(5, 1, 8, 8)
    loaded = load_nnz(save_nnz(model, tmp_path / "m.nnz", example=images[:2]))
    assert torch.equal(loaded(images), model(images))


def _forged(change) -> bytes:
    """A program file for a small model with ``change(program JSON)`` applied, validly signed."""
    file = decode_tensors(nnz_bytes(nn.Sequential(nn.Linear(4, 3), nn.ReLU()),
                                    example=torch.randn(2, 4)))
    header = json.loads(json.dumps(file.header))
    change(header["program"])
    return encode_tensors(file.tensors, header, version=2)


def test_a_forged_call_to_a_non_operator_is_refused():
    def call_torch_load(program):
        next(_nodes(program))["target"] = "torch.load"

    with pytest.raises(NnzipError, match="'torch.load', which is not a PyTorch operator"):
        model_from_nnz(decode_tensors(_forged(call_torch_load)))


def test_code_in_a_shape_expression_is_refused_before_sympy_reads_it():
    def inject(program):
        expressions = list(_expressions(program))
        assert expressions  # the dynamic batch size is a symbol
        text = json.dumps(program).replace(json.dumps(expressions[0])[1:-1],
                                           "__import__('os').getcwd()")
        program.clear()
        program.update(json.loads(text))

    with pytest.raises(NnzipError, match="shape expression nnzip does not read"):
        model_from_nnz(decode_tensors(_forged(inject)))


class _MeanTokens(nn.Module):
    """Token ids (batch, tokens) → the mean of their embeddings (a sentence encoder's shape)."""

    def __init__(self, fixed_tokens: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.fixed_tokens = fixed_tokens
        self.head = nn.Linear(8 * fixed_tokens, 3) if fixed_tokens else nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states = self.embed(ids)
        if self.fixed_tokens:  # a table of integer features: the second dimension is fixed
            return self.head(states.flatten(1))
        return self.head(states.mean(dim=1))


def test_a_program_of_token_ids_takes_any_number_of_tokens(tmp_path):
    torch.manual_seed(0)
    model = _MeanTokens().eval()
    loaded = load_nnz(save_nnz(model, tmp_path / "m.nnz", example=torch.randint(0, 50, (2, 7))))
    for shape in ((2, 7), (3, 12), (1, 4)):  # other batch sizes and sentence lengths
        ids = torch.randint(0, 50, shape)
        assert torch.equal(loaded(ids), model(ids))


def test_integer_inputs_whose_second_dimension_is_fixed_still_export(tmp_path):
    torch.manual_seed(0)
    model = _MeanTokens(fixed_tokens=5).eval()
    loaded = load_nnz(save_nnz(model, tmp_path / "m.nnz", example=torch.randint(0, 50, (2, 5))))
    ids = torch.randint(0, 50, (4, 5))
    assert torch.equal(loaded(ids), model(ids))
    with pytest.raises(RuntimeError):  # the fixed dimension stays fixed
        loaded(torch.randint(0, 50, (4, 6)))
