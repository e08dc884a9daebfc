"""Deep Compression on real MNIST: prune → fine-tune → share weights → train centroids → Huffman.

For LeNet-300-100 and LeNet-5, each from the cached baseline (runs/cache): (a) the built-in
recipe recipes/deep-compression.yaml stage by stage, with test accuracy and bytes after each step
(fp32 safetensors until weight sharing, then the .nnz file); the final .nnz file is loaded back and
every logit of the 10 000 MNIST test images compared with the compressed model's; (b) the
per-layer table of Deep Compression's Table 1; (c) k-means with linear, density and random
initialization and a Gaussian mixture, at the recipe's bits and at fewer bits, from the same
pruned model, before and after training the centroids; (d) a dense fine-tune of the same length
as the recipe's, the control for how much of the accuracy is extra training.
Run: .venv/bin/python benchmarks/share_deep_compression.py (``--render-only`` rewrites the .md
from the committed .json). Writes benchmarks/results/share_deep_compression.{json,md}.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from common import (
    RESULTS,
    benchmark_parser,
    machine_line,
    markdown_table,
    rewrite_markdown,
    write_results,
)
from nnzip.codec.nnz import codec_options
from nnzip.data import load_mnist
from nnzip.data.splits import DataSplits
from nnzip.evaluate import machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.evaluate.size import artifact_bytes
from nnzip.models.nnz import load_nnz, nnz_bytes, save_nnz
from nnzip.recipe import load_recipe
from nnzip.share.stages import Cluster
from nnzip.stage import Context
from nnzip.train import TrainConfig, fit, train_zoo_model

ROOT = Path(__file__).resolve().parent.parent
NAME = "share_deep_compression"
RECIPE = ROOT / "recipes" / "deep-compression.yaml"
#: Issue 6's done-when: .nnz at least this many times smaller than fp32, accuracy drop at most.
TARGETS = {"ratio": 40.0, "stretch_ratio": 50.0, "max_drop": 0.002}
CLUSTERINGS = [("kmeans", "linear"), ("kmeans", "density"), ("kmeans", "random"),
               ("gmm", "linear")]


def logits(model: nn.Module, data: DataSplits) -> torch.Tensor:
    return predict_logits(model, data.loader("test", batch_size=1000))


def size_bytes(model: nn.Module) -> int:
    """The .nnz file's bytes once a stage asked for it, else the fp32 safetensors file's."""
    options = codec_options(model)
    if options is None:
        return artifact_bytes(model)
    return len(nnz_bytes(model, huffman=options["huffman"]))


def run_recipe(base: nn.Module, data: DataSplits, seed: int) -> tuple[dict, nn.Module, nn.Module]:
    """(a)+(b): every stage of the recipe, measured; returns the pruned model for (c) too."""
    recipe = load_recipe(RECIPE)
    model = copy.deepcopy(base)
    context = Context(data=data, progress=False, seed=seed)
    labels = data.test.tensors[1]
    steps, pruned = [], None
    for step in recipe.steps:
        context.details = {}
        started = time.perf_counter()
        model = step.stage.apply(model, context)
        seconds = time.perf_counter() - started
        if step.stage.kind == "prune":
            pruned = copy.deepcopy(model)
        steps.append({"label": step.label, "kind": step.stage.kind, "seconds": seconds,
                      "accuracy": accuracy(logits(model, data), labels),
                      "size_bytes": size_bytes(model), "details": context.details})
    with tempfile.TemporaryDirectory() as folder:
        path = save_nnz(model, Path(folder) / "model.nnz", huffman=True)
        file_bytes = path.stat().st_size
        loaded = load_nnz(path)
    ours, theirs = logits(model, data), logits(loaded, data)
    exact = {"file_bytes": file_bytes, "logits_bit_identical": bool(torch.equal(ours, theirs)),
             "predictions_equal": int((ours.argmax(1) == theirs.argmax(1)).sum()),
             "images": len(labels), "loaded_accuracy": accuracy(theirs, labels)}
    return {"recipe": recipe.to_dict(), "steps": steps, "exactness": exact}, model, pruned


def compare_clusterings(pruned: nn.Module, data: DataSplits, settings: list[dict],
                        epochs: int, seed: int) -> list[dict]:
    """(c): each clustering from the same pruned model, without and with trained centroids."""
    rows = []
    labels = data.test.tensors[1]
    for bits in settings:
        for method, init in CLUSTERINGS:
            row = {"method": method, "init": init, **bits}
            for trained in (0, epochs):
                model = copy.deepcopy(pruned)
                stage = Cluster(method=method, init=init, finetune_epochs=trained, **bits)
                started = time.perf_counter()
                model = stage.apply(model, Context(data=data, progress=False, seed=seed))
                key = "trained" if trained else "clustered"
                row[f"{key}_accuracy"] = accuracy(logits(model, data), labels)
                row[f"{key}_seconds"] = time.perf_counter() - started
            row["finetune_epochs"] = epochs
            row["nnz_bytes"] = len(nnz_bytes(model, huffman=True))
            rows.append(row)
    return rows


def dense_control(base: nn.Module, data: DataSplits, epochs: int, seed: int) -> dict:
    """(d): the baseline fine-tuned, dense, for as many epochs as the recipe trains."""
    model = copy.deepcopy(base)
    fit(model, data, TrainConfig(epochs=epochs, lr=1e-3, patience=None, seed=seed),
        progress=False)
    return {"epochs": epochs, "accuracy": accuracy(logits(model, data), data.test.tensors[1])}


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


class Lines:
    """Markdown paragraphs and tables, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self.lines += [f"**{title}**", "", *markdown_table(columns, rows), ""]


