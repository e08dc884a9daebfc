"""Attention unfused into four Linears: the same function as nn.MultiheadAttention (every call
option), nn.TransformerEncoder takes its slow path through it, and it fuses back exactly."""

import copy
import itertools

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.models.examples import example_model
from nnzip.quant import (
    Quantize,
    QuantizedLayer,
    UnfusedMultiheadAttention,
    fuse_attention,
    quantize,
    quantized_weights,
    unfuse_attention,
)


def _inputs(batch_first: bool, unbatched: bool, kdim: int, generator: torch.Generator):
    def tensor(length: int, width: int) -> torch.Tensor:
        if unbatched:
            return torch.randn(length, width, generator=generator)
        shape = (3, length, width) if batch_first else (length, 3, width)
        return torch.randn(*shape, generator=generator)

    return tensor(5, 16), tensor(7, kdim), tensor(7, kdim)


def _masks(unbatched: bool, generator: torch.Generator) -> list[dict]:
    padding = torch.zeros((7,) if unbatched else (3, 7), dtype=torch.bool)
    padding[..., -2:] = True
    heads = (1 if unbatched else 3) * 4
    per_head = torch.rand(heads, 5, 7, generator=generator) > 0.7
    per_head[..., 0] = False  # every query keeps one key (no all-masked row, which is NaN)
    additive = torch.randn(5, 7, generator=generator)
    return [{}, {"key_padding_mask": padding}, {"attn_mask": additive},
            {"attn_mask": per_head, "key_padding_mask": padding}]


@pytest.mark.parametrize("batch_first, bias, kdim, unbatched",
                         list(itertools.product([True, False], [True, False], [None, 12],
                                                [False, True])))
def test_unfused_attention_equals_multihead_attention(batch_first, bias, kdim, unbatched):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    attention = nn.MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=kdim,
                                      batch_first=batch_first).eval()
    unfused = UnfusedMultiheadAttention.from_float(attention).eval()
    query, key, value = _inputs(batch_first, unbatched, kdim or 16, generator)
    for masks, need_weights, average in itertools.product(
            _masks(unbatched, generator), [True, False], [True, False]):
        with torch.no_grad():
            expected = attention(query, key, value, need_weights=need_weights,
                                 average_attn_weights=average, **masks)
            output = unfused(query, key, value, need_weights=need_weights,
                             average_attn_weights=average, **masks)
        assert output[0].shape == expected[0].shape
        assert torch.allclose(output[0], expected[0], atol=1e-5)
        if need_weights:
            assert torch.allclose(output[1], expected[1], atol=1e-5)
        else:
            assert output[1] is None and expected[1] is None


def test_causal_hint_matches_the_causal_mask():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    unfused = UnfusedMultiheadAttention.from_float(attention).eval()
    x = torch.randn(2, 6, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        expected = attention(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)[0]
        assert torch.allclose(unfused(x, x, x, attn_mask=causal, is_causal=True,
                                      need_weights=False)[0], expected, atol=1e-5)
        # Without the mask nn.MultiheadAttention refuses the hint; the unfused one builds it.
        assert torch.allclose(unfused(x, x, x, is_causal=True, need_weights=False)[0],
                              expected, atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "text_transformer"])
def test_models_keep_their_outputs_and_fuse_back_exactly(family):
    model, inputs = example_model(family)
    unfused = copy.deepcopy(model)
    info = unfuse_attention(unfused)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in unfused.modules())
    assert len(info.origins) == 8 and not info.refused  # two blocks, q/k/v/out each
    for mode in ("eval", "train"):  # eval: TransformerEncoderLayer's fused fast path
        getattr(model, mode)(), getattr(unfused, mode)()
        with torch.no_grad():
            assert torch.allclose(unfused(inputs), model(inputs), atol=1e-5)
    fused = fuse_attention(copy.deepcopy(unfused).eval())
    assert not any(isinstance(m, UnfusedMultiheadAttention) for m in fused.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(fused(inputs), model(inputs))
    assert fused.state_dict().keys() == model.state_dict().keys()


def test_tied_in_projection_stays_tied():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.MultiheadAttention(8, 2, batch_first=True)
            self.second = nn.MultiheadAttention(8, 2, batch_first=True)
            self.second.in_proj_weight = self.first.in_proj_weight

        def forward(self, x):
            return self.second(*(self.first(x, x, x)[0],) * 3)[0]

    model = Twice()
    unfuse_attention(model)
    assert model.first.q_proj.weight is model.second.q_proj.weight


def test_an_attention_left_fused_is_quantized_weight_only_not_broken():
    class BiasKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0].mean(dim=1))

    torch.manual_seed(0)
    model = BiasKV().eval()
    x = torch.randn(4, 5, 8)
    result = quantize(model, Quantize(), calibration=[x])
    assert isinstance(result.model.attn, nn.MultiheadAttention)
    assert set(quantized_weights(result.model)) == {"attn.in_proj_weight",
                                                    "attn.out_proj.weight"}
    notes = {r.name: r.note for r in result.coverage.records if r.changed}
    assert "add_bias_kv" in notes["attn.in_proj_weight"]
    assert notes["attn.out_proj.weight"].startswith("weight-only int8")
    with torch.no_grad():
        assert (result.model(x) - model(x)).norm() / model(x).norm() < 0.05


def test_quantized_layer_read_directly_by_its_parent_becomes_weight_only():
    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return torch.nn.functional.linear(x, self.fc.weight, self.fc.bias)

    torch.manual_seed(0)
    model = ReadsWeight().eval()
    x = torch.randn(16, 8)
    result = quantize(model, Quantize(), calibration=[x])
    layer = result.model.fc
    assert isinstance(layer, QuantizedLayer) and layer.input_scheme is None
    assert torch.equal(layer.weight, layer.dequantized_weight())  # what the parent now reads
    assert "forward never ran during calibration" in result.coverage.skipped.get(
        "fc.weight", "") + next(r.note for r in result.coverage.records if r.name == "fc.weight")
    with torch.no_grad():
        assert torch.equal(result.model(x), torch.nn.functional.linear(
            x, layer.dequantized_weight(), layer.bias))


def test_unfusing_a_bare_attention_module_is_an_error():
    with pytest.raises(NnzipError, match="wrap the nn.MultiheadAttention in a module"):
        unfuse_attention(nn.MultiheadAttention(8, 2))
