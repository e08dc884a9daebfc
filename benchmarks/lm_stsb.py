"""Compressing a small causal language model trained by nnzip on STS-B sentences (issue 14).

The zoo's ``gpt`` (GPT-2 from a transformers config: 128 wide, 4 layers of 4 heads, LM head tied
to the 30 522 × 128 token embedding; 4.7 M parameters, 3.9 M of them the embedding) is trained
on the ``stsb-lm`` training blocks (STS-B training sentences, MiniLM WordPiece tokens, 64-token
blocks) or taken from the zoo cache, and every method runs on a fresh copy of it through
``nnzip.apply``. Everything is measured on the test split: the STS-B dev sentences, never
trained on (700 blocks, 44 800 next-token predictions). Per row: perplexity (exp of the mean
token cross-entropy), its change against fp32, next-token agreement with fp32 (the share of
positions where both predict the same token), the mean KL divergence from fp32's next-token
distribution (nats per token), bytes of the saved state dict (safetensors;
bit-packed integer weights and their scales; a tied tensor once) and the seconds the method took
(calibration and training included, measurement excluded), on one torch thread.

- quantization, calibrated on 8 batches of 64 training blocks: int8 weight-only per-channel and
  W8A8 static; int4 with groups of 128 rounded to nearest, by GPTQ, and after AWQ's scales (with
  either rounding). In the int4 rows the tied embedding/head stays int8 per row (GPTQ and AWQ
  papers keep it in fp16; here one row also takes it to int4 with the rest).
- pruning of the 16 Linear weights of the blocks (not the tied embedding/head), one shot, no
  fine-tune: 50 % unstructured and 2:4, by magnitude (per layer), Wanda and SparseGPT.
- layer drop: blocks 1 and 3 kept (half the depth), as dropped, then distilled from the fp32
  model (T = 2, α = 0.5 on the teacher's softened next-token distribution, the rest on the true
  next token), and the same student fine-tuned with cross-entropy alone for the same epochs (the
  control).
- a peer tool where it imports (``torchao``, installed apart from the shared environment: see
  the results): its int8 and int4-g128 weight-only on the same blocks' Linear layers, beside
  nnzip's on the same selection.

Issue 14's done-when: fp32 perplexity reported; int8 within 1 % of fp32 perplexity; int4 g128
GPTQ within 5 % and better than RTN; AWQ measured beside GPTQ; SparseGPT 50 % better than
magnitude 50 %.

    python benchmarks/lm_stsb.py [--cache-dir runs/cache] [--distill-epochs 3]
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import nnzip
from common import benchmark_parser, machine_line, markdown_table, run_each, write_results
from nnzip.data import DataSplits, load_dataset
from nnzip.evaluate import artifact_bytes, machine_info
from nnzip.evaluate.accuracy import agreement
from nnzip.evaluate.language import LanguageScores, next_token_scores, perplexity_change
from nnzip.models.causal_lm import tied_head
from nnzip.prune import encoder_linear_weights
from nnzip.train import DEFAULT_TRAINING, train_zoo_model

NAME = "lm_stsb"
TIED = "transformer.transformer.wte.weight"
INT4 = {"weight_bits": 4, "granularity": "group", "group_size": 128, "activation_bits": None}
KEEP_TIED_INT8 = {"layer_bits": {TIED: 8}}



@dataclass(frozen=True)
class Setting:
    """What every row shares: the data, the fp32 model, its scores, the blocks' Linears."""

    data: DataSplits
    fp32: nn.Module
    reference: LanguageScores
    block_linears: list[str]


#: A method: it gets a fresh copy of the fp32 model and the setting, returns (model, details).
Make = Callable[[nn.Module, Setting], tuple[nn.Module, dict]]


def applied(stage: str, **options) -> Make:
    def make(model: nn.Module, setting: Setting) -> tuple[nn.Module, dict]:
        chosen = ({**options, "layers": setting.block_linears}
                  if options.get("layers") == "blocks" else options)
        result = nnzip.apply(model, stage, setting.data, **chosen)
        return result.model, {"changed_fraction": round(result.coverage.changed_fraction, 4),
                              "skipped": result.coverage.skipped, **_kept(result.details)}
    return make


def _kept(details: dict) -> dict:
    """The details worth keeping in the results (AWQ's α per layer, sparsity reached, ...)."""
    keys = ("awq", "gptq_layers", "achieved_sparsity", "weight_sparsity", "kept_layers",
            "params_before", "params_after", "epochs", "best_val_accuracy")
    return {key: details[key] for key in keys if key in details}


