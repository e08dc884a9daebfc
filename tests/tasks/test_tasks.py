"""Tasks decide what a model is judged by: the same pipeline measures a classifier's accuracy, a
language model's perplexity and a sentence encoder's STS Spearman and fidelity."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nnzip import apply
from nnzip.data.splits import DataSplits
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig, evaluate
from nnzip.evaluate.embedding import evaluate_sts
from nnzip.recipe import parse_recipe
from nnzip.tasks import TASKS, sentence_data, task_of
from nnzip.train import TrainConfig, fit, validate

FAST = EvalConfig(warmup=1, repeats=2, batch_sizes=(1, 4), eval_batch_size=8)


class TinyLM(nn.Module):
    """Token ids (N, L) -> next-token logits (N, L, V): an embedding and a GRU."""

    def __init__(self, vocab: int = 12, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


def _lm_data(vocab: int = 12, length: int = 8) -> DataSplits:
    """A counting language: each token is the previous plus one (mod vocab)."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorDataset:
        start = torch.randint(0, vocab, (n, 1), generator=generator)
        tokens = (start + torch.arange(length + 1)) % vocab
        return TensorDataset(tokens[:, :-1], tokens[:, 1:])

    return DataSplits("counting", split(128), split(32), split(48), num_classes=vocab,
                      input_shape=(length,), task="lm")


def test_every_data_names_its_task_and_an_unknown_one_is_refused():
    assert task_of(_lm_data()).name == "lm"
    data = _lm_data()
    data.task = "segment"
    with pytest.raises(NnzipError, match="unknown task 'segment'"):
        task_of(data)


def test_lm_perplexity_is_exp_of_the_mean_next_token_cross_entropy():
    torch.manual_seed(0)
    model, data = TinyLM(), _lm_data()
    entry = evaluate(model, data, config=FAST)
    x, y = data.test.tensors
    with torch.no_grad():
        logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, 12), y.reshape(-1))
    assert entry["task"] == "lm"
    assert entry["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert entry["accuracy"] == pytest.approx(
        float((logits.argmax(-1) == y).float().mean()), abs=1e-9)
    assert entry["agreement"] == 1.0 and entry["spearman"] is None
    assert "token ids" in entry["robustness"]["note"]


def test_training_a_language_model_lowers_its_perplexity():
    torch.manual_seed(0)
    model, data = TinyLM(), _lm_data()
    before = evaluate(model, data, config=FAST)["perplexity"]
    fit(model, data, TrainConfig(epochs=10, lr=1e-2, batch_size=16, patience=None),
        progress=False)
    after = evaluate(model, data, config=FAST)
    assert after["perplexity"] < before / 3
    assert after["accuracy"] > 0.5
    # Validation scores next tokens, as the test metric does.
    _, score = validate(model, data.loader("val"), TASKS["lm"])
    assert 0.5 < score <= 1.0


def test_a_stage_that_does_not_fit_the_task_is_refused_naming_stage_and_task():
    recipe = parse_recipe({"stages": [{"prune": {"sparsity": 0.5}},
                                      {"prune_channels": {"sparsity": 0.5}}]}, source="r.yaml")
    with pytest.raises(NnzipError, match=r"r.yaml, stage 2 \(prune_channels\) does not fit "
                                         r"the lm task"):
        recipe.check_task(TASKS["lm"])
    recipe.check_task(TASKS["classify"])  # every stage fits a classifier
    with pytest.raises(NnzipError, match="does not fit the embed task"):
        parse_recipe({"stages": [{"distill": {"student": "lenet5_small"}}]}).check_task(
            TASKS["embed"])
    with pytest.raises(NnzipError, match="criteria taylor and hessian"):
        parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "criterion": "taylor"}}]}
                     ).check_task(TASKS["embed"])


def test_apply_refuses_a_stage_that_does_not_fit_the_data_before_running_it():
    model = TinyLM()
    weights = copy.deepcopy(model.state_dict())
    with pytest.raises(NnzipError, match="prune_channels does not fit the lm task"):
        apply(model, "prune_channels", _lm_data(), sparsity=0.5)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def sts_data(minilm):
    return sentence_data(minilm, pairs=24, train_sentences=40, seed=0)


def test_sentence_data_targets_are_the_encoders_own_embeddings(minilm, sts_data):
    assert sts_data.task == "embed" and len(sts_data.pairs) == 24
    assert len(sts_data.train) + len(sts_data.val) == 40
    x, y = sts_data.test.tensors
    assert x.dtype == torch.int64 and y.shape == (len(sts_data.pairs.sentences()), 384)
    with torch.no_grad():
        assert torch.allclose(minilm(x[:4]), y[:4], atol=1e-5)


def test_embed_metrics_match_the_sts_evaluation_and_the_original_is_faithful(minilm, sts_data):
    entry = evaluate(minilm, sts_data, config=FAST)
    direct = evaluate_sts(minilm, sts_data.pairs, batch_size=8)
    # Sentences padded to the split's longest give the same embeddings, within float noise.
    assert entry["spearman"] == pytest.approx(direct["spearman"], abs=2e-3)
    assert entry["fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert entry["neighbour_overlap"] == 1.0
    assert entry["accuracy"] is None and entry["perplexity"] is None


def test_finetuning_a_pruned_encoder_distils_it_back_toward_the_original(minilm, sts_data):
    pruned = apply(copy.deepcopy(minilm), "prune", sts_data, sparsity=0.6,
                   criterion="magnitude", finetune_epochs=0).model
    before = evaluate(pruned, sts_data, config=FAST)["fidelity"]
    result = apply(pruned, "distill", sts_data, finetune_epochs=2, lr=1e-4, batch_size=12,
                   alpha=1.0)
    after = evaluate(result.model, sts_data, config=FAST)
    assert before < 0.99 and after["fidelity"] > before
    # distill keeps the pruned zeros: the student is still 60 % sparse where it was pruned.
    zeros = sum(int((p == 0).sum()) for n, p in result.model.named_parameters()
                if n.endswith("dense.weight"))
    assert zeros > 0.5 * sum(p.numel() for n, p in result.model.named_parameters()
                             if n.endswith("dense.weight"))


def test_sensitivity_on_a_language_model_scores_next_tokens_batch_by_batch():
    from nnzip.prune.sensitivity import layer_sensitivity

    torch.manual_seed(0)
    model, data = TinyLM(), _lm_data()
    fit(model, data, TrainConfig(epochs=10, lr=1e-2, batch_size=16, patience=None),
        progress=False)
    curves = layer_sensitivity(model, data, sparsities=(0.9,), layers=["head"])
    dense = validate(model, data.loader("val"), TASKS["lm"])[1]
    assert curves["head.weight"][0.0] == pytest.approx(dense)
    assert curves["head.weight"][0.9] < dense  # 90 % of the output layer gone: it must show
