"""Compressed Hugging Face models saved as folders transformers, sentence-transformers and
load_hf read back with the same outputs; what config.json cannot describe is refused by name,
and the .nnz / ONNX artifacts of those models reload identically.

The shipped MiniLM is saved as it is and after unstructured pruning, layer dropping and FFN
neuron pruning, and checked on real STS-B dev sentences. A tiny BERT with MiniLM's tokenizer
keeps the torch.export / ONNX round trips fast; a tiny GPT-2 stands for a causal LM wrapper."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from nnzip.data.sts import load_sts
from nnzip.errors import NnzipError
from nnzip.models import load_model
from nnzip.models.hf import SentenceEncoder, load_hf
from nnzip.models.hf_save import hf_save_refusal, save_hf
from nnzip.models.nnz import load_nnz, save_nnz
from nnzip.pipeline import apply
from nnzip.prune.transformer import encoder_shape, prune_heads, prune_neurons
from nnzip.quant import QuantConfig, quantize_dynamic, quantize_static
from nnzip.runtime import OrtModule, export_onnx, op_counts

pytest.importorskip("transformers", reason="needs the transformers extra")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    dev = load_sts("dev")
    return list(dev.sentence1[:3]) + list(dev.sentence2[:3])


@pytest.fixture(scope="module")
def saved_minilm(minilm, tmp_path_factory):
    return save_hf(minilm, tmp_path_factory.mktemp("hf") / "minilm")


def _embed(model: nn.Module, sentences: list[str]) -> torch.Tensor:
    ids, mask = model.tokenize(sentences)
    with torch.no_grad():
        return model(ids, mask)


def _hidden(transformer: nn.Module, model: SentenceEncoder, sentences: list[str]) -> torch.Tensor:
    ids, mask = model.tokenize(sentences)
    with torch.no_grad():
        return transformer(input_ids=ids, attention_mask=mask).last_hidden_state


def _read_json(path):
    return json.loads(path.read_text())


def test_a_sentence_encoder_is_saved_as_a_sentence_transformers_folder(minilm, saved_minilm):
    assert hf_save_refusal(minilm) is None
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
                 "sentence_bert_config.json", "nnzip.json"):
        assert (saved_minilm / name).is_file(), name
    modules = [m["type"].rsplit(".", 1)[-1] for m in _read_json(saved_minilm / "modules.json")]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    pooling = _read_json(saved_minilm / "1_Pooling" / "config.json")
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert pooling["word_embedding_dimension"] == 384
    assert _read_json(saved_minilm / "sentence_bert_config.json")["max_seq_length"] == 256
    assert _read_json(saved_minilm / "nnzip.json")["removed_modules"] == ["pooler"]
    # 22.6 M fp32 parameters, the unused pooler not among them: the file is the weights.
    size = (saved_minilm / "model.safetensors").stat().st_size
    assert 4 * 22_500_000 < size < 4 * 22_800_000


def test_load_hf_reads_the_folder_back_bit_for_bit(minilm, saved_minilm, sentences):
    loaded = load_hf(saved_minilm)
    assert (loaded.pooling, loaded.normalize, loaded.max_length) == ("mean", True, 256)
    assert torch.equal(_embed(loaded, sentences), _embed(minilm, sentences))


def test_load_model_reads_the_folder_as_a_sentence_encoder(minilm, saved_minilm, sentences):
    assert torch.equal(_embed(load_model(saved_minilm), sentences), _embed(minilm, sentences))


def test_automodel_reads_the_folder_with_the_same_hidden_states(minilm, saved_minilm, sentences):
    from transformers import AutoModel

    expected = _hidden(minilm.transformer, minilm, sentences)
    eager = AutoModel.from_pretrained(saved_minilm, attn_implementation="eager")
    assert torch.equal(_hidden(eager, minilm, sentences), expected)
    # The default kernel (SDPA) sums in another order: float noise, nothing more.
    default = AutoModel.from_pretrained(saved_minilm)
    assert (_hidden(default, minilm, sentences) - expected).abs().max() < 1e-4


def test_sentence_transformers_reads_the_folder_with_the_same_embeddings(minilm, saved_minilm,
                                                                        sentences):
    st = pytest.importorskip("sentence_transformers")
    expected = _embed(minilm, sentences)
    eager = st.SentenceTransformer(str(saved_minilm), device="cpu",
                                   model_kwargs={"attn_implementation": "eager"})
    assert torch.equal(eager.encode(sentences, convert_to_tensor=True), expected)
    default = st.SentenceTransformer(str(saved_minilm), device="cpu")
    assert (default.encode(sentences, convert_to_tensor=True) - expected).abs().max() < 1e-5


def test_pruned_zeros_are_stored_and_loaded_as_exact_zeros(minilm, sentences, tmp_path):
    pruned = apply(copy.deepcopy(minilm), "prune", sparsity=0.5, finetune_epochs=0).model
    query = pruned.transformer.encoder.layer[0].attention.self.query.weight
    assert 0.2 < float((query == 0).float().mean()) < 0.9
    folder = save_hf(pruned, tmp_path / "pruned")
    with safe_open(folder / "model.safetensors", "pt") as file:
        stored = file.get_tensor("encoder.layer.0.attention.self.query.weight")
    assert torch.equal(stored == 0, query == 0)
    loaded = load_hf(folder)
    assert torch.equal(loaded.transformer.encoder.layer[0].attention.self.query.weight, query)
    assert torch.equal(_embed(loaded, sentences), _embed(pruned, sentences))


def test_dropped_layers_are_saved_with_the_layer_count_in_the_config(minilm, sentences, tmp_path):
    from transformers import AutoModel

    shallow = apply(copy.deepcopy(minilm), "drop_layers", keep=[1, 3, 5]).model
    folder = save_hf(shallow, tmp_path / "shallow")
    assert _read_json(folder / "config.json")["num_hidden_layers"] == 3
    assert len(AutoModel.from_pretrained(folder).encoder.layer) == 3
    assert torch.equal(_embed(load_hf(folder), sentences), _embed(shallow, sentences))


def test_the_same_ffn_width_in_every_layer_becomes_intermediate_size(minilm, sentences, tmp_path):
    narrow = copy.deepcopy(minilm)
    prune_neurons(narrow, {layer: list(range(layer, 400 + layer)) for layer in range(6)})
    folder = save_hf(narrow, tmp_path / "narrow")
    assert _read_json(folder / "config.json")["intermediate_size"] == 1536 - 400
    assert minilm.transformer.config.intermediate_size == 1536  # the model's own config is kept
    loaded = load_hf(folder)
    assert encoder_shape(loaded) == encoder_shape(narrow)
    assert torch.equal(_embed(loaded, sentences), _embed(narrow, sentences))


def test_ffn_widths_that_differ_per_layer_are_refused_by_layer(minilm, tmp_path):
    uneven = copy.deepcopy(minilm)
    prune_neurons(uneven, {0: list(range(100)), 3: list(range(36))})
    reason = hf_save_refusal(uneven)
    assert "layer 0: 1436" in reason and "layer 3: 1500" in reason and ".nnz" in reason
    with pytest.raises(NnzipError, match="one intermediate_size for every layer"):
        save_hf(uneven, tmp_path / "uneven")
    assert not (tmp_path / "uneven").exists()


def test_removed_attention_heads_are_refused_because_no_config_describes_them(minilm, tmp_path):
    fewer_heads = copy.deepcopy(minilm)
    prune_heads(fewer_heads, {layer: [0, 5, 7, 11] for layer in range(6)})
    reason = hf_save_refusal(fewer_heads)
    assert "keep 8 heads of size 32, not 12" in reason and "pruned_heads" in reason
    with pytest.raises(NnzipError, match="attention heads were removed"):
        save_hf(fewer_heads, tmp_path / "heads")
    assert not (tmp_path / "heads").exists()


def test_a_quantized_encoder_is_refused_and_pointed_to_onnx_and_nnz(minilm, tmp_path):
    quantized = quantize_dynamic(minilm)
    reason = hf_save_refusal(quantized)
    assert "quantized by nnzip" in reason and ".nnz" in reason and "ONNX" in reason
    with pytest.raises(NnzipError, match="quantized by nnzip"):
        save_hf(quantized, tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_a_foreign_folder_is_never_replaced_but_an_earlier_save_is(minilm, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(NnzipError, match="not written by nnzip"):
        save_hf(minilm, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(NnzipError, match="a file with that name exists"):
        save_hf(minilm, tmp_path / "file")
    folder = save_hf(minilm, tmp_path / "model", extra={"run": 1})
    save_hf(minilm, folder, extra={"run": 2})
    assert _read_json(folder / "nnzip.json")["extra"] == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model", "notes"]


def test_a_model_that_is_not_a_hugging_face_model_is_refused():
    assert "not a Hugging Face model" in hf_save_refusal(nn.Linear(4, 2))


# --- a causal language model: any wrapper whose .transformer is a PreTrainedModel -------------

class _CausalLM(nn.Module):
    def __init__(self, lm: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.transformer = lm
        self.head = head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids=ids).logits


@pytest.fixture
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    return _CausalLM(GPT2LMHeadModel(config).eval())


def test_a_causal_lm_keeps_its_tied_head_through_from_pretrained(tiny_gpt2, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_gpt2.transformer
    assert lm.lm_head.weight is lm.transformer.wte.weight
    folder = save_hf(tiny_gpt2, tmp_path / "lm")
    with safe_open(folder / "model.safetensors", "pt") as file:
        assert "lm_head.weight" not in file.keys()  # the tied matrix is stored once
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation=lm.config._attn_implementation)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, tiny_gpt2(ids))
    with pytest.raises(NnzipError, match="holds a _CausalLM saved by nnzip's save_hf"):
        load_model(folder)  # not mistaken for a sentence encoder


def test_an_untied_head_or_a_head_outside_the_transformer_is_refused(tiny_gpt2):
    untied = copy.deepcopy(tiny_gpt2)
    untied.transformer.lm_head.weight = nn.Parameter(untied.transformer.lm_head.weight * 2)
    assert "tie them again" in hf_save_refusal(untied)
    extra = _CausalLM(tiny_gpt2.transformer, head=nn.Linear(16, 2))
    assert "weights outside its transformer (head.weight, head.bias)" in hf_save_refusal(extra)


# --- the artifacts of what a folder cannot hold: .nnz and ONNX --------------------------------

@pytest.fixture(scope="module")
def tiny_encoder(minilm):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        attn_implementation="eager")
    return SentenceEncoder(BertModel(config, add_pooling_layer=False), minilm.tokenizer).eval()


@pytest.fixture(scope="module")
def token_ids(tiny_encoder, sentences):
    """Two batches of other sizes and sentence lengths: the example, and the check."""
    return tiny_encoder.tokenize(sentences[:2])[0], tiny_encoder.tokenize(sentences[2:])[0]


def _pruned_heads_and_neurons(encoder: nn.Module) -> nn.Module:
    pruned = copy.deepcopy(encoder)
    prune_heads(pruned, {0: [1], 1: [0, 2]})
    prune_neurons(pruned, {0: [1, 2, 3], 1: [5]})
    return pruned


def test_a_structurally_pruned_encoder_round_trips_through_nnz(tiny_encoder, token_ids, tmp_path):
    pruned = _pruned_heads_and_neurons(tiny_encoder)
    example, other = token_ids
    assert example.shape[1] != other.shape[1]
    loaded = load_nnz(save_nnz(pruned, tmp_path / "pruned.nnz", example=example))
    with torch.no_grad():
        for ids in token_ids:
            assert torch.equal(loaded(ids), pruned(ids))


def test_a_weight_only_int8_encoder_round_trips_through_nnz(tiny_encoder, token_ids, tmp_path):
    example, other = token_ids
    quantized = quantize_static(tiny_encoder, [example],
                                QuantConfig(activation_bits=None, embedding_bits=8))
    path = save_nnz(quantized, tmp_path / "w8.nnz", example=example, huffman=False)
    fp32_bytes = 4 * sum(p.numel() for p in tiny_encoder.parameters())
    assert path.stat().st_size < 0.4 * fp32_bytes  # int8 + scales (31 %), not fp32 copies
    with torch.no_grad():
        assert torch.equal(load_nnz(path)(other), quantized(other))


def test_a_structurally_pruned_encoder_exports_to_onnx(tiny_encoder, token_ids, tmp_path):
    pruned = _pruned_heads_and_neurons(tiny_encoder)
    example, other = token_ids
    runtime = OrtModule(export_onnx(pruned, tmp_path / "pruned.onnx", example, sequence_dim=1))
    with torch.no_grad():
        assert (runtime(other) - pruned(other)).abs().max() < 1e-6


def test_dynamic_quantization_has_no_nnz_but_exports_as_matmulinteger(tiny_encoder, token_ids,
                                                                      tmp_path):
    dynamic = quantize_dynamic(tiny_encoder)
    with pytest.raises(NnzipError, match="not quantized activations"):
        save_nnz(dynamic, tmp_path / "dynamic.nnz", example=token_ids[0])
    assert not list(tmp_path.iterdir())
    # Issue 16: DynamicQuantizeLinear + MatMulInteger with nnzip's int8 weights
    # (tests/runtime/test_onnx_lowbit.py checks the integers and the outputs).
    path = export_onnx(dynamic, tmp_path / "dynamic.onnx", token_ids[0], sequence_dim=1)
    assert op_counts(path).get("MatMulInteger", 0) >= 6


def test_a_factorized_encoder_is_refused_by_its_swapped_layers(tiny_encoder):
    factorized = apply(copy.deepcopy(tiny_encoder), "svd", rank=4, finetune_epochs=0).model
    reason = hf_save_refusal(factorized)
    assert reason.startswith("from_pretrained would build a BertModel that differs")
    assert "other layers: encoder.layer.0.attention.self.query is a Sequential, not a Linear" \
        in reason


def test_a_weight_only_quantized_encoder_saves_its_float_view(tiny_encoder, token_ids, tmp_path):
    from nnzip.runtime.onnx_export import float_view

    example, other = token_ids
    quantized = quantize_static(tiny_encoder, [example],
                                QuantConfig(activation_bits=None, embedding_bits=8))
    assert hf_save_refusal(quantized) is not None
    folder = save_hf(float_view(quantized), tmp_path / "dequantized")
    with torch.no_grad():
        assert torch.equal(load_hf(folder)(other), quantized(other))