def dropped_then(stage: str | None, epochs: int, **options) -> Make:
    """Blocks 1 and 3 kept, then ``stage`` (distill from fp32, or finetune) for ``epochs``."""
    def make(model: nn.Module, setting: Setting) -> tuple[nn.Module, dict]:
        result = nnzip.apply(model, "drop_layers", setting.data, keep=[1, 3])
        info = _kept(result.details)
        if stage == "distill":
            result = nnzip.apply(result.model, "distill", setting.data, teacher=setting.fp32,
                                 finetune_epochs=epochs, **options)
        elif stage == "finetune":
            result = nnzip.apply(result.model, "finetune", setting.data, epochs=epochs,
                                 **options)
        return result.model, {**info, **_kept(result.details)}
    return make


def torchao_weight_only(bits: int) -> Make:
    """torchao's weight-only int8 (per channel) or int4 (groups of 128) on the blocks' Linears."""
    def make(model: nn.Module, setting: Setting) -> tuple[nn.Module, dict]:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        config = Int8WeightOnlyConfig() if bits == 8 else IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(128))
        blocks = {name.removesuffix(".weight") for name in setting.block_linears}
        quantize_(model, config, filter_fn=lambda module, name: name in blocks)
        return model, {"weight_type": type(model.transformer.transformer.h[0].attn.c_attn
                                           .weight).__name__}
    return make


def saved_bytes(model: nn.Module) -> int:
    """safetensors bytes of the state dict; torch.save bytes for torchao's tensor subclasses,
    which safetensors cannot hold."""
    try:
        return artifact_bytes(model)
    except Exception:  # a tensor subclass: weigh what torch.save writes
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getbuffer().nbytes


#: Rows compared directly, paired by sequence: (row, against row).
PAIRS = [("int4 g128 GPTQ", "int4 g128 RTN"), ("AWQ + int4 g128 RTN", "int4 g128 RTN"),
         ("AWQ + int4 g128 GPTQ", "int4 g128 GPTQ"), ("SparseGPT 50 %", "magnitude 50 %"),
         ("Wanda 50 %", "magnitude 50 %"), ("SparseGPT 2:4", "magnitude 2:4"),
         ("2 of 4 layers, distilled", "2 of 4 layers, cross-entropy")]


def measure(setting: Setting, name: str, family: str, make: Make
            ) -> tuple[dict, LanguageScores]:
    model = copy.deepcopy(setting.fp32)
    torch.manual_seed(0)   # dropout in the fine-tunes: each row repeats whatever ran before it
    started = time.perf_counter()
    model, details = make(model, setting)
    seconds = time.perf_counter() - started
    scores = next_token_scores(model.eval(), setting.data, reference=setting.fp32)
    reference = setting.reference
    change, error = perplexity_change(scores, reference)
    row = {"name": name, "family": family, "perplexity": scores.perplexity,
           "change_pct": change, "change_se_pct": error,
           "agreement": agreement(scores.predictions, reference.predictions),
           "kl_to_fp32": scores.kl_to_reference,
           "bytes": saved_bytes(model), "seconds": round(seconds, 2),
           "params": sum(p.numel() for p in model.parameters()),
           "tied_head": tied_head(model), **details}
    print(f"{name}: perplexity {row['perplexity']:.2f} ({change:+.2f} ± {error:.2f} %), "
          f"agreement {row['agreement']:.4f}, KL {row['kl_to_fp32']:.3g}, {row['bytes']:,} B, "
          f"{seconds:.1f} s")
    return row, scores


def comparisons(scores: dict[str, LanguageScores]) -> list[dict]:
    """The :data:`PAIRS` both measured: perplexity change of the first against the second,
    with its paired standard error (by sequence)."""
    found = []
    for first, second in PAIRS:
        a = next((n for n in scores if n.startswith(first)), None)
        b = next((n for n in scores if n.startswith(second)), None)
        if a and b:
            change, error = perplexity_change(scores[a], scores[b])
            found.append({"row": a, "against": b, "change_pct": change, "se_pct": error})
    return found