def report_model(report: Lines, arch: str, result: dict) -> None:
    base, fp32 = result["baseline_accuracy"], result["fp32_safetensors_bytes"]
    recipe, exact = result["recipe"], result["recipe"]["exactness"]
    report.text(f"## {arch}", f"Baseline (cached): test accuracy {percent(base)}, fp32 "
                f"safetensors {fp32:,} bytes.")
    rows = [["baseline (fp32 safetensors)", percent(base), "-", f"{fp32:,}", "1.0×", "-"]]
    for step in recipe["steps"]:
        rows.append([step["label"], percent(step["accuracy"]),
                     f"{100 * (base - step['accuracy']):+.2f}", f"{step['size_bytes']:,}",
                     f"{fp32 / step['size_bytes']:.1f}×", f"{step['seconds']:.1f}"])
    report.table(f"{arch} (a): recipes/deep-compression.yaml, step by step", [
        "after", "test acc", "drop (points)", "bytes", "vs fp32", "time (s)"], rows)
    ratio = fp32 / exact["file_bytes"]
    drop = base - exact["loaded_accuracy"]
    verdict = ratio >= TARGETS["ratio"] and drop <= TARGETS["max_drop"]
    report.text(
        f"Final .nnz file: **{exact['file_bytes']:,} bytes, {ratio:.1f}× smaller** than the fp32 "
        f"safetensors file; accuracy {percent(exact['loaded_accuracy'])} (drop "
        f"{100 * drop:+.2f} points). Target ≥ {TARGETS['ratio']:.0f}× with a drop ≤ "
        f"{100 * TARGETS['max_drop']:.1f} points: **{'MEETS' if verdict else 'MISSES'}** "
        f"(stretch ≥ {TARGETS['stretch_ratio']:.0f}×: "
        f"{'met' if ratio >= TARGETS['stretch_ratio'] else 'not met'}). "
        f"Loaded back with nnzip.load: {exact['predictions_equal']:,} of {exact['images']:,} "
        f"predictions equal the compressed model's; logits bit-identical: "
        f"**{exact['logits_bit_identical']}**.")
    table = recipe["steps"][-1]["details"]["layer_compression"]
    rows = []
    for layer, row in table.items():
        rows.append([layer, f"{row['weights']:,}", percent(row["kept"] / row["weights"]),
                     str(row["bits"]),
                     f"{row['shared_index_bits']:.1f} / {row['huffman_index_bits']:.1f}",
                     f"{row['shared_weight_bits']:.1f} / {row['huffman_weight_bits']:.1f}",
                     kib(row["dense_bytes"]), kib(row["pruned_bytes"]), kib(row["shared_bytes"]),
                     kib(row["huffman_bytes"]),
                     f"{row['dense_bytes'] / row['huffman_bytes']:.1f}×"])
    total = {k: sum(r[k] for r in table.values()) for k in (
        "weights", "kept", "dense_bytes", "pruned_bytes", "shared_bytes", "huffman_bytes")}
    rows.append(["total", f"{total['weights']:,}", percent(total["kept"] / total["weights"]),
                 "", "", "", kib(total["dense_bytes"]), kib(total["pruned_bytes"]),
                 kib(total["shared_bytes"]), kib(total["huffman_bytes"]),
                 f"{total['dense_bytes'] / total['huffman_bytes']:.1f}×"])
    report.table(f"{arch} (b): per layer, weights only (Deep Compression's Table 1)", [
        "layer", "weights", "kept (P)", "code bits", "index bits P+Q / +H",
        "weight bits P+Q / +H", "fp32", "pruned (sparse fp32)", "+ shared (P+Q)",
        "+ Huffman (P+Q+H)", "ratio"], rows)
    report.text("Index and weight bits are averages per kept weight (fillers and codebooks "
                "included). Biases (stored fp32) and the file header are not in this table; "
                "they are in the file size above.")
    rows = []
    for row in result["clusterings"]:
        bits = f"conv {row['conv_bits']} / fc {row['linear_bits']}"
        rows.append([bits, row["method"], row["init"], percent(row["clustered_accuracy"]),
                     percent(row["trained_accuracy"]),
                     f"{100 * (base - row['trained_accuracy']):+.2f}",
                     f"{row['nnz_bytes']:,}"])
    report.table(f"{arch} (c): clustering of the same pruned model (accuracy before pruning "
                 f"{percent(base)}; after pruning {percent(result['pruned_accuracy'])})", [
                     "bits", "method", "init", "acc clustered", "acc + trained centroids "
                     f"({result['clusterings'][0]['finetune_epochs']} ep.)", "drop (points)",
                     ".nnz bytes"], rows)
    dense = result["dense_control"]
    report.text(f"(d) Control: the dense baseline fine-tuned for the same {dense['epochs']} "
                f"epochs reaches {percent(dense['accuracy'])}; the compressed model is "
                f"{100 * (exact['loaded_accuracy'] - dense['accuracy']):+.2f} points from that. "
                "The cached baselines saw only 4 500 training images, so part of any gain over "
                "the baseline is extra training, not compression.")


