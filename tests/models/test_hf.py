"""Hugging Face encoders: the shipped MiniLM loads offline, pools like sentence-transformers,
and a damaged folder fails with a clear message."""

import shutil

import pytest
import torch

from nnzip.errors import NnzipError
from nnzip.models import load_model
from nnzip.models.hf import SentenceEncoder, load_hf, minilm_path

SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion with a knife.",
             "A man plays the guitar."]


def test_minilm_is_shipped_with_weights_and_sentence_transformers_config():
    folder = minilm_path()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "modules.json").is_file()


def test_minilm_encodes_normalized_embeddings_of_its_hidden_size(minilm):
    assert isinstance(minilm, SentenceEncoder)
    assert minilm.pooling == "mean" and minilm.normalize  # from 1_Pooling and 2_Normalize
    assert 22_000_000 < sum(p.numel() for p in minilm.parameters()) < 23_000_000
    ids, mask = minilm.tokenize(SENTENCES)
    with torch.no_grad():
        embeddings = minilm(ids, mask)
    assert embeddings.shape == (3, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    # Paraphrases are closer than unrelated sentences: the weights are the pretrained ones.
    assert embeddings[0] @ embeddings[2] > 0.8 > 0.3 > embeddings[0] @ embeddings[1]


def test_mask_defaults_to_non_padding_tokens(minilm):
    ids, mask = minilm.tokenize(SENTENCES)
    assert (ids[mask == 0] == minilm.pad_token_id).all()
    with torch.no_grad():
        assert torch.allclose(minilm(ids, mask), minilm(ids), atol=1e-6)
        # Padding does not change a sentence's embedding.
        alone = minilm(minilm.tokenize(SENTENCES[:1])[0])
    assert torch.allclose(alone[0], minilm(ids)[0], atol=1e-5)


def test_load_model_reads_hf_prefix(minilm):
    model = load_model(f"hf:{minilm_path()}")
    assert isinstance(model, SentenceEncoder)
    ids = minilm.tokenize(SENTENCES[:1])[0]
    with torch.no_grad():
        assert torch.allclose(model(ids), minilm(ids))


def test_folder_without_weights_is_a_clear_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_path() / name, folder / name)
    with pytest.raises(NnzipError, match="lacks model.safetensors"):
        load_hf(folder)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NnzipError, match="not found"):
        load_hf(tmp_path / "nowhere")


def test_pooling_config_of_sentence_transformers_6_is_read(minilm, tmp_path):
    import json

    from nnzip.models.hf_save import save_hf

    folder = save_hf(minilm, tmp_path / "st6")
    pooling = folder / "1_Pooling" / "config.json"
    # sentence-transformers 6 writes one "pooling_mode" instead of one flag per mode.
    pooling.write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": "cls",
                                   "include_prompt": True}))
    assert load_hf(folder).pooling == "cls"
    pooling.write_text(json.dumps({"embedding_dimension": 384,
                                   "pooling_mode": "weightedmean"}))
    with pytest.raises(NnzipError, match=r"asks for pooling \['weightedmean'\]"):
        load_hf(folder)
