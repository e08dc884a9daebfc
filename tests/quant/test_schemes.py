"""The named quantization schemes that `nnzip sts` and benchmarks/hf_quant.py share: names and
old names resolve, each builds what it says on a real MiniLM, bad requests are clear errors."""

import pytest
import torch
from torch import nn

from nnzip.data.sts import calibration_sentences, load_sts
from nnzip.errors import NnzipError
from nnzip.evaluate import artifact_bytes
from nnzip.evaluate.embedding import encode, token_batches
from nnzip.quant import quantize_dynamic
from nnzip.quant.schemes import (
    RENAMED,
    SCHEMES,
    find_scheme,
    layernorm_fed_linears,
    quantize_scheme,
)


def test_every_old_name_finds_the_scheme_it_became():
    for old, new in RENAMED.items():
        assert old not in SCHEMES and find_scheme(old) is SCHEMES[new]
    assert all(find_scheme(name) is scheme for name, scheme in SCHEMES.items())


def test_an_unknown_name_lists_every_scheme_and_the_closest():
    with pytest.raises(NnzipError) as error:
        find_scheme("weight-int4-gtpq")
    assert "did you mean 'weight-int4-gptq'?" in str(error.value)
    assert all(name in str(error.value) for name in SCHEMES)


def test_layernorm_fed_linears_are_query_key_value_and_fc1(minilm):
    names = layernorm_fed_linears(minilm)
    layers = minilm.transformer.config.num_hidden_layers
    assert len(names) == 4 * layers
    suffixes = {name.split(".", 4)[-1] for name in names}  # transformer.encoder.layer.N.<part>
    assert suffixes == {"attention.self.query", "attention.self.key", "attention.self.value",
                        "intermediate.dense"}


def test_group_size_is_for_group_wise_schemes_only(minilm):
    assert SCHEMES["weight-int4-gptq"].config_for(minilm, 32).group_size == 32
    assert SCHEMES["weight-int4-rtn"].label(128) == "weight-int4-rtn g128"
    with pytest.raises(NnzipError, match="not groups"):
        SCHEMES["w8a8"].config_for(minilm, 32)


def test_paper_smoothquant_needs_layernorm_fed_linears():
    with pytest.raises(NnzipError, match="w8a8-smoothquant-all"):
        SCHEMES["w8a8-smoothquant"].config_for(nn.Sequential(nn.Linear(4, 4)))


def test_a_calibrated_scheme_without_calibration_is_a_clear_error(minilm):
    with pytest.raises(NnzipError, match="calibration="):
        quantize_scheme(minilm, "w8a8")


def test_dynamic_int8_emb8_is_quantize_dynamic_with_int8_tables_at_a_quarter_of_the_bytes(
        minilm):
    """The scheme the table names builds exactly what quantize_dynamic(embedding_bits=8) does."""
    sentences = load_sts("dev").head(6).sentences()
    result = quantize_scheme(minilm, "dynamic-int8-emb8")
    direct = quantize_dynamic(minilm, embedding_bits=8)
    assert torch.equal(encode(result.model, sentences, 8, tokenizer_source=minilm),
                       encode(direct, sentences, 8, tokenizer_source=minilm))
    fraction = artifact_bytes(result.model) / artifact_bytes(minilm)
    assert 0.2 < fraction < 0.3  # int8 Linears and tables; LayerNorms, biases, scales in float
    assert result.coverage.changed_fraction > 0.99


def test_paper_smoothquant_smooths_only_the_layernorm_fed_linears(minilm):
    calibration, _ = token_batches(minilm, calibration_sentences(16), 8)
    result = quantize_scheme(minilm, "w8a8-smoothquant", calibration)
    assert result.details["smoothed_layers"] == layernorm_fed_linears(minilm)
    assert SCHEMES["w8a8-smoothquant-all"].config_for(minilm).smoothquant_layers is None
