"""The zoo's GPT: logits (batch, positions, vocabulary), GPT-2's function with Linear layers,
the LM head tied to the embedding (and still tied, stored once, after every compression method),
exact zoo round trips, and cached training that lowers the perplexity."""

import copy

import pytest
import torch
from lm_helpers import tiny_lm, tiny_lm_data
from safetensors import safe_open

import nnzip
from nnzip.errors import NnzipError
from nnzip.evaluate.language import perplexity
from nnzip.evaluate.size import tensor_bytes
from nnzip.models import create_model, load_model, save_model
from nnzip.models.causal_lm import CausalLM, conv1d_to_linear, tied_head
from nnzip.train import TrainConfig, train_zoo_model


@pytest.fixture(scope="module")
def data():
    return tiny_lm_data()


def test_logits_are_batch_positions_vocabulary_and_the_head_is_tied(data):
    model = tiny_lm(data)
    x = data.test.tensors[0][:3]
    assert model(x).shape == (3, 16, 30522)
    lm = model.transformer
    assert lm.lm_head.weight is lm.transformer.wte.weight and tied_head(model)
    assert lm.config.n_positions == 16 and lm.config.vocab_size == 30522
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 4 + 1   # c_attn, c_proj, c_fc, c_proj per block, and the head


def test_linear_layers_compute_what_gpt2s_conv1d_computes(data):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = CausalLM(16, 30522, n_embd=32, n_layer=2, n_head=2).eval()
    torch.manual_seed(0)   # the same initialisation, Conv1D kept
    reference = GPT2LMHeadModel(copy.deepcopy(model.config)).eval()
    assert type(reference.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    x = data.test.tensors[0][:2]
    with torch.no_grad():
        assert torch.allclose(model(x), reference(input_ids=x).logits, atol=1e-5)
    assert len(conv1d_to_linear(reference)) == 8
    with torch.no_grad():
        assert torch.allclose(model(x), reference(input_ids=x).logits, atol=1e-5)


def test_zoo_round_trip_is_exact_and_stores_the_tied_tensor_once(data, tmp_path):
    model = tiny_lm(data)
    save_model(model, tmp_path / "gpt")
    with safe_open(tmp_path / "gpt" / "model.safetensors", framework="pt") as file:
        names = set(file.keys())
    tied = {"transformer.lm_head.weight", "transformer.transformer.wte.weight"}
    assert len(names & tied) == 1
    loaded = load_model(tmp_path / "gpt")
    assert tied_head(loaded)
    x = data.test.tensors[0][:2]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_model_with_dropped_layers_saves_and_loads_as_what_it_became(data, tmp_path):
    model = nnzip.apply(tiny_lm(data), "drop_layers", data, keep=[1]).model
    assert model.nnzip_spec["kwargs"]["n_layer"] == 1
    save_model(model, tmp_path / "gpt1")
    loaded = load_model(tmp_path / "gpt1")
    assert len(loaded.transformer.transformer.h) == 1 and tied_head(loaded)
    x = data.test.tensors[0][:2]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_bad_shapes_and_options_are_clear_errors(data):
    with pytest.raises(NnzipError, match="token ids shaped"):
        create_model("gpt", input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(NnzipError, match="multiple of n_head"):
        create_model("gpt", input_shape=(16,), num_classes=100, n_embd=30, n_head=4)
    model = tiny_lm(data)
    with pytest.raises(NnzipError, match="exceed the model's 16 positions"):
        model(torch.zeros(1, 17, dtype=torch.int64))
    with pytest.raises(NnzipError, match="as integers"):
        model(torch.zeros(1, 16))


def test_training_is_cached_and_lowers_the_perplexity(data, tmp_path):
    config = TrainConfig(epochs=2, lr=3e-3, batch_size=16, patience=None, augment=False)
    torch.manual_seed(config.seed)   # the zoo's default gpt, as train_zoo_model makes it
    untrained = create_model("gpt", input_shape=(16,), num_classes=data.num_classes)
    before = perplexity(untrained, data, "val")
    model = train_zoo_model("gpt", data, config, cache_dir=tmp_path, progress=False).eval()
    after = perplexity(model, data, "val")
    assert after < 0.5 * before
    cached = train_zoo_model("gpt", data, config, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 1   # one cached model folder, no checkpoint left
    x = data.test.tensors[0][:2]
    with torch.no_grad():
        assert torch.equal(cached(x), model(x))


# What every method of issue 14 does to the tied head: (stage, options).
METHODS = [
    ("quantize", {"activation_bits": None}),
    ("quantize", {"activation_bits": None, "weight_bits": 4, "granularity": "group",
                  "group_size": 16, "rounding": "gptq"}),
    ("quantize", {"activation_bits": None, "weight_bits": 4, "granularity": "group",
                  "group_size": 16, "awq": True}),
    ("prune", {"sparsity": 0.5, "finetune_epochs": 0}),
    ("prune", {"sparsity": 0.5, "criterion": "wanda", "finetune_epochs": 0}),
    ("prune", {"pattern": "n:m", "criterion": "sparsegpt", "finetune_epochs": 0}),
    ("drop_layers", {"keep": [1]}),
    ("distill", {"finetune_epochs": 1, "temperature": 2.0}),
]


@pytest.mark.parametrize(("stage", "options"), METHODS,
                         ids=[f"{s}-{i}" for i, (s, _) in enumerate(METHODS)])
def test_the_head_stays_tied_and_is_stored_once_after_every_method(data, stage, options):
    model = tiny_lm(data)
    result = nnzip.apply(model, stage, data, **options)
    assert tied_head(result.model)
    state = result.model.state_dict()
    head = [k for k in state if k.startswith("transformer.lm_head.")]
    embedding = [k.replace("transformer.lm_head.", "transformer.transformer.wte.") for k in head]
    assert head and all(state[h].data_ptr() == state[e].data_ptr()
                        for h, e in zip(head, embedding, strict=True))
    every_entry = sum(v.numel() * v.element_size() for v in state.values()
                      if isinstance(v, torch.Tensor))
    once = sum(state[h].numel() * state[h].element_size() for h in head)
    assert tensor_bytes(result.model) == every_entry - once
    with torch.no_grad():
        assert torch.isfinite(result.model(data.test.tensors[0][:2])).all()