def _paired(report: dict, first: str, second: str) -> str:
    pair = next((c for c in report.get("comparisons", []) if c["row"].startswith(first)
                 and c["against"].startswith(second)), None)
    return "" if pair is None else (f"; paired: {pair['change_pct']:+.2f} ± "
                                    f"{pair['se_pct']:.2f} %")


def methods(distill_epochs: int, with_torchao: bool) -> list[tuple[str, str, Make]]:
    block = {"layers": "blocks"}   # the blocks' Linear weights, filled in by applied()
    prune = {"finetune_epochs": 0, **block}
    rows = [
        ("int8 weight-only, per-channel", "quantize",
         applied("quantize", activation_bits=None)),
        ("W8A8 static (min-max, per-tensor activations)", "quantize", applied("quantize")),
        ("int4 g128 RTN", "quantize", applied("quantize", **INT4, **KEEP_TIED_INT8)),
        ("int4 g128 GPTQ", "quantize",
         applied("quantize", **INT4, **KEEP_TIED_INT8, rounding="gptq")),
        ("AWQ + int4 g128 RTN", "quantize",
         applied("quantize", **INT4, **KEEP_TIED_INT8, awq=True)),
        ("AWQ + int4 g128 GPTQ", "quantize",
         applied("quantize", **INT4, **KEEP_TIED_INT8, awq=True, rounding="gptq")),
        ("int4 g128 RTN, tied embedding/head int4 too", "quantize",
         applied("quantize", **INT4)),
        ("magnitude 50 % (per layer)", "prune",
         applied("prune", sparsity=0.5, scope="layer", **prune)),
        ("Wanda 50 %", "prune", applied("prune", sparsity=0.5, criterion="wanda", **prune)),
        ("SparseGPT 50 %", "prune",
         applied("prune", sparsity=0.5, criterion="sparsegpt", **prune)),
        ("magnitude 2:4", "prune", applied("prune", pattern="n:m", **prune)),
        ("Wanda 2:4", "prune", applied("prune", pattern="n:m", criterion="wanda", **prune)),
        ("SparseGPT 2:4", "prune",
         applied("prune", pattern="n:m", criterion="sparsegpt", **prune)),
        ("2 of 4 layers, as dropped", "layer drop", dropped_then(None, 0)),
        (f"2 of 4 layers, distilled {distill_epochs} epochs (T 2, α 0.5)", "layer drop",
         dropped_then("distill", distill_epochs, lr=1e-3, batch_size=16, augment=False,
                      temperature=2.0, alpha=0.5)),
        (f"2 of 4 layers, cross-entropy fine-tune {distill_epochs} epochs (control)",
         "layer drop", dropped_then("finetune", distill_epochs, lr=1e-3, batch_size=16,
                                    augment=False)),
    ]
    if with_torchao:
        rows += [
            ("nnzip int8 weight-only, blocks only", "peer",
             applied("quantize", activation_bits=None, **block)),
            ("torchao Int8WeightOnly, blocks only", "peer", torchao_weight_only(8)),
            ("nnzip int4 g128 RTN, blocks only", "peer", applied("quantize", **INT4, **block)),
            ("torchao IntxWeightOnly int4 g128, blocks only", "peer", torchao_weight_only(4)),
        ]
    return rows


def torchao_version() -> str | None:
    try:
        import torchao
    except Exception:  # not installed (or built for another torch): the peer rows are skipped
        return None
    return torchao.__version__


def row_named(report: dict, prefix: str) -> dict | None:
    return next((row for row in report["models"] if row["name"].startswith(prefix)), None)


