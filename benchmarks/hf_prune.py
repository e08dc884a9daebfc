"""Pruning and distilling a pretrained sentence encoder (all-MiniLM-L6-v2) on STS-B.

Everything is measured on the STS Benchmark dev split (1 500 pairs; Spearman of cosine vs gold,
fidelity = mean cosine to the fp32 model's embedding of the same sentence, 10-NN overlap), and all
calibration and training uses STS-B *training* sentences only. In one run:
(a) the fp32 model;
(b) one-shot 50 % unstructured and 2:4 pruning of every Linear layer of the encoder (not the
embeddings) with magnitude (per layer: the control), Wanda and SparseGPT, no fine-tuning;
(c) 30 % of the attention heads and 30 % of the FFN neurons of every layer removed (activation
and Michel head-gate criteria), then a short embedding distillation from the fp32 model as
recovery: params and latency against the original, timed interleaved on real dev sentences;
(d) 6 → 3 layers (every other layer kept): as dropped, distilled from the 6-layer teacher on
unlabeled training sentences, and the same student fine-tuned on STS-B training pairs with
CosineSimilarityLoss (the control, same number of sentence forward passes).
Run: make bench (or .venv/bin/python benchmarks/hf_prune.py). Writes
benchmarks/results/hf_prune.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nnzip.atomic import write_text
from nnzip.data.sts import calibration_sentences, load_sts
from nnzip.distill.embedding import (
    cosine_similarity_loss,
    distill_embeddings,
    fit_sts_pairs,
    pair_batches,
)
from nnzip.evaluate import machine_info
from nnzip.evaluate.embedding import evaluate_sts, sts_embeddings, token_batches
from nnzip.evaluate.latency import compare_latency
from nnzip.models.hf import load_hf
from nnzip.prune import (
    calibrated_prune,
    drop_layers,
    encoder_linear_weights,
    encoder_shape,
    magnitude_prune,
    nm_prune,
    prune_heads_and_neurons,
    sparsity_summary,
)
from nnzip.prune.transformer import every_other_layer
from nnzip.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("magnitude", "wanda", "sparsegpt")


def timed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_one(base: nn.Module, method: str, pattern: str, calibration: list) -> tuple:
    model = copy.deepcopy(base)
    names = encoder_linear_weights(model)
    if method == "magnitude":
        prune = (lambda: magnitude_prune(model, 0.5, scope="layer", layers=names)) \
            if pattern == "50%" else (lambda: nm_prune(model, 2, 4, layers=names))
    else:
        nm = pattern == "2:4"
        prune = lambda: calibrated_prune(model, calibration, method,  # noqa: E731
                                         None if nm else 0.5, n=2 if nm else None,
                                         m=4 if nm else None, layers=names)
    _, seconds = timed(prune)
    return model, seconds, sparsity_summary(model, names)["achieved_sparsity"]


def sentence_loss_batches(model: nn.Module, pairs, count: int, batch_size: int) -> list:
    """``count`` training pairs as (ids1, ids2, gold) batches (for Michel's gradient scores)."""
    head = pairs.head(count)
    return pair_batches(model, head.sentence1, head.sentence2, head.scores, batch_size)


def latency_rows(models: dict[str, nn.Module], dev_sentences: list[str], tokenizer_source,
                 repeats: int) -> dict[str, dict]:
    """p50 per model at batch 1 and 32 of real dev sentences, all models timed interleaved."""
    rows: dict[str, dict] = {name: {} for name in models}
    for batch_size in (1, 32):
        ids = tokenizer_source.tokenize(dev_sentences[:batch_size])[0]
        timings = compare_latency(list(models.values()), (), batch=ids, threads=1, warmup=5,
                                  repeats=repeats, rounds=5)
        for name, timing in zip(models, timings, strict=True):
            rows[name][f"p50_ms_batch{batch_size}"] = timing["p50"]
            rows[name][f"p95_ms_batch{batch_size}"] = timing["p95"]
            rows[name][f"tokens_batch{batch_size}"] = int(ids.shape[1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-sentences", type=int, default=128)
    parser.add_argument("--distill-sentences", type=int, default=2000,
                        help="training sentences for the 3-layer student (subsampled)")
    parser.add_argument("--recovery-sentences", type=int, default=1000,
                        help="training sentences for the head/neuron-pruned recovery")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--dev-pairs", type=int, default=None, help="smoke runs: fewer pairs")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    started = time.perf_counter()

    teacher = load_hf("minilm")
    dev = load_sts("dev")
    dev = dev.head(args.dev_pairs) if args.dev_pairs else dev
    train_pairs = load_sts("train")
    dev_sentences, reference = sts_embeddings(teacher, dev)
    results: dict = {"benchmark": "hf_prune", "model": "all-MiniLM-L6-v2",
                     "machine": machine_info(1), "dev_pairs": len(dev),
                     "dev_sentences": len(dev_sentences), "args": vars(args)}
    results["fp32"] = {"params": params(teacher), "encoder_shape": encoder_shape(teacher)[0],
                       **evaluate_sts(teacher, dev, reference)}
    print("fp32", results["fp32"])

    def evaluate(model: nn.Module) -> dict:
        return evaluate_sts(model, dev, reference)

    # Calibration: training sentences, batched by length (little padding).
    calibration, _ = token_batches(teacher, calibration_sentences(args.calibration_sentences,
                                                                  seed=0), batch_size=16)

    # (b) unstructured 50 % and 2:4.
    results["sparse"] = []
    for pattern in ("50%", "2:4"):
        for method in METHODS:
            model, seconds, achieved = prune_one(teacher, method, pattern, calibration)
            row = {"method": method, "pattern": pattern, "achieved_sparsity": achieved,
                   "prune_seconds": seconds, **evaluate(model)}
            results["sparse"].append(row)
            print(row)

    # (c) heads and FFN neurons, 30 % each.
    head_rows = {}
    pruned_models = {}
    gradient_batches = sentence_loss_batches(teacher, train_pairs, 128, 16)
    for criterion in ("activation", "gradient"):
        model = copy.deepcopy(teacher)
        (_, seconds) = timed(lambda m=model, c=criterion: prune_heads_and_neurons(
            m, calibration if c == "activation" else gradient_batches, 0.3, 0.3, criterion=c,
            loss_fn=cosine_similarity_loss if c == "gradient" else None))
        head_rows[criterion] = {"prune_seconds": seconds, "params": params(model),
                                "encoder_shape": encoder_shape(model)[0], **evaluate(model)}
        pruned_models[criterion] = model
        print(criterion, head_rows[criterion])
    best = max(head_rows, key=lambda c: head_rows[c]["spearman"])
    recovered = pruned_models[best]
    recovery_sentences = calibration_sentences(args.recovery_sentences, seed=1)
    recovery_batches, _ = token_batches(teacher, recovery_sentences, batch_size=32)
    losses, seconds = timed(lambda: distill_embeddings(
        recovered, teacher, recovery_batches, TrainConfig(epochs=1, lr=args.lr, seed=0)))
    head_rows["recovered"] = {"from": best, "sentences": len(recovery_sentences), "epochs": 1,
                              "lr": args.lr, "loss": "1 - cos to fp32 embedding",
                              "train_seconds": seconds, "train_loss": losses,
                              "params": params(recovered), **evaluate(recovered)}
    print("recovered", head_rows["recovered"])
    results["heads_neurons"] = head_rows

    # (d) 6 -> 3 layers.
    keep = every_other_layer(len(encoder_shape(teacher)))
    student_rows = {"kept_layers": keep}
    dropped = copy.deepcopy(teacher)
    drop_layers(dropped, keep)
    student_rows["dropped"] = {"params": params(dropped), **evaluate(dropped)}
    print("dropped", student_rows["dropped"])
    distill_sentences = calibration_sentences(args.distill_sentences, seed=2)
    distill_batches, _ = token_batches(teacher, distill_sentences, batch_size=32)
    distilled = copy.deepcopy(dropped)
    losses, seconds = timed(lambda: distill_embeddings(
        distilled, teacher, distill_batches, TrainConfig(epochs=1, lr=args.lr, seed=0)))
    student_rows["distilled"] = {"sentences": len(distill_sentences), "epochs": 1,
                                 "lr": args.lr, "loss": "1 - cos to the teacher's embedding",
                                 "train_seconds": seconds, "train_loss": losses,
                                 **evaluate(distilled)}
    print("distilled", student_rows["distilled"])
    control_pairs = train_pairs.head(args.distill_sentences // 2)
    control = copy.deepcopy(dropped)
    control_batches = pair_batches(control, control_pairs.sentence1, control_pairs.sentence2,
                                   control_pairs.scores, batch_size=16)
    losses, seconds = timed(lambda: fit_sts_pairs(
        control, control_batches, TrainConfig(epochs=1, lr=args.lr, seed=0)))
    student_rows["control"] = {"pairs": len(control_pairs), "epochs": 1, "lr": args.lr,
                               "loss": "CosineSimilarityLoss (MSE of cos to gold/5)",
                               "train_seconds": seconds, "train_loss": losses,
                               **evaluate(control)}
    print("control", student_rows["control"])
    results["layer_drop"] = student_rows

    results["latency"] = latency_rows(
        {"fp32": teacher, f"heads+neurons -30% ({best}, recovered)": recovered,
         "3 layers (distilled)": distilled}, dev.sentence1, teacher, args.latency_repeats)
    results["seconds"] = time.perf_counter() - started
    write_text(RESULTS / "hf_prune.json", json.dumps(results, indent=2, default=str))
    write_text(RESULTS / "hf_prune.md", render(results))
    print(f"results: {RESULTS / 'hf_prune.md'} ({results['seconds']:.0f} s)")


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def render(results: dict) -> str:
    fp32, machine = results["fp32"], results["machine"]
    lines = ["# Pruning and distilling all-MiniLM-L6-v2 (STS-B dev)", "",
             f"STS-B dev: {results['dev_pairs']} pairs, {results['dev_sentences']} distinct "
             "sentences. Spearman × 100 of cos(emb1, emb2) against the gold score; fidelity = "
             "mean cosine between a sentence's embedding and the fp32 model's; NN overlap = "
             "shared 10 nearest neighbours among the dev sentences. Calibration and training use "
             "STS-B training sentences only. One torch thread on "
             f"{machine['cpu_model']} (shared), torch {machine['torch_version']}; the whole run "
             f"took {results['seconds'] / 60:.1f} min.", "",
             f"fp32: Spearman **{100 * fp32['spearman']:.2f}**, {fp32['params']:,} params.", "",
             "## Unstructured 50 % and 2:4, one-shot, no fine-tuning", "",
             f"Every Linear weight of the 6 transformer layers (36 matrices), "
             f"{results['args']['calibration_sentences']} calibration sentences. Magnitude "
             "prunes each layer to 50 % (2:4: the 2 largest of 4); Wanda and SparseGPT compare "
             "within each output row.", "",
             "| pattern | method | sparsity | Spearman | Δ vs fp32 | fidelity | 10-NN overlap | "
             "seconds |", "|---|---|---|---|---|---|---|---|"]
    for row in results["sparse"]:
        lines.append(f"| {row['pattern']} | {row['method']} | {_pct(row['achieved_sparsity'])} "
                     f"| {100 * row['spearman']:.2f} | "
                     f"{100 * (row['spearman'] - fp32['spearman']):+.2f} | "
                     f"{row['cosine_to_reference']:.4f} | {row['neighbour_overlap']:.3f} | "
                     f"{row['prune_seconds']:.1f} |")
    heads = results["heads_neurons"]
    rec = heads["recovered"]
    shape = heads[rec["from"]]["encoder_shape"]
    lines += ["", "## 30 % of heads and 30 % of FFN neurons removed (physically)", "",
              f"Every layer keeps {shape['heads']} of 12 heads (round(0.3 · 12) = 4 removed: "
              f"33 %) and {shape['neurons']} of 1536 FFN neurons; the Linear layers shrink and "
              "each self-attention's num_attention_heads / all_head_size follow. Recovery: "
              f"{rec['epochs']} epoch of embedding distillation (1 − cos to the fp32 embedding) "
              f"on {rec['sentences']} training sentences, lr {rec['lr']} "
              f"({rec['train_seconds']:.0f} s).", "",
              "| model | params | Spearman | Δ vs fp32 | fidelity | 10-NN overlap |",
              "|---|---|---|---|---|---|",
              f"| fp32 | {fp32['params']:,} | {100 * fp32['spearman']:.2f} | | | |"]
    for name, label in (("activation", "activation criterion, no recovery"),
                        ("gradient", "Michel head-gate gradient, no recovery"),
                        ("recovered", f"{rec['from']} + distillation recovery")):
        row = heads[name]
        lines.append(f"| {label} | {row['params']:,} | {100 * row['spearman']:.2f} | "
                     f"{100 * (row['spearman'] - fp32['spearman']):+.2f} | "
                     f"{row['cosine_to_reference']:.4f} | {row['neighbour_overlap']:.3f} |")
    layer = results["layer_drop"]
    lines += ["", "## 6 → 3 layers (layers " + ", ".join(map(str, layer["kept_layers"]))
              + " kept)", "",
              f"Distilled: {layer['distilled']['epochs']} epoch on "
              f"{layer['distilled']['sentences']} unlabeled training sentences (subsampled), "
              f"1 − cos to the 6-layer teacher's embedding, lr {layer['distilled']['lr']} "
              f"({layer['distilled']['train_seconds']:.0f} s). Control: the same dropped student "
              f"fine-tuned for {layer['control']['epochs']} epoch on "
              f"{layer['control']['pairs']} labeled STS-B training pairs with "
              "CosineSimilarityLoss (the same number of sentence forward passes), lr "
              f"{layer['control']['lr']} ({layer['control']['train_seconds']:.0f} s).", "",
              "| model | params | Spearman | Δ vs 6-layer | fidelity | 10-NN overlap |",
              "|---|---|---|---|---|---|",
              f"| 6-layer teacher (fp32) | {fp32['params']:,} | {100 * fp32['spearman']:.2f} "
              "| | | |"]
    for name, label in (("dropped", "3 layers, as dropped"),
                        ("control", "3 layers, STS fine-tune (control)"),
                        ("distilled", "3 layers, distilled")):
        row = layer[name]
        size = f"{row['params']:,}" if "params" in row else f"{layer['dropped']['params']:,}"
        lines.append(f"| {label} | {size} | {100 * row['spearman']:.2f} | "
                     f"{100 * (row['spearman'] - fp32['spearman']):+.2f} | "
                     f"{row['cosine_to_reference']:.4f} | {row['neighbour_overlap']:.3f} |")
    latency = results["latency"]
    base = latency["fp32"]
    lines += ["", "## Latency (PyTorch eager, 1 thread)", "",
              "Real dev sentences (batch 1: the first; batch 32: the first 32, padded to the "
              "longest), the models timed interleaved after 5 warm-up calls each; medians.", "",
              "| model | p50 batch 1 (ms) | speed-up | p50 batch 32 (ms) | speed-up |",
              "|---|---|---|---|---|"]
    for name, row in latency.items():
        lines.append(f"| {name} | {row['p50_ms_batch1']:.2f} | "
                     f"{base['p50_ms_batch1'] / row['p50_ms_batch1']:.2f}× | "
                     f"{row['p50_ms_batch32']:.1f} | "
                     f"{base['p50_ms_batch32'] / row['p50_ms_batch32']:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
