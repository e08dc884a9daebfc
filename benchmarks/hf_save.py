"""Saving compressed all-MiniLM-L6-v2 models where users expect them, and loading them back.

Each compression of the shipped MiniLM (pruned, layers dropped, FFN neurons or heads removed,
quantized) is saved as each of its artifacts, which are then loaded back and compared with the
model in memory on real STS-B dev sentences (max |Δ| of the unit-norm sentence embeddings):

- the Hugging Face folder (``nnzip.models.hf_save.save_hf``), loaded by ``load_hf`` (eager
  attention, as nnzip loads), by ``transformers.AutoModel`` with its default attention kernel
  (SDPA) and the folder's pooling, and by ``sentence_transformers.SentenceTransformer``; or the
  reason ``hf_save_refusal`` gives;
- the ``.nnz`` file (``save_nnz``: a torch.export program, traced on two sentences, checked on
  a batch of another size and length);
- the ONNX file (``export_onnx``, dynamic batch and sequence; QDQ for nnzip's quantized models),
  run by ONNX Runtime with every graph optimization.

    python benchmarks/hf_save.py [--sentences 64]
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from common import benchmark_parser, machine_line, markdown_table, print_table, write_results
from nnzip.data.sts import calibration_sentences, load_sts
from nnzip.errors import NnzipError
from nnzip.evaluate import machine_info
from nnzip.evaluate.embedding import token_batches
from nnzip.models.hf import SentenceEncoder, load_hf
from nnzip.models.hf_save import hf_save_refusal, save_hf
from nnzip.models.nnz import load_nnz, save_nnz
from nnzip.pipeline import apply
from nnzip.quant import QuantConfig, quantize_dynamic, quantize_static
from nnzip.runtime import OrtModule, export_onnx

NAME = "hf_save"
CALIBRATION_SENTENCES = 128

Build = Callable[[nn.Module, list], nn.Module]


def variants() -> list[tuple[str, Build]]:
    """(name, build): each build compresses a copy of the fp32 model (calibration: batches of
    STS-B training sentences)."""
    def staged(stage: str, **options) -> Build:
        return lambda model, _: apply(copy.deepcopy(model), stage, **options).model

    return [
        ("fp32 (as shipped)", lambda model, _: model),
        ("50 % unstructured (magnitude, global)", staged("prune", sparsity=0.5,
                                                         finetune_epochs=0)),
        ("3 of 6 layers (drop_layers 1, 3, 5)", staged("drop_layers", keep=[1, 3, 5])),
        ("−30 % FFN neurons in every layer", staged("prune_heads", head_ratio=0.0,
                                                    neuron_ratio=0.3,
                                                    calibration_sentences=64)),
        ("−33 % heads, −30 % FFN neurons", staged("prune_heads", head_ratio=0.33,
                                                  neuron_ratio=0.3, calibration_sentences=64)),
        ("weight-only int8 + int8 emb.", lambda model, calibration: quantize_static(
            model, calibration, QuantConfig(activation_bits=None, embedding_bits=8))),
        ("dynamic int8 + int8 emb.", lambda model, _: quantize_dynamic(model,
                                                                       embedding_bits=8)),
        ("W8A8 static + int8 emb.", lambda model, calibration: quantize_static(
            model, calibration, QuantConfig(embedding_bits=8))),
    ]


def max_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected).abs().max())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def timed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def hf_folder(model: nn.Module, folder: Path, sentences: list[str], ids: torch.Tensor,
              mask: torch.Tensor, expected: torch.Tensor) -> dict:
    reason = hf_save_refusal(model)
    if reason is not None:
        return {"saved": False, "reason": reason}
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    _, seconds = timed(lambda: save_hf(model, folder))
    loaders = {}
    with torch.no_grad():
        loaders["load_hf"] = max_difference(load_hf(folder)(ids, mask), expected)
        auto = SentenceEncoder(AutoModel.from_pretrained(folder), model.tokenizer,
                               pooling=model.pooling, normalize=model.normalize)
        loaders["AutoModel (SDPA)"] = max_difference(auto.eval()(ids, mask), expected)
        st = SentenceTransformer(str(folder), device="cpu")
        loaders["SentenceTransformer (SDPA)"] = max_difference(
            st.encode(sentences, batch_size=len(sentences), convert_to_tensor=True), expected)
    return {"saved": True, "bytes": folder_bytes(folder), "save_seconds": seconds,
            "max_abs_difference": loaders}


def nnz_file(model: nn.Module, path: Path, example: torch.Tensor, ids: torch.Tensor,
             expected: torch.Tensor) -> dict:
    try:
        _, seconds = timed(lambda: save_nnz(model, path, example=example))
    except NnzipError as error:
        return {"saved": False, "reason": str(error)}
    with torch.no_grad():
        difference = max_difference(load_nnz(path)(ids), expected)
    return {"saved": True, "bytes": path.stat().st_size, "save_seconds": seconds,
            "max_abs_difference": difference}


def onnx_file(model: nn.Module, path: Path, example: torch.Tensor, ids: torch.Tensor,
              expected: torch.Tensor) -> dict:
    try:
        _, seconds = timed(lambda: export_onnx(model, path, example, sequence_dim=1))
    except NnzipError as error:
        return {"saved": False, "reason": str(error)}
    difference = max_difference(OrtModule(path)(ids), expected)
    return {"saved": True, "bytes": path.stat().st_size, "save_seconds": seconds,
            "max_abs_difference": difference}


def run(name: str, model: nn.Module, sentences: list[str], example: torch.Tensor,
        folder: Path, console: Console) -> dict:
    """Every artifact of ``model`` saved in ``folder``, loaded back and compared."""
    ids, mask = model.tokenize(sentences)
    with torch.no_grad():
        expected = model(ids, mask)
    folder.mkdir(parents=True)
    row = {"name": name, "params": sum(p.numel() for p in model.parameters())}
    row["hf"] = hf_folder(model, folder / "hf", sentences, ids, mask, expected)
    row["nnz"] = nnz_file(model, folder / "model.nnz", example, ids, expected)
    row["onnx"] = onnx_file(model, folder / "model.onnx", example, ids, expected)
    console.print(f"{name}: " + ", ".join(
        f"{kind} {'saved' if row[kind]['saved'] else 'refused'}"
        for kind in ("hf", "nnz", "onnx")))
    return row


SHORT_REASONS = (("attention heads were removed", "refused: heads removed"),
                 ("different numbers of FFN neurons", "refused: FFN widths differ"),
                 ("quantized by nnzip", "refused: quantized"),
                 ("not quantized activations", "refused: activations quantized"),
                 ("dynamically quantized", "refused: dynamic quantization"))


def short(artifact: dict) -> str:
    if artifact["saved"]:
        return "saved"
    return next((label for key, label in SHORT_REASONS if key in artifact["reason"]),
                "refused")


def megabytes(artifact: dict) -> str:
    return f"{artifact['bytes'] / 1e6:.1f} MB" if artifact["saved"] else "–"


def difference(value: float | None) -> str:
    if value is None:
        return "–"
    return "0 (exact)" if value == 0 else f"{value:.1e}"


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for row in report["variants"]:
        hf, nnz, onnx = row["hf"], row["nnz"], row["onnx"]
        loaders = hf.get("max_abs_difference", {})
        rows.append([row["name"], f"{row['params'] / 1e6:.1f} M", short(hf), megabytes(hf),
                     " / ".join(difference(loaders.get(k)) for k in (
                         "load_hf", "AutoModel (SDPA)", "SentenceTransformer (SDPA)")),
                     short(nnz), megabytes(nnz), difference(nnz.get("max_abs_difference")),
                     short(onnx), megabytes(onnx), difference(onnx.get("max_abs_difference"))])
    return rows


COLUMNS = ["model", "params", "HF folder", "folder size",
           "max abs Δ: load_hf / AutoModel / SentenceTransformer", ".nnz", ".nnz size",
           ".nnz max abs Δ", "ONNX", "ONNX size", "ORT max abs Δ"]


def render(report: dict) -> str:
    lines = ["# Compressed all-MiniLM-L6-v2 saved and loaded back", "",
             f"Each model is compared with itself in memory on {report['sentences']} STS-B dev "
             "sentences (one padded batch): max |Δ| of the unit-norm sentence embeddings. The "
             "HF folder is loaded by `load_hf` (eager attention, as nnzip loads), by "
             "`transformers.AutoModel` with its default attention (SDPA) and the folder's "
             "pooling, and by `sentence_transformers.SentenceTransformer` (SDPA); the `.nnz` "
             "program and the ONNX file were traced on 2 sentences and are checked on this "
             "batch (another size and length); ONNX Runtime runs with every graph "
             "optimization. Sizes: the whole folder (weights, tokenizer, configs) or file.", "",
             *markdown_table(COLUMNS, table_rows(report)), "",
             "Why the refused ones were refused (the messages users get):", ""]
    seen = set()
    for row in report["variants"]:
        for kind in ("hf", "nnz", "onnx"):
            artifact = row[kind]
            if not artifact["saved"] and (kind, short(artifact)) not in seen:
                seen.add((kind, short(artifact)))
                lines.append(f"- {row['name']}, {kind}: {artifact['reason']}")
    lines += ["", machine_line(report["machine"], ", 1 thread") +
              f" The run took {report['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sentences", type=int, default=64,
                        help="STS-B dev sentences in the comparison batch")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    console = Console()
    started = time.perf_counter()
    fp32 = load_hf("minilm")
    dev = load_sts("dev")
    sentences = list(dev.sentence1[2:2 + args.sentences])
    example = fp32.tokenize(list(dev.sentence1[:2]))[0]
    calibration, _ = token_batches(fp32, calibration_sentences(CALIBRATION_SENTENCES), 32)
    report = {"benchmark": NAME, "model": "all-MiniLM-L6-v2", "machine": machine_info(1),
              "sentences": len(sentences), "example_tokens": int(example.shape[1]),
              "variants": []}
    with tempfile.TemporaryDirectory(prefix="nnzip-hf-save-") as tmp:
        for index, (name, build) in enumerate(variants()):
            model = build(fp32, calibration)
            report["variants"].append(run(name, model, sentences, example,
                                          Path(tmp) / str(index), console))
            report["seconds"] = time.perf_counter() - started
            write_results(NAME, report, render)
    print_table(console, "Saved and loaded back", COLUMNS, table_rows(report), left=["model"])
    console.print(f"wrote benchmarks/results/{NAME}.{{json,md}}")


if __name__ == "__main__":
    main()