def checks(report: dict) -> list[dict]:
    """Issue 14's done-when, each stated with what was measured."""
    fp32 = report["fp32"]["perplexity"]
    int8 = row_named(report, "int8 weight-only, per-channel")
    rtn, gptq = row_named(report, "int4 g128 RTN"), row_named(report, "int4 g128 GPTQ")
    awq_rtn, awq_gptq = row_named(report, "AWQ + int4 g128 RTN"), row_named(
        report, "AWQ + int4 g128 GPTQ")
    magnitude, sparsegpt = row_named(report, "magnitude 50 %"), row_named(report,
                                                                          "SparseGPT 50 %")
    found = []
    found.append({"check": "fp32 perplexity reported", "passed": True,
                  "measured": f"{fp32:.2f}"})
    if int8:
        found.append({"check": "int8 within 1 % of fp32 perplexity",
                      "passed": abs(int8["change_pct"]) <= 1.0,
                      "measured": f"{int8['change_pct']:+.2f} %"})
    if rtn and gptq:
        found.append({"check": "int4 g128 GPTQ within 5 % and better than RTN",
                      "passed": abs(gptq["change_pct"]) <= 5.0
                      and gptq["perplexity"] < rtn["perplexity"],
                      "measured": f"GPTQ {gptq['change_pct']:+.2f} %, RTN "
                                  f"{rtn['change_pct']:+.2f} %"
                                  f"{_paired(report, 'int4 g128 GPTQ', 'int4 g128 RTN')} "
                                  f"(KL to fp32 {gptq['kl_to_fp32']:.3g} vs "
                                  f"{rtn['kl_to_fp32']:.3g})"})
    if awq_rtn and gptq:
        awq_text = f"AWQ + RTN {awq_rtn['change_pct']:+.2f} %"
        if awq_gptq:
            awq_text += f", AWQ + GPTQ {awq_gptq['change_pct']:+.2f} %"
        found.append({"check": "AWQ-style scaling measured beside GPTQ", "passed": True,
                      "measured": f"{awq_text}; GPTQ {gptq['change_pct']:+.2f} %"})
    if magnitude and sparsegpt:
        found.append({"check": "SparseGPT 50 % better than magnitude 50 %",
                      "passed": sparsegpt["perplexity"] < magnitude["perplexity"],
                      "measured": f"{sparsegpt['perplexity']:.2f} vs "
                                  f"{magnitude['perplexity']:.2f}"
                                  f"{_paired(report, 'SparseGPT 50 %', 'magnitude 50 %')} "
                                  f"(KL to fp32 {sparsegpt['kl_to_fp32']:.3g} vs "
                                  f"{magnitude['kl_to_fp32']:.3g})"})
    return found


def _bytes(value: int, fp32_bytes: int) -> str:
    return f"{value / 1e6:.2f} MB ({100 * value / fp32_bytes:.1f} %)"


def training_result(cache_dir: Path, training: dict) -> dict | None:
    """How the cached fp32 model's training went (its spec.json), if one cache entry matches."""
    found = []
    for spec_file in sorted(cache_dir.glob("gpt-stsb-lm-*/spec.json")):
        extra = json.loads(spec_file.read_text(encoding="utf-8")).get("extra") or {}
        if extra.get("training") == training:
            found.append(extra.get("result"))
    return found[0] if len(found) == 1 else None


def _training_text(report: dict) -> str:
    config, result = report["training"], report.get("training_result")
    text = (f"Adam, lr {config['lr']} cosine, batch {config['batch_size']}, at most "
            f"{config['epochs']} epochs, early stop after {config['patience']} without a better "
            "validation next-token accuracy")
    if result:
        text += (f"; ran {result['epochs_run']} epochs, best (kept) epoch "
                 f"{result['best_epoch']}, validation next-token accuracy "
                 f"{100 * result['best_val_accuracy']:.2f} %")
    return text