def render_markdown(results: dict) -> str:
    """The markdown results page, from the JSON report alone."""
    lines = Lines()
    for arch, result in results["models"].items():
        report_model(lines, arch, result)
    header = ["# Deep Compression on MNIST: weight sharing and the .nnz file", "",
              "Models start from the cached baselines; accuracy on the 10 000 MNIST test images. "
              f"One seed ({results['seed']}), {results['threads']} torch thread(s); the whole run "
              f"took {results['seconds']:.0f} s. Sizes are file bytes: the fp32 state dict as "
              "safetensors, and the whole .nnz file (header, biases, codebooks, CRC).", ""]
    footer = [machine_line(results["machine"], " (2 cores shared with other work)"), ""]
    return "\n".join(header + lines.lines + footer)


def main() -> None:
    parser = benchmark_parser(__doc__, ["lenet300", "lenet5"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the 2 cores are shared with other work)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4, help="centroid training in (c)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md from the committed .json without running")
    args = parser.parse_args()
    console = Console(width=140)
    if args.render_only:
        console.print(f"-> {rewrite_markdown(NAME, render_markdown)}")
        return
    torch.set_num_threads(args.threads)
    data = load_mnist()
    results: dict = {"benchmark": NAME, "threads": args.threads, "seed": args.seed,
                     "machine": machine_info(args.threads), "targets": TARGETS, "models": {},
                     "seconds": 0.0}
    started = time.perf_counter()
    for arch in args.archs:
        base = train_zoo_model(arch, data, cache_dir=args.cache_dir, progress=False).eval()
        result = {"baseline_accuracy": accuracy(logits(base, data), data.test.tensors[1]),
                  "fp32_safetensors_bytes": artifact_bytes(base)}
        result["recipe"], _, pruned = run_recipe(base, data, args.seed)
        result["pruned_accuracy"] = result["recipe"]["steps"][0]["accuracy"]
        recipe_bits = {"conv_bits": 8, "linear_bits": 5}
        result["clusterings"] = compare_clusterings(
            pruned, data, [recipe_bits, {"conv_bits": 4, "linear_bits": 2}], args.epochs,
            args.seed)
        epochs = sum(s["details"].get("finetune_epochs", 0) for s in result["recipe"]["steps"])
        result["dense_control"] = dense_control(base, data, epochs, args.seed)
        results["models"][arch] = json.loads(json.dumps(result, default=str))
        results["seconds"] = time.perf_counter() - started
        exact = result["recipe"]["exactness"]
        console.print(f"{arch}: .nnz {exact['file_bytes']:,} bytes "
                      f"({result['fp32_safetensors_bytes'] / exact['file_bytes']:.1f}x smaller), "
                      f"accuracy {percent(result['baseline_accuracy'])} -> "
                      f"{percent(exact['loaded_accuracy'])}, loaded logits bit-identical: "
                      f"{exact['logits_bit_identical']}")
        write_results(NAME, results, render_markdown)  # an interrupted run keeps each model
    console.print(f"-> {RESULTS / (NAME + '.md')}")


if __name__ == "__main__":
    main()
