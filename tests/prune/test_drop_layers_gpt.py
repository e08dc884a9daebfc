"""Layer dropping on a GPT-2-style decoder: the blocks kept compute as before, the config's
n_layer follows, Wanda/SparseGPT find the decoder's Linear layers, and distillation from the
full model brings the shallower one back towards it (over (batch, positions, vocabulary) logits).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from lm_helpers import tiny_lm, tiny_lm_data
from torch.utils.data import TensorDataset

import nnzip
from nnzip.data import DataSplits
from nnzip.errors import NnzipError
from nnzip.evaluate.language import perplexity
from nnzip.models import create_model
from nnzip.prune import drop_layers, encoder_linear_weights, transformer_blocks


@pytest.fixture(scope="module")
def data():
    return tiny_lm_data()


def _hidden_after_blocks(model, x, blocks):
    """The residual stream after running ``blocks`` in order (no final LayerNorm)."""
    gpt = model.transformer.transformer
    hidden = gpt.wte(x) + gpt.wpe(torch.arange(x.shape[1]))
    mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)[None, None]
    for block in blocks:
        output = block(hidden, attention_mask=mask)
        hidden = output[0] if isinstance(output, tuple) else output
    return hidden


def test_drop_layers_keeps_the_chosen_gpt2_blocks_and_n_layer_follows(data):
    model = tiny_lm(data, n_layer=3)
    original = copy.deepcopy(model)
    result = nnzip.apply(model, "drop_layers", data, keep=[0, 2])
    dropped = result.model
    blocks = dropped.transformer.transformer.h
    assert len(blocks) == 2 and dropped.config.n_layer == 2
    assert [b.attn.layer_idx for b in blocks] == [0, 1]
    assert result.details["kept_layers"] == [0, 2] and result.details["layers_before"] == 3
    assert result.details["params_after"] < result.details["params_before"]
    removed = {n for n, r in ((r.name, r) for r in result.coverage.records) if r.changed}
    assert removed and all(n.startswith("transformer.transformer.h.") for n in removed)
    x = data.test.tensors[0][:2]
    with torch.no_grad():
        expected = _hidden_after_blocks(original, x, [original.transformer.transformer.h[i]
                                                      for i in (0, 2)])
        got = _hidden_after_blocks(dropped, x, list(blocks))
        assert torch.allclose(got, expected, atol=1e-5)
        gpt = dropped.transformer
        logits = gpt.lm_head(gpt.transformer.ln_f(got))
        assert torch.allclose(dropped(x), logits, atol=1e-4)


def test_every_other_layer_by_default_and_bad_requests_are_clear_errors(data):
    model = tiny_lm(data, n_layer=4)
    assert len(transformer_blocks(model)) == 4
    assert len(encoder_linear_weights(model)) == 16   # 4 Linear layers a block, no head
    assert nnzip.apply(model, "drop_layers", data).details["kept_layers"] == [1, 3]
    with pytest.raises(NnzipError, match="distinct indices in 0..1"):
        drop_layers(model, [0, 2])
    with pytest.raises(NnzipError, match="nor a stack of transformer blocks"):
        drop_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), [0])


def _stepping(count: int, seed: int, vocabulary: int = 32) -> TensorDataset:
    """Sequences start + step·t (mod V), step 1–3: the next token needs the previous two."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocabulary, (count, 1), generator=generator)
    step = torch.randint(1, 4, (count, 1), generator=generator)
    tokens = (start + step * torch.arange(17)) % vocabulary
    return TensorDataset(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())


def _kl_to_teacher(student, teacher, data) -> float:
    x = data.val.tensors[0]
    with torch.no_grad():
        s, t = student(x), teacher(x)
    return float(F.kl_div(F.log_softmax(s, -1).reshape(-1, s.shape[-1]),
                          F.log_softmax(t, -1).reshape(-1, t.shape[-1]),
                          reduction="batchmean", log_target=True))


def test_distillation_brings_the_dropped_model_back_towards_the_full_one():
    # A task a 2-layer GPT learns in seconds, so that its second layer matters.
    data = DataSplits("stepping", _stepping(512, 0), _stepping(64, 1), _stepping(64, 2),
                      num_classes=32, input_shape=(16,), task="lm")
    torch.manual_seed(0)
    teacher = create_model("gpt", input_shape=(16,), num_classes=32, n_embd=32, n_layer=2,
                           n_head=2, dropout=0.0)
    nnzip.apply(teacher, "finetune", data, epochs=5, lr=1e-2, batch_size=32, augment=False)
    student = nnzip.apply(copy.deepcopy(teacher), "drop_layers", data, keep=[1]).model
    kl_before, perplexity_before = (_kl_to_teacher(student, teacher, data),
                                    perplexity(student, data, "val"))
    result = nnzip.apply(student, "distill", data, teacher=teacher, finetune_epochs=3,
                         lr=1e-2, batch_size=32, temperature=2.0, alpha=1.0)
    assert _kl_to_teacher(result.model, teacher, data) < 0.2 * kl_before
    assert perplexity(result.model, data, "val") < 0.5 * perplexity_before
    assert result.details["teacher_params"] > result.details["student_params"]
