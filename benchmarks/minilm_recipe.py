"""A recipe on a real sentence transformer: all-MiniLM-L6-v2 through `nnzip compress`.

The shipped pretrained MiniLM-L6 (22.7 M parameters) runs the embed task end to end with
``recipes/minilm-wanda-distill-int8.yaml``: Wanda 50 % on every Linear of the encoder, one short
epoch of embedding distillation from the original (the pruned zeros stay zero), then dynamic int8
Linears with int8 embedding tables. The data is the embed task's
(:func:`nnzip.tasks.sentence_data`):
2 048 STS-B *training* sentences for calibration and distillation (10 % of them for
validation), and every measurement on the 1 500 STS-B dev pairs: Spearman of cos(s1, s2) vs
gold, fidelity (mean cosine of each sentence's embedding to the original's), top-10 neighbour
overlap. Bytes are the saved state dict's (int8 tensors with their scales), latency is timed
interleaved with the original on one thread on real (padded) dev sentences.

Beside it, in the same run and on the same data: PyTorch's ``quantize_dynamic`` (the peer; fp32
embeddings) and nnzip's dynamic int8 with int8 embeddings alone (no pruning), so the table shows
what the pruning and the distillation cost and what they buy. Finally the saved artifact is
loaded back and its embeddings compared with the compressed model's.

    python benchmarks/minilm_recipe.py [--pairs 200] [--train-sentences 512]
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console

import nnzip
from common import benchmark_parser, machine_line, markdown_table, print_table, write_results
from nnzip.evaluate import EvalConfig, evaluate, machine_info
from nnzip.models import load_model
from nnzip.models.hf import load_hf
from nnzip.tasks import sentence_data
from nnzip.tasks.base import stream_outputs

NAME = "minilm_recipe"
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "minilm-wanda-distill-int8.yaml"


def _row(entry: dict, label: str, seconds: float | None, baseline: dict) -> dict:
    return {"label": label, "stage": entry["stage"], "spearman": entry["spearman"],
            "spearman_change": entry["spearman"] - baseline["spearman"],
            "fidelity": entry["fidelity"], "neighbour_overlap": entry["neighbour_overlap"],
            "nonzero_params": entry["nonzero_params"], "params": entry["params"],
            "size_bytes": entry["size_bytes"],
            "size_fraction": entry["size_bytes"] / baseline["size_bytes"],
            "speedup": entry["speedup"], "seconds": seconds}


def render(report: dict) -> str:
    rows = [[r["label"], f"{r['spearman']:.4f}", f"{r['spearman_change']:+.4f}",
             f"{r['fidelity']:.4f}", f"{100 * r['neighbour_overlap']:.1f} %",
             f"{r['nonzero_params'] / 1e6:.2f} M", f"{r['size_bytes'] / 2**20:.1f} MiB",
             f"{100 * r['size_fraction']:.1f} %",
             *[f"{(r['speedup'] or {}).get(k) or float('nan'):.2f}×" for k in ("batch1",
                                                                              "batch64")],
             "" if r["seconds"] is None else f"{r['seconds']:.0f}"]
            for r in report["rows"]]
    reload = report.get("reload") or {}
    lines = [f"# {report['title']}", "",
             f"STS-B dev: {report['pairs']} pairs ({report['sentences']} sentences); "
             f"{report['train_sentences']} training sentences for calibration and "
             "distillation. Δ is against the fp32 original.", "",
             *markdown_table(["model", "Spearman", "Δ", "fidelity (cos)", "top-10 overlap",
                              "non-zero", "bytes", "of fp32", "speed-up b1", "speed-up b64",
                              "stage s"], rows), ""]
    if reload:
        lines += [f"Saved artifact `{reload['file']}` ({reload['bytes']:,} bytes) reloaded: "
                  f"largest embedding difference to the compressed model "
                  f"{reload['max_abs_difference']:.3g} ({reload['verdict']}).", ""]
    lines += [machine_line(report["machine"], ", 1 thread for timing"), ""]
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--train-sentences", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-minilm-recipe"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("nnzip").setLevel(logging.WARNING)
    torch.manual_seed(0)
    console = Console()
    model = load_hf("minilm")
    data = sentence_data(model, pairs=args.pairs, train_sentences=args.train_sentences,
                         progress=True)
    config = EvalConfig(repeats=args.repeats, batch_sizes=(1, 64))
    report = {"title": "MiniLM-L6 through a recipe: Wanda 50 % → distillation → int8",
              "recipe": str(RECIPE.name), "pairs": len(data.pairs),
              "sentences": len(data.test), "train_sentences": args.train_sentences,
              "machine": machine_info(1), "rows": []}

    started = time.perf_counter()
    result = nnzip.compress(model, RECIPE, data, name="minilm", out_dir=args.out,
                            eval_config=config, progress=True)
    entries = result.report["models"]
    baseline = entries[0]
    seconds = {stage["label"]: stage["seconds"] for stage in result.report["stages"]}
    for entry in entries:
        label = "fp32 original" if entry["stage"] == "baseline" else f"recipe: {entry['stage']}"
        report["rows"].append(_row(entry, label, seconds.get(entry["stage"]), baseline))
    report["recipe_seconds"] = round(time.perf_counter() - started, 1)

    peers = {"PyTorch quantize_dynamic (int8 Linears, fp32 embeddings)":
             lambda m: torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear},
                                                              dtype=torch.qint8),
             "nnzip dynamic int8 + int8 embeddings, no pruning":
             lambda m: nnzip.apply(m, "quantize", data, mode="dynamic",
                                   embedding_bits=8).model}
    for label, build in peers.items():
        begin = time.perf_counter()
        compressed = build(copy.deepcopy(model))
        spent = time.perf_counter() - begin
        entry = evaluate(compressed, data, name=label, stage=label, reference=model,
                         reference_size_bytes=baseline["size_bytes"], config=config)
        report["rows"].append(_row(entry, label, spent, baseline))
        write_results(NAME, report, render)

    saved = result.paths.get("model")
    if saved is not None:
        loaded = load_model(str(saved))
        loader = data.loader("test", batch_size=64)
        ours = torch.cat([o for o, _, _ in stream_outputs(result.model, loader)])
        theirs = torch.cat([o for o, _, _ in stream_outputs(loaded, loader)])
        difference = float((ours - theirs).abs().max())
        report["reload"] = {"file": Path(saved).name, "bytes": Path(saved).stat().st_size
                            if Path(saved).is_file() else sum(
                                f.stat().st_size for f in Path(saved).rglob("*") if f.is_file()),
                            "max_abs_difference": difference,
                            "verdict": "identical" if difference == 0 else "not identical"}
    path = write_results(NAME, report, render)
    print_table(console, report["title"], ["model", "Spearman", "Δ", "fidelity", "overlap",
                                           "bytes"],
                [[r["label"], f"{r['spearman']:.4f}", f"{r['spearman_change']:+.4f}",
                  f"{r['fidelity']:.4f}", f"{100 * r['neighbour_overlap']:.1f} %",
                  f"{r['size_bytes']:,}"] for r in report["rows"]], left=["model"])
    console.print(f"results: {path}")


if __name__ == "__main__":
    main()
