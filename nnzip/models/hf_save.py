"""Compressed Hugging Face models saved as folders that ``transformers`` loads.

:func:`save_hf` writes the ``.transformer`` of an nnzip wrapper (a
:class:`~nnzip.models.hf.SentenceEncoder`, a causal language model, or a bare
``transformers.PreTrainedModel``) with transformers' own ``save_pretrained`` (``config.json`` and
``model.safetensors``, tied weights stored once), its tokenizer, and for a sentence encoder the
sentence-transformers files of its pooling (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``), so ``AutoModel.from_pretrained``,
``sentence_transformers.SentenceTransformer`` and :func:`~nnzip.models.hf.load_hf` all read it.

transformers rebuilds a model from ``config.json`` alone, so a compressed model round-trips only
if its config can describe it. :func:`hf_save_refusal` says, before anything is written, why it
cannot (transformers 5.24):

- unstructured or N:M pruning: saved; the zeros are stored as zeros and load back exactly;
- ``drop_layers``: saved (``num_hidden_layers`` follows the layers kept);
- FFN neurons removed, the same number in every layer: saved (``intermediate_size``); a different
  number per layer is refused: BERT's config has one ``intermediate_size`` for all layers;
- attention heads removed: refused. transformers 5 removed ``prune_heads`` and the config's
  ``pruned_heads``, and BERT derives the head size as ``hidden_size / num_attention_heads``, so
  no config describes fewer heads of the original size;
- quantized or weight-shared: refused; ``from_pretrained`` builds float layers and cannot read
  nnzip's integers and scales (or codebooks). Their artifacts are the ``.nnz`` file
  (:func:`~nnzip.models.nnz.save_nnz`) and the QDQ ONNX file
  (:func:`~nnzip.runtime.onnx_export.export_onnx`).

A folder nnzip cannot describe with a config is refused rather than written: a folder that loads
with randomly initialised or wrongly shaped weights would be worse than none.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnzip.atomic import atomic_dir
from nnzip.errors import NnzipError
from nnzip.models.nnz import nnzip_version

log = logging.getLogger(__name__)

FORMAT = "nnzip-hf"
FORMAT_VERSION = 1
#: The file that marks a folder as written by :func:`save_hf` (so a later save may replace it).
MARKER_FILE = "nnzip.json"
POOLING_FOLDER = "1_Pooling"
NORMALIZE_FOLDER = "2_Normalize"
_OTHER_ARTIFACTS = ("save the .nnz file (nnzip.models.nnz.save_nnz(model, 'model.nnz', "
                    "example=input_ids)) or the ONNX file (nnzip.runtime.export_onnx(model, "
                    "'model.onnx', input_ids, sequence_dim=1)) instead")
_LISTED = 4  # names listed in a message before "and N more"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _pretrained_model(model: nn.Module) -> nn.Module:
    """The ``transformers.PreTrainedModel`` that ``save_pretrained`` writes: ``model.transformer``
    of an nnzip wrapper, or ``model`` itself."""
    try:
        from transformers import PreTrainedModel
    except ImportError as exc:
        raise NnzipError("saving a Hugging Face folder needs transformers: "
                         "pip install 'nnzip[transformers]'") from exc
    if isinstance(model, PreTrainedModel):
        return model
    transformer = getattr(model, "transformer", None)
    if isinstance(transformer, PreTrainedModel):
        return transformer
    raise NnzipError(f"{type(model).__name__} is not a Hugging Face model (it has no "
                     ".transformer that is a transformers PreTrainedModel), so there is no "
                     "config.json to save it with: save it with nnzip.save (a .nnz file)")


def _weights_outside(model: nn.Module, transformer: nn.Module) -> list[str]:
    """State-dict entries of the wrapper that ``config.json`` + ``model.safetensors`` of the
    transformer would not carry (a head the wrapper adds, say)."""
    if model is transformer:
        return []
    prefix = next(name for name, module in model.named_modules() if module is transformer)
    return [name for name in model.state_dict() if not name.startswith(f"{prefix}.")]


def _quantized(transformer: nn.Module) -> list[str]:
    # nnzip.quant is a method family: imported here, when a model is checked, not at import.
    from nnzip.quant.modules import quantized_layers
    from nnzip.quant.parametrized import quantized_weights

    return sorted({*quantized_layers(transformer), *quantized_weights(transformer)})


def _parametrized(transformer: nn.Module) -> tuple[list[str], list[str]]:
    """(the names of the parametrized tensors, the parametrizations' class names)."""
    names, kinds = [], set()
    for name, module in transformer.named_modules():
        if parametrize.is_parametrized(module):
            for tensor, chain in module.parametrizations.items():
                names.append(f"{name}.{tensor}" if name else tensor)
                kinds.update(type(step).__name__ for step in chain)
    return names, sorted(kinds)


def _config_with_shapes(transformer: nn.Module) -> tuple[Any, list[str]]:
    """A copy of the config that describes the transformer as it is now (layer count and FFN
    width of a BERT-style encoder), and the reasons it cannot (heads, per-layer widths)."""
    from nnzip.prune.transformer import encoder_shape  # shapes only: no pruning is done here

    config = copy.deepcopy(transformer.config)
    try:
        shape = encoder_shape(transformer)
    except NnzipError:  # not a BERT-style encoder: the comparison of tensors decides alone
        return config, []
    problems = []
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(shape)
    hidden = getattr(config, "hidden_size", None)
    fewer_heads = [index for index, layer in enumerate(shape)
                   if hidden is not None and layer["heads"] * layer["head_size"] != hidden]
    if fewer_heads:
        heads = sorted({shape[i]["heads"] for i in fewer_heads})
        problems.append(
            f"attention heads were removed (layer{'s' if len(fewer_heads) > 1 else ''} "
            f"{_listing([str(i) for i in fewer_heads])} keep "
            f"{' / '.join(map(str, heads))} heads of size {shape[fewer_heads[0]]['head_size']}, "
            f"not {hidden // shape[fewer_heads[0]]['head_size']}), and a "
            f"{type(config).__name__} cannot describe that: it derives the head size as "
            "hidden_size / num_attention_heads, and transformers 5 removed pruned_heads")
    widths = [layer["neurons"] for layer in shape]
    if len(set(widths)) == 1 and hasattr(config, "intermediate_size"):
        config.intermediate_size = widths[0]
    elif len(set(widths)) > 1:
        per_layer = ", ".join(f"layer {i}: {w}" for i, w in enumerate(widths))
        problems.append(f"the layers keep different numbers of FFN neurons ({per_layer}), and a "
                        f"{type(config).__name__} has one intermediate_size for every layer "
                        "(remove the same number of neurons in every layer to save a folder)")
    return config, problems


def _fresh(transformer: nn.Module, config: Any) -> tuple[nn.Module, list[str]]:
    """What ``from_pretrained`` builds from ``config`` (shapes only, on the meta device) without
    the sub-modules the model has as ``None`` (BERT's pooler, which load_hf drops), and their
    names."""
    with torch.device("meta"):
        fresh = type(transformer)(config)
    removed = []
    for name, _ in fresh.named_modules():
        parent, _, child = name.rpartition(".")
        try:
            owner = transformer.get_submodule(parent) if parent else transformer
        except AttributeError:  # the model has no such parent (it was removed itself)
            continue
        if name and hasattr(owner, child) and getattr(owner, child) is None:
            removed.append(name)
    for name in removed:
        parent, _, child = name.rpartition(".")
        setattr(fresh.get_submodule(parent) if parent else fresh, child, None)
    return fresh, removed


def _tensor_mismatch(transformer: nn.Module, fresh: nn.Module) -> str | None:
    ours = {k: tuple(v.shape) for k, v in transformer.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    missing = sorted(theirs.keys() - ours.keys())
    unexpected = sorted(ours.keys() - theirs.keys())
    wrong = [f"{k} {ours[k]} (config: {theirs[k]})"
             for k in sorted(ours.keys() & theirs.keys()) if ours[k] != theirs[k]]
    types = dict(fresh.named_modules())
    swapped = [f"{name} is a {type(module).__name__}, not a {type(types[name]).__name__}"
               for name, module in transformer.named_modules()
               if name in types and type(module) is not type(types[name])]
    parts = [f"{label}: {_listing(names)}" for label, names in (
        ("other layers", swapped), ("other shapes", wrong), ("missing", missing),
        ("not in the config's model", unexpected)) if names]
    return "; ".join(parts) or None


def _untied_head(transformer: nn.Module, config: Any) -> bool:
    """The config ties the output head to the input embeddings, but the model's differ:
    ``from_pretrained`` would tie them again and change the outputs."""
    if not getattr(config, "tie_word_embeddings", False):
        return False
    try:
        head, embeddings = transformer.get_output_embeddings(), transformer.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    if head is None or embeddings is None:
        return False
    return head.weight is not embeddings.weight and not torch.equal(head.weight,
                                                                    embeddings.weight)


def _plan(model: nn.Module) -> tuple[nn.Module, Any, list[str]]:
    """(the PreTrainedModel to save, the config to save it with, the sub-modules it dropped);
    NnzipError if transformers could not rebuild the model from any config."""
    transformer = _pretrained_model(model)
    name = type(model).__name__
    quantized = _quantized(transformer)
    if quantized:
        raise NnzipError(
            f"{name} is quantized by nnzip ({len(quantized)} weights, e.g. {quantized[0]}), "
            "and from_pretrained builds float layers that cannot hold nnzip's integer weights "
            f"and scales: {_OTHER_ARTIFACTS} (ONNX Runtime runs the integers). For a float "
            "folder anyway, at fp32 size, save_hf(float_view(model), folder) "
            "(nnzip.runtime.onnx_export.float_view: the dequantized weights; it computes the "
            "same only if the activations were not quantized)")
    outside = _weights_outside(model, transformer)
    if outside:
        raise NnzipError(f"{name} holds weights outside its transformer ({_listing(outside)}), "
                         f"which config.json and model.safetensors cannot carry: "
                         f"{_OTHER_ARTIFACTS}")
    parametrized, kinds = _parametrized(transformer)
    if parametrized:
        raise NnzipError(
            f"{name} has weights computed by parametrizations ({', '.join(kinds)}: weight "
            f"sharing, or pruning masks not folded) on {_listing(parametrized)}, which "
            "from_pretrained cannot "
            f"rebuild: {_OTHER_ARTIFACTS}; or, for a float folder at fp32 size, make them plain "
            "weights first (nnzip.share.modules.unshare, nnzip.prune.fold_masks)")
    config, problems = _config_with_shapes(transformer)
    if problems:
        raise NnzipError(f"config.json cannot describe this {type(transformer).__name__}: "
                         f"{'; '.join(problems)}; {_OTHER_ARTIFACTS}")
    fresh, removed = _fresh(transformer, config)
    mismatch = _tensor_mismatch(transformer, fresh)
    if mismatch:
        raise NnzipError(f"from_pretrained would build a {type(transformer).__name__} that "
                         f"differs from this one ({mismatch}), e.g. after factorization or "
                         f"structured pruning: {_OTHER_ARTIFACTS}")
    if _untied_head(transformer, config):
        raise NnzipError("the output head is no longer the input embedding matrix, but the "
                         "config ties them, so from_pretrained would tie them again and change "
                         f"the outputs: {_OTHER_ARTIFACTS}")
    return transformer, config, removed


def hf_save_refusal(model: nn.Module) -> str | None:
    """Why :func:`save_hf` cannot write ``model`` as a folder ``from_pretrained`` loads with
    identical outputs, or None if it can. Nothing is written."""
    try:
        _plan(model)
    except NnzipError as error:
        return str(error)
    return None


def _check_destination(folder: Path) -> None:
    """Only a missing or empty folder, or an earlier save_hf folder, may be written."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise NnzipError(f"cannot save the model to {folder}: a file with that name exists; "
                         "choose a new folder name")
    if any(folder.iterdir()) and not _is_nnzip_folder(folder):
        raise NnzipError(f"cannot save the model to {folder}: the folder holds files and was "
                         "not written by nnzip's save_hf, and saving would replace it; choose a "
                         "new or empty folder")


def _is_nnzip_folder(folder: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT


def saved_wrapper(folder: str | os.PathLike) -> str | None:
    """The class name of the nnzip wrapper :func:`save_hf` saved in ``folder``
    (``"SentenceEncoder"``...), or None if save_hf did not write it."""
    if not _is_nnzip_folder(Path(folder)):
        return None
    wrapper = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8")).get("wrapper")
    return str(wrapper) if wrapper else None


def _write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _write_sentence_transformers(folder: Path, model: nn.Module, hidden_size: int) -> None:
    """The sentence-transformers files of a SentenceEncoder's pooling.

    Written by hand in the format of sentence-transformers 2.x, which 2.x to 6.x read (and
    load_hf): sentence-transformers is not a dependency of nnzip, and its Transformer module is
    only built by loading a folder, so it cannot save a model it did not load."""
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": POOLING_FOLDER,
                "type": "sentence_transformers.models.Pooling"}]
    if model.normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_FOLDER,
                        "type": "sentence_transformers.models.Normalize"})
    _write_json(folder / "modules.json", modules)
    _write_json(folder / POOLING_FOLDER / "config.json", {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": model.pooling == "cls",
        "pooling_mode_mean_tokens": model.pooling == "mean",
        "pooling_mode_max_tokens": model.pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False})
    _write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": int(model.max_length), "do_lower_case": False})


def save_hf(model: nn.Module, folder: str | os.PathLike,
            extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as a Hugging Face folder, atomically (a temporary folder, then a rename).

    ``model`` is an nnzip wrapper whose ``.transformer`` is a ``transformers.PreTrainedModel``
    (or that model itself). The folder holds ``config.json`` (describing the compressed shapes)
    and ``model.safetensors`` from ``save_pretrained``, the wrapper's tokenizer if it has one,
    the sentence-transformers files of a :class:`~nnzip.models.hf.SentenceEncoder`, and
    ``nnzip.json`` (what wrote it, and ``extra``: JSON-serialisable metadata).

    Raises :class:`NnzipError` with :func:`hf_save_refusal`'s reason if transformers could not
    load it back identically (quantized, weight-shared, heads removed...), and refuses to replace
    a non-empty folder that an earlier ``save_hf`` did not write.
    """
    from nnzip.models.hf import SentenceEncoder

    folder = Path(folder).expanduser()
    transformer, config, removed = _plan(model)
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise NnzipError(f"extra metadata must be JSON-serialisable ({exc}): pass numbers, "
                         "strings, lists and dicts") from exc
    _check_destination(folder)
    saved_config = transformer.config
    with atomic_dir(folder) as tmp:
        transformer.config = config  # the copy describing the shapes, for the save only
        try:
            transformer.save_pretrained(tmp)
        finally:
            transformer.config = saved_config
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(tmp)
        if isinstance(model, SentenceEncoder):
            _write_sentence_transformers(tmp, model, int(config.hidden_size))
        _write_json(tmp / MARKER_FILE, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "nnzip_version": nnzip_version(),
            "wrapper": type(model).__name__, "architecture": type(transformer).__name__,
            "removed_modules": removed, "extra": extra})
    log.info("saved %s as a Hugging Face folder %s", type(transformer).__name__, folder)
    return folder


__all__ = ["hf_save_refusal", "save_hf", "saved_wrapper"]