def render(report: dict) -> str:
    fp32 = report["fp32"]
    lines = [f"# {NAME}: a causal LM on STS-B sentences, compressed", "",
             f"Model: zoo `gpt` ({fp32['params']:,} params, LM head tied to the embedding), "
             f"trained by nnzip on `stsb-lm` ({report['data']['train']} training blocks of "
             f"{report['data']['input_shape'][0]} tokens; {_training_text(report)}); "
             f"validation perplexity {fp32.get('val_perplexity', float('nan')):.2f}. Test: the "
             f"STS-B dev sentences, {report['test_tokens']:,} next-token predictions. "
             "Perplexity = exp(mean token cross-entropy); agreement = share of positions "
             "predicting the same next token as fp32; KL = mean KL(p_fp32 ‖ p_model) per token, "
             "how far the whole next-token distribution moved; bytes = saved state dict "
             "(safetensors, "
             "packed integers and scales, the tied tensor once; zeros of a pruned model still "
             "take 4 bytes); seconds = the method's own time, one torch thread.", ""]
    rows = [["fp32", f"{fp32['perplexity']:.2f}", "–", "1", "0",
             _bytes(fp32["bytes"], fp32["bytes"]), "–"]]
    rows += [[row["name"], f"{row['perplexity']:.2f}",
              f"{row['change_pct']:+.2f} ± {row['change_se_pct']:.2f} %",
              f"{row['agreement']:.4f}", f"{row['kl_to_fp32']:.3g}",
              _bytes(row["bytes"], fp32["bytes"]), f"{row['seconds']:.1f}"]
             for row in report["models"]]
    lines += markdown_table(["method", "perplexity", "Δ vs fp32", "next-token agreement",
                             "KL to fp32 (nats/token)", "bytes (of fp32)", "seconds"], rows)
    lines += ["", "± is the standard error of the change, paired with fp32 by sequence "
              f"({report['data']['test']} test sequences). Pairs of rows, compared the same way "
              "(the first row's perplexity against the second's):", ""]
    lines += markdown_table(["row", "against", "perplexity change"], [
        [c["row"], c["against"], f"{c['change_pct']:+.2f} ± {c['se_pct']:.2f} %"]
        for c in report.get("comparisons", [])])
    lines += ["", "## Issue 14 done-when", ""]
    lines += markdown_table(["check", "measured", "passed"],
                            [[c["check"], c["measured"], "yes" if c["passed"] else "**no**"]
                             for c in report["checks"]])
    awq = next((row for row in report["models"] if row.get("awq")), None)
    if awq:
        lines += ["", "## AWQ per layer", "",
                  f"From the row \"{awq['name']}\" (the search runs before rounding, so every "
                  "AWQ row chooses the same). α on the grid 0, 0.05, …, 0.95; error ratio = "
                  "output error of the scaled, rounded layer over plain rounding's on the "
                  "calibration rows; where 1/s went (a LayerNorm fold costs nothing; an input "
                  "factor is one multiply per input at run time).", ""]
        lines += markdown_table(["layer", "α", "error ratio", "1/s went to"], [
            [layer.removeprefix("transformer.transformer."), f"{entry['alpha']:.2f}",
             f"{entry['error_ratio']:.3f}",
             entry["scales"].replace("folded into transformer.transformer.", "")
             .replace("kept as a per-input-channel factor of the layer", "input factor")
             .replace("none: rounding to nearest was best (α 0)", "nothing (α 0)")]
            for layer, entry in awq["awq"]["layers"].items()])
    peer = report.get("torchao")
    lines += ["", f"Peer tool: {peer}" if peer else "", "",
              machine_line(report["machine"], ", 1 torch thread") + f" Total "
              f"{report.get('seconds', 0) / 60:.0f} min."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--distill-epochs", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only the rows whose name starts so")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = load_dataset("stsb-lm")
    fp32 = train_zoo_model("gpt", data, cache_dir=args.cache_dir).eval()
    setting = Setting(data, fp32, next_token_scores(fp32, data), encoder_linear_weights(fp32))
    reference = setting.reference
    version = torchao_version()
    report = {"benchmark": NAME, "machine": machine_info(1), "data": data.summary(),
              "training": DEFAULT_TRAINING["gpt"].model_dump(),
              "training_result": training_result(args.cache_dir,
                                                 DEFAULT_TRAINING["gpt"].model_dump()),
              "test_tokens": reference.tokens,
              "fp32": {"perplexity": reference.perplexity, "bytes": artifact_bytes(fp32),
                       "params": sum(p.numel() for p in fp32.parameters()),
                       "val_perplexity": next_token_scores(fp32, data, "val").perplexity},
              "torchao": (f"torchao {version} (pip install --target into runs/, on "
                          "PYTHONPATH; the shared environment untouched), weight-only on the "
                          "blocks' Linear layers, tied embedding/head left fp32 as in the "
                          "nnzip rows beside it" if version else
                          "torchao is not importable here: no peer rows"),
              "models": []}
    print(f"fp32: perplexity {reference.perplexity:.2f} on {reference.tokens} test tokens")
    rows = [(name, family, make) for name, family, make in methods(args.distill_epochs,
                                                                     version is not None)
            if not args.only or any(name.startswith(prefix) for prefix in args.only)]

    scores: dict[str, LanguageScores] = {}

    def run(item: tuple[str, str, Make]) -> dict:
        row, scores[item[0]] = measure(setting, *item)
        report["comparisons"] = comparisons(scores)
        report["checks"] = checks({**report, "models": [*report["models"], row]})
        report["seconds"] = time.perf_counter() - started
        return row

    report["checks"] = checks(report)
    run_each(NAME, report, rows, run, render)
    report["seconds"] = time.perf_counter() - started
    write_results(NAME, report, render)
    print(render(report))


if __name__ == "__main__":
    main()
