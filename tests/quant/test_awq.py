"""AWQ: activation-aware scales lower the output error of weight-only rounding where a few input
channels carry large activations; folding them into the LayerNorm before keeps the float
function; where a fold would change it (a post-LN residual) the scales stay with the layer; GPTQ
after AWQ sees the scaled input; and the quantize stage records what it did to every weight."""

import pytest
import torch
from lm_helpers import tiny_lm, tiny_lm_data
from torch import nn

import nnzip
from nnzip.errors import NnzipError
from nnzip.models.causal_lm import tied_head
from nnzip.quant import (
    QScheme,
    QuantConfig,
    convert,
    gptq,
    prepare,
    set_mode,
    static_quantization,
)
from nnzip.quant.awq import activation_scales, awq, rounded, search_scales

INT4_G32 = QScheme(bits=4, granularity="group", group_size=32)


def _salient(channels: int) -> list[int]:
    return [3, channels // 3, 2 * channels // 3, channels - 5]


def _outlier_inputs(rows: int = 2048, channels: int = 128, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, channels, generator=generator)
    x[:, _salient(channels)] *= 25.0   # a few salient channels, as in LLM activations
    return x


def test_awq_lowers_the_output_error_of_rounding_where_channels_are_salient():
    x = _outlier_inputs()
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    search = search_scales([weight], x, x.abs().mean(dim=0), [INT4_G32])
    rtn = float(((x @ rounded(weight, INT4_G32).T) - x @ weight.T).pow(2).mean())
    assert search.rtn_error == pytest.approx(rtn, rel=1e-5)   # α = 0 is rounding to nearest
    assert search.alpha > 0 and search.error < 0.8 * rtn
    assert torch.equal(search.scales, activation_scales(x.abs().mean(dim=0), search.alpha))
    # The scales straddle 1 (normalised by sqrt(max · min)) and favour the salient channels.
    assert float(search.scales.max() * search.scales.min()) == pytest.approx(1.0, rel=1e-5)
    assert set(search.scales.topk(4).indices.tolist()) == set(_salient(128))


def _calibration(data, count=2, size=16):
    return [data.train.tensors[0][i * size:(i + 1) * size] for i in range(count)]


@pytest.fixture(scope="module")
def data():
    return tiny_lm_data()


def test_folding_into_the_layernorms_keeps_the_float_function(data):
    model = tiny_lm(data)
    for param in model.parameters():   # non-trivial norms and salient channels
        if param.dim() == 1:
            nn.init.uniform_(param, 0.5, 1.5)
    prepared = prepare(model, QuantConfig(weight_bits=4, activation_bits=None,
                                          weight_granularity="group", group_size=16))
    details = awq(prepared, _calibration(data))
    blocks, layers = "transformer.transformer.h", details["layers"]
    # Every LayerNorm-fed layer that chose scales (α > 0; α = 0 scales nothing) had them folded
    # into its LayerNorm; the layers behind the attention or the GELU keep an input factor.
    fed = {f"{blocks}.{i}.ln_{j}": f"{blocks}.{i}.{'attn.c_attn' if j == 1 else 'mlp.c_fc'}"
           for i in (0, 1) for j in (1, 2)}
    assert details["folded"] == {ln: [layer] for ln, layer in fed.items()
                                 if layers[layer]["alpha"] > 0}
    assert len(details["folded"]) >= 3
    for name, entry in layers.items():
        assert 0 <= entry["alpha"] < 1 and entry["error_ratio"] <= 1
        if name not in fed.values():
            assert entry["scales"].startswith("kept" if entry["alpha"] > 0 else "none")
            assert (prepared.get_submodule(name).smoothing is None) == (entry["alpha"] == 0)
    ln = prepared.get_submodule(f"{blocks}.0.ln_1")
    assert not torch.allclose(ln.weight, model.get_submodule(f"{blocks}.0.ln_1").weight)
    set_mode(prepared, "float")
    x = data.test.tensors[0][:4]
    with torch.no_grad():
        expected, folded = model(x), prepared(x)
    assert (folded - expected).abs().max() <= 1e-5 * expected.abs().max()


class PostNorm(nn.Module):
    """A post-LN block: the LayerNorm's output feeds the Linear *and* the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 32)

    def forward(self, x):
        y = self.norm(x)
        return self.fc(y) + y


def test_a_fold_that_would_change_the_function_is_refused():
    torch.manual_seed(0)
    model = PostNorm().eval()
    x = _outlier_inputs(64, 32)
    prepared = prepare(model, QuantConfig(weight_bits=4, activation_bits=None))
    details = awq(prepared, [x])
    assert details["folded"] == {}
    assert details["layers"]["fc"]["scales"] == "kept as a per-input-channel factor of the layer"
    assert torch.equal(prepared.norm.weight, model.norm.weight)
    assert prepared.fc.smoothing is not None
    set_mode(prepared, "float")
    with torch.no_grad():
        assert torch.allclose(prepared(x), model(x), atol=1e-5)


def test_scales_fold_into_the_rows_of_a_linear_that_feeds_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16)).eval()
    x = _outlier_inputs(256, 32)
    result = static_quantization(model, [x], QuantConfig(
        weight_bits=4, activation_bits=None, awq=True))
    details = result.details["awq"]
    assert details["folded"] == {"0": ["1"]}
    assert details["layers"]["0"]["scales"].startswith("kept")   # the model input: no producer
    records = {record.name: record for record in result.coverage.records}
    assert "rows divided by the AWQ scales of 1" in records["0.weight"].note
    assert records["0.bias"].changed and records["1.weight"].changed
    quantized = result.model
    set_mode(quantized, "float")
    with torch.no_grad():
        assert torch.allclose(quantized(x), model(x), atol=1e-4)


def test_gptq_rounds_for_the_input_a_layer_with_input_factors_really_multiplies():
    # AWQ's kept scales and SmoothQuant's factors divide the input inside the layer: GPTQ must
    # round as it would for a plain layer of weight W·diag(s) fed x / s (its Hessian was once
    # that of x, which rounded worse than to nearest).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64)).eval()
    x = _outlier_inputs(512)
    factors = torch.linspace(0.1, 10, 128)[torch.randperm(128)]
    config = QuantConfig(weight_bits=4, activation_bits=None, weight_granularity="group",
                         group_size=32)
    prepared = prepare(model, config)
    prepared[0].smooth(factors)
    convert(prepared)
    gptq(prepared, [x])
    plain = nn.Sequential(nn.Linear(128, 64)).eval()
    with torch.no_grad():
        plain[0].weight.copy_(model[0].weight * factors)
        plain[0].bias.copy_(model[0].bias)
    equivalent = convert(prepare(plain, config))
    gptq(equivalent, [x / factors])
    assert torch.equal(prepared[0].weight_int, equivalent[0].weight_int)
    with torch.no_grad():
        assert torch.allclose(prepared(x), equivalent(x / factors), atol=1e-5)


def test_awq_refuses_quantized_activations_and_other_formats(data):
    with pytest.raises(NnzipError, match="activation_bits to None"):
        QuantConfig(awq=True)
    with pytest.raises(NnzipError, match="affine"):
        QuantConfig(awq=True, activation_bits=None, weight_format="ternary")
    with pytest.raises(NnzipError, match="activation_bits to None"):
        nnzip.apply(tiny_lm(data), "quantize", data, awq=True)
    with pytest.raises(NnzipError, match="need calibration"):
        nnzip.apply(tiny_lm(data), "quantize", data, mode="dynamic", awq=True,
                    activation_bits=None)


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_the_quantize_stage_with_awq_lowers_nothing_silently(data, rounding):
    model = tiny_lm(data)
    result = nnzip.apply(model, "quantize", data, weight_bits=4, granularity="group",
                         group_size=16, activation_bits=None, awq=True, rounding=rounding,
                         calibration_batches=2)
    coverage, details = result.coverage, result.details
    linears = [f"{n}.weight" for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n != "transformer.lm_head"]
    records = {record.name: record for record in coverage.records}
    for name in linears:
        assert records[name].changed, name
        assert "int4 group-16" in records[name].note and "AWQ α" in records[name].note
        assert ("GPTQ rounding" in records[name].note) == (rounding == "gptq")
    assert set(details["awq"]["layers"]) == {name.removesuffix(".weight") for name in linears}
    tied = records["transformer.transformer.wte.weight"]
    assert tied.changed and "tied" in tied.note
    assert "transformer.transformer.wte.weight" in details["awq"]["skipped"]
    for norm in ("ln_1", "ln_2"):
        record = records[f"transformer.transformer.h.0.{norm}.weight"]
        assert record.changed and record.note.startswith("divided by the AWQ scales")
    assert records["transformer.transformer.h.0.attn.c_attn.bias"].changed is False
    # Every weight find_weights lists is changed or named with why not: nothing silent.
    assert set(coverage.skipped) == {"transformer.transformer.wpe.weight"}
    assert coverage.method == ("awq+gptq" if rounding == "gptq" else "awq+quantize_static")
    assert tied_head(result.model)
    with torch.no_grad():
        assert torch.isfinite(result.model(data.test.tensors[0][:2])).all()
