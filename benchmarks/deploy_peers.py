"""Deployment peers: nnzip's deployed int8 model against the best CPU stacks, in one run.

For each zoo CNN (trained on MNIST, cached in runs/cache), on one thread, timed interleaved
(``nnzip.evaluate.compare_latency``: every runtime in every round, so machine drift hits all
alike) and reported as speed-up over PyTorch eager fp32 on the same model:

- **nnzip**: static W8A8 PTQ (``nnzip.quant.quantize_static``) on 512 training images, then
  ``nnzip.runtime.deploy``: whatever runtime it builds and finds fastest and correct *at each
  batch size* (the row names it);
- **ONNX Runtime** ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) of the
  same fp32 ONNX file, calibrated on the same 512 images;
- **NNCF → OpenVINO int8**: ``nncf.quantize`` of the OpenVINO model converted from that file, with
  its defaults and with ``fast_bias_correction=False`` (the slower, more exact bias correction);
- **OpenVINO fp32** (inference precision hint pinned to f32) and OpenVINO with its *default*
  precision (bf16 on a CPU with AMX / AVX-512 BF16);
- **torchao PT2E**: ``X86InductorQuantizer`` int8 (``prepare_pt2e`` / ``convert_pt2e``) compiled by
  ``torch.compile`` (Inductor, frozen weights).

And all-MiniLM-L6-v2 (``--models minilm``) on the STS-B dev pairs: nnzip's static W8A8, dynamic
int8 and int4 g64 GPTQ, each deployed by ``nnzip.runtime.deploy`` (:data:`MINILM_DEPLOYED`; the
row names the runtime it chose per batch size), ONNX Runtime's
``quantize_dynamic`` (per-channel int8), NNCF ``compress_weights`` (int8 weights) and
``nncf.quantize`` (transformer preset) → OpenVINO, OpenVINO fp32 / default precision: STS
Spearman, cosine to PyTorch fp32, bytes, speed-ups at batch 1 and 32 (torchao is not run on it).

OpenVINO models are compiled once per input shape (static shapes, its fastest form) with one
inference thread and one stream. Accuracy is on the 10 000 MNIST test images; bytes are the
file each stack deploys (ONNX; OpenVINO .xml + .bin; for torchao the tensors its converted graph
reads). A peer that cannot be installed or fails is reported as such, with its error, never
silently left out. Rows are saved as they finish (``results/deploy_peers.json``); a rerun
skips the models already there unless ``--fresh`` (which measures the ``--models`` again).

    nice python benchmarks/deploy_peers.py [--models lenet5 resnet8] [--fresh]
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from common import (
    RESULTS,
    benchmark_parser,
    markdown_table,
    ort_quantize_static,
    print_table,
    quiet_single_thread,
    write_results,
)
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate import machine_info
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.evaluate.latency import compare_latency
from nnzip.quant import QuantConfig, quantize_static
from nnzip.runtime import OrtModule, OvModule, deploy, export_onnx, float_for_export
from nnzip.train import train_zoo_model

NAME = "deploy_peers"
CNNS = ("lenet5", "resnet8", "resnet20", "mobilenetv2")
MODELS = (*CNNS, "minilm")
BATCHES = (1, 64)
#: MiniLM's batch sizes (sentences).
MINILM_BATCHES = (1, 32)
#: 8 batches of 64: the same 512 training images calibrate every int8 stack.
CALIBRATION_BATCHES = 8
BASELINE = "PyTorch eager fp32"
#: Timed calls per runtime and batch size (a batch-1 call of a small CNN takes ~0.1 ms: 200 cost
#: nothing and steady the median; at batch 32/64 a call takes milliseconds).
REPEATS = {1: 200, 32: 30, 64: 30}


# --- OpenVINO ------------------------------------------------------------------------------

def openvino_module(model, precision: str | None) -> OvModule:
    """An in-memory OpenVINO model compiled once per input shape (static shapes, its fastest
    form), one thread, one stream; ``precision`` None leaves the CPU plugin its default hint,
    and the module records what it resolved to (printed in the table)."""
    return OvModule.from_model(model, threads=1, precision=precision, static_shapes=True)


def precision_name(element_type: object) -> str:
    """'bf16' for OpenVINO's ``<Type: 'bfloat16'>`` (older rows stored that repr as is)."""
    text = str(element_type)
    match = re.fullmatch(r"<Type: '(\w+)'>", text)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(
        match.group(1) if match else text, match.group(1) if match else text)


def openvino_bytes(model, folder: Path, name: str) -> int:
    import openvino as ov

    xml = folder / f"{name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def openvino_runtimes(fp32_onnx: Path, batches: list, folder: Path) -> list[tuple]:
    """OpenVINO fp32 / default precision, and NNCF int8 with its defaults and without the fast
    bias correction."""
    import nncf
    import openvino as ov

    fp32 = ov.convert_model(str(fp32_onnx))
    fp32_bytes = openvino_bytes(fp32, folder, "ov-fp32")
    runtimes = [
        ("OpenVINO fp32 (precision hint f32)", openvino_module(fp32, "f32"),
         fp32_bytes),
        ("OpenVINO default precision (bf16 on AMX)", openvino_module(fp32, None),
         fp32_bytes),
    ]
    # One image per item, NNCF's usual form: subset_size counts items, so all 512 are used.
    images = [image[None].numpy() for inputs, _ in batches for image in inputs]
    dataset, subset = nncf.Dataset(images), len(images)
    for label, options in (("defaults", {}), ("fast_bias_correction=False",
                                              {"fast_bias_correction": False})):
        int8 = nncf.quantize(fp32, dataset, subset_size=subset, **options)
        runtimes.append((f"NNCF → OpenVINO int8 ({label})",
                         openvino_module(int8, None),
                         openvino_bytes(int8, folder, f"ov-int8-{len(runtimes)}")))
    return runtimes


# --- torchao PT2E ----------------------------------------------------------------------------

def torchao_pt2e(model: nn.Module, batches: list, example: torch.Tensor) -> list[tuple]:
    """torchao's PT2E int8 for x86 (X86InductorQuantizer), compiled by torch.compile."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(copy.deepcopy(model).eval(), (example,),
                                   dynamic_shapes=({0: batch},)).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for inputs, _ in batches:
            prepared(inputs)
    converted = convert_pt2e(prepared)
    inductor_config.freezing = True  # weights as constants: what the int8 fusions need
    compiled = torch.compile(converted, dynamic=False)
    return [("torchao PT2E int8 + torch.compile", CompiledModule(compiled),
             graph_tensor_bytes(converted))]


def graph_tensor_bytes(module: torch.fx.GraphModule) -> int:
    """Bytes of the tensors the converted graph reads (int8 weights, scales, biases): what it
    deploys. Its torch.export .pt2 also carries the float originals, so its size would mislead."""
    import operator

    tensors = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(module)
            if isinstance(value, torch.Tensor):
                tensors[id(value)] = value.numel() * value.element_size()
    return sum(tensors.values())


class CompiledModule(nn.Module):
    """A torch.compile'd callable (a GraphModule's compiled form) behind nn.Module, no grad."""

    def __init__(self, compiled: Callable) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.compiled(x)


# --- nnzip -----------------------------------------------------------------------------------

#: nnzip's static PTQ configurations, each deployed: its defaults, and with its bias correction
#: (the counterpart of NNCF's ``fast_bias_correction=False`` row).
NNZIP_CONFIGS = {"W8A8": None, "W8A8 + bias correction": QuantConfig(bias_correction=True)}


def nnzip_deployed(dense: nn.Module, batches: list, data, folder: Path) -> list[tuple]:
    """nnzip's W8A8 PTQ (each of :data:`NNZIP_CONFIGS`), deployed: per batch size, the runtime
    ``deploy`` chose (the fastest correct, or the smallest file within 3 % of it, by its own
    timing; timed again here, interleaved with the peers)."""
    rows = []
    for index, (label, config) in enumerate(NNZIP_CONFIGS.items()):
        int8 = quantize_static(dense, batches, config)
        deployment = deploy(int8, data, folder / f"nnzip-deploy-{index}", batch_sizes=BATCHES,
                            original=dense)
        chosen = deployment.chosen_by_batch
        if len({runtime.name for runtime in chosen.values()}) == 1:  # one runtime wins both
            best = chosen[BATCHES[0]]
            rows.append((f"nnzip {label} → deploy: {best.name}", best.module, best.file_bytes,
                         None))
            continue
        rows += [(f"nnzip {label} → deploy b{batch}: {best.name}", best.module,
                  best.file_bytes, batch) for batch, best in chosen.items()]
    return rows


# --- measuring -------------------------------------------------------------------------------

def test_accuracy(module: nn.Module, data) -> float:
    with torch.inference_mode():
        return accuracy(predict_logits(module, data.loader("test", batch_size=500)),
                        data.test.tensors[1])


def peer_or_failure(name: str, build: Callable[[], list[tuple]], console: Console,
                    failures: list[dict]) -> list[tuple]:
    """Build a peer's runtimes; a peer that cannot be imported or fails is reported, not hidden."""
    started = time.perf_counter()
    try:
        runtimes = build()
    except Exception as error:
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}" \
            if str(error).strip() else type(error).__name__
        failures.append({"peer": name, "error": message})
        console.print(f"  [red]{name} unavailable[/red]: {message}")
        return []
    console.print(f"  built {name} in {time.perf_counter() - started:.1f} s")
    return runtimes


def run_model(arch: str, data, args, console: Console) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"nnzip-peers-{arch}-") as folder:
        if arch == "minilm":
            return measure_minilm(console, Path(folder), args.pairs)
        return measure_model(arch, data, args.cache_dir, console, Path(folder))


def measure_model(arch: str, data, cache_dir: Path, console: Console, folder: Path) -> dict:
    dense = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    batches = calibration_batches(data, CALIBRATION_BATCHES)
    example = data.test.tensors[0][:2]
    folded = float_for_export(dense)
    fp32_onnx = export_onnx(folded, folder / "fp32.onnx", example)
    failures: list[dict] = []
    # (name, module, bytes, batch it is timed at or None for all)
    runtimes: list[tuple] = [(BASELINE, dense, None, None)]
    runtimes += peer_or_failure("nnzip deploy", lambda: nnzip_deployed(dense, batches, data,
                                                                        folder), console, failures)
    runtimes += peer_or_failure("ONNX Runtime quantize_static", lambda: [(
        "ORT quantize_static (QDQ, per-channel)",
        OrtModule(ort := ort_quantize_static(fp32_onnx, folder / "ort-qdq.onnx", batches)),
        ort.stat().st_size, None)], console, failures)
    runtimes += [(*runtime, None) for runtime in peer_or_failure(
        "OpenVINO / NNCF", lambda: openvino_runtimes(fp32_onnx, batches, folder), console,
        failures)]
    runtimes += [(*runtime, None) for runtime in peer_or_failure(
        "torchao PT2E", lambda: torchao_pt2e(folded, batches, example), console,
        failures)]
    runtimes.insert(1, ("ONNX Runtime fp32", OrtModule(fp32_onnx), fp32_onnx.stat().st_size,
                        None))
    rows = []
    for name, module, size, only_batch in runtimes:
        started = time.perf_counter()
        rows.append({"runtime": name, "accuracy": test_accuracy(module, data), "bytes": size,
                     "batch": only_batch, "latency_ms": {}, "speedup": {},
                     "openvino_precision": getattr(module, "precision", None)})
        console.print(f"  {arch} {name}: {100 * rows[-1]['accuracy']:.2f}% "
                      f"({time.perf_counter() - started:.1f} s)")
    for batch in BATCHES:
        timed = [index for index, (_, _, _, only) in enumerate(runtimes)
                 if only is None or only == batch]
        timings = compare_latency([runtimes[index][1] for index in timed],
                                  batch=data.test.tensors[0][:batch],
                                  repeats=REPEATS[batch])
        for index, timing in zip(timed, timings, strict=True):
            rows[index]["latency_ms"][str(batch)] = timing
        base = rows[0]["latency_ms"][str(batch)]["p50"]
        for index in timed:
            rows[index]["speedup"][str(batch)] = base / rows[index]["latency_ms"][str(batch)]["p50"]
        console.print(f"  {arch} timed at batch {batch}")
    for row in rows:
        row["change_points"] = round(100 * (row["accuracy"] - rows[0]["accuracy"]), 4)
    return {"arch": arch, "rows": rows, "failures": failures, "load_average": load_average()}


# --- MiniLM ----------------------------------------------------------------------------------

#: nnzip's quantizations of MiniLM, each deployed by ``nnzip.runtime.deploy``: static W8A8 (the
#: int8 row against ORT's dynamic int8 and NNCF's static int8), dynamic int8 with int8 embedding
#: tables, and int4 g64 GPTQ (the int4 row: MatMulNBits, run by ORT or OpenVINO).
MINILM_DEPLOYED = ("w8a8", "dynamic-int8-emb8", "weight-int4-gptq")
#: STS-B dev pairs and validation sentences deploy judges its candidates on (cosine to the
#: quantized model, Spearman recorded); the rows are then measured on all pairs here.
DEPLOY_PAIRS, DEPLOY_SAMPLES = 100, 128


def nnzip_encoder_deployed(fp32: nn.Module, calibration: list, folder: Path,
                           notes: list[str]) -> list[tuple]:
    """Each of :data:`MINILM_DEPLOYED`, deployed: per batch size, the runtime ``deploy`` found
    fastest with cosine ≥ 0.99 to the quantized model (timed again here, interleaved)."""
    from nnzip.quant.schemes import quantize_scheme
    from nnzip.tasks import sentence_data

    data = sentence_data(fp32, pairs=DEPLOY_PAIRS, train_sentences=256, seed=0)
    rows = []
    for scheme in MINILM_DEPLOYED:
        model = quantize_scheme(copy.deepcopy(fp32), scheme, calibration).model
        deployment = deploy(model, data, folder / f"nnzip-{scheme}", batch_sizes=MINILM_BATCHES,
                            samples=DEPLOY_SAMPLES, original=fp32, repeats=20)
        chosen = deployment.chosen_by_batch
        notes.append(f"nnzip {scheme} → deploy: " + ", ".join(
            f"b{batch} {runtime.name} (cos {runtime.cosine:.4f} to the quantized model)"
            for batch, runtime in chosen.items()) + f"; {len(deployment.runtimes)} runtimes "
            f"built, {len(deployment.skipped)} skipped")
        if len({runtime.name for runtime in chosen.values()}) == 1:
            best = next(iter(chosen.values()))
            rows.append((f"nnzip {scheme} → deploy: {best.name}", best.module, best.file_bytes,
                         None))
            continue
        rows += [(f"nnzip {scheme} → deploy b{batch}: {best.name}", best.module,
                  best.file_bytes, batch) for batch, best in chosen.items()]
    return rows


def minilm_openvino(fp32_onnx: Path, calibration: list, folder: Path) -> list[tuple]:
    """OpenVINO fp32 / default precision, NNCF int8 weight compression and NNCF static int8."""
    import nncf
    import openvino as ov

    fp32 = ov.convert_model(str(fp32_onnx))
    fp32_bytes = openvino_bytes(fp32, folder, "ov-fp32")
    weights = nncf.compress_weights(fp32.clone())  # int8 weights (asymmetric), float compute
    static = nncf.quantize(fp32, nncf.Dataset([batch.numpy() for batch in calibration]),
                           model_type=nncf.ModelType.TRANSFORMER,
                           subset_size=len(calibration))
    return [("OpenVINO fp32 (precision hint f32)", openvino_module(fp32, "f32"),
             fp32_bytes, None),
            ("OpenVINO default precision (bf16 on AMX)",
             openvino_module(fp32, None), fp32_bytes, None),
            ("NNCF compress_weights int8 → OpenVINO", openvino_module(weights, None),
             openvino_bytes(weights, folder, "ov-weights-int8"), None),
            ("NNCF quantize int8 (transformer) → OpenVINO",
             openvino_module(static, None),
             openvino_bytes(static, folder, "ov-int8"), None)]


def measure_minilm(console: Console, folder: Path, pairs_limit: int | None) -> dict:
    """MiniLM on STS-B dev: Spearman, cosine to fp32, bytes and b1/b32 speed-ups."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hf_quant import CALIBRATION_BATCH, CALIBRATION_SENTENCES, latency_batches, measure
    from nnzip.data.sts import calibration_sentences, load_sts
    from nnzip.evaluate.embedding import token_batches
    from nnzip.models.hf import load_hf

    fp32 = load_hf("minilm")
    pairs = load_sts("dev")
    if pairs_limit:
        pairs = pairs.head(pairs_limit)
    sentences = pairs.sentences()
    calibration, _ = token_batches(fp32, calibration_sentences(CALIBRATION_SENTENCES, seed=0),
                                   CALIBRATION_BATCH)
    batches = latency_batches(fp32, pairs)
    fp32_onnx = export_onnx(fp32, folder / "fp32.onnx", batches[32], sequence_dim=1)
    failures: list[dict] = []
    runtimes: list[tuple] = [(BASELINE, fp32, None, None),
                             ("ONNX Runtime fp32", OrtModule(fp32_onnx),
                              fp32_onnx.stat().st_size, None)]
    notes = []


    def ort_rows() -> list[tuple]:
        path = folder / "ort-dynamic.onnx"
        quantize_dynamic(str(fp32_onnx), str(path), weight_type=QuantType.QInt8,
                         per_channel=True)
        return [("ORT quantize_dynamic (per-channel int8)", OrtModule(path),
                 path.stat().st_size, None)]

    runtimes += peer_or_failure("nnzip deploy", lambda: nnzip_encoder_deployed(
        fp32, calibration, folder, notes), console, failures)
    runtimes += peer_or_failure("ONNX Runtime quantize_dynamic", ort_rows, console, failures)
    runtimes += peer_or_failure("OpenVINO / NNCF", lambda: minilm_openvino(
        fp32_onnx, calibration, folder), console, failures)
    rows, reference = [], None
    for name, module, size, only_batch in runtimes:
        started = time.perf_counter()
        row, embeddings = measure(module, sentences, pairs, reference, fp32)
        if reference is None:
            reference, row["cosine"] = embeddings, 1.0
        rows.append({"runtime": name, "spearman": row["spearman"], "cosine": row["cosine"],
                     "bytes": size, "batch": only_batch, "latency_ms": {}, "speedup": {},
                     "openvino_precision": getattr(module, "precision", None)})
        console.print(f"  minilm {name}: Spearman {row['spearman']:.4f}, cos "
                      f"{row['cosine']:.4f} ({time.perf_counter() - started:.0f} s)")
    for batch_size, batch in batches.items():
        timed = [index for index, (_, _, _, only) in enumerate(runtimes)
                 if only is None or only == batch_size]
        timings = compare_latency([runtimes[index][1] for index in timed], batch=batch,
                                  repeats=REPEATS[batch_size])
        for index, timing in zip(timed, timings, strict=True):
            rows[index]["latency_ms"][str(batch_size)] = {**timing, "tokens": int(batch.shape[1])}
            rows[index]["speedup"][str(batch_size)] = timings[0]["p50"] / timing["p50"]
        console.print(f"  minilm timed at batch {batch_size}")
    return {"arch": "minilm", "rows": rows, "failures": failures, "notes": notes,
            "pairs": len(pairs), "batches": [str(b) for b in batches],
            "load_average": load_average()}


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load as timing ended: other jobs on a shared machine preempt
    the timed calls (ratios measured interleaved survive it, tail latencies do not)."""
    return [round(value, 2) for value in os.getloadavg()]


# --- report ----------------------------------------------------------------------------------

COLUMNS = ["runtime", "accuracy", "Δ vs fp32", "bytes", "b1 speed-up", "b64 speed-up"]
MINILM_COLUMNS = ["runtime", "STS Spearman", "cosine to fp32", "bytes", "b1 speed-up",
                  "b32 speed-up"]


def _speedup(row: dict, batch: str) -> str:
    value = row["speedup"].get(batch)
    return "–" if value is None else f"{value:.2f}×"


def _bytes(row: dict) -> str:
    return "–" if row["bytes"] is None else f"{row['bytes']:,}"


def _name(row: dict) -> str:
    """The runtime, with the precision OpenVINO's CPU plugin resolved its hint to."""
    precision = row.get("openvino_precision")
    return row["runtime"] + (f" [runs {precision_name(precision)}]" if precision else "")


def columns_of(result: dict) -> list[str]:
    return MINILM_COLUMNS if result["arch"] == "minilm" else COLUMNS


def table_rows(result: dict) -> list[list[str]]:
    if result["arch"] == "minilm":
        return [[_name(row), f"{row['spearman']:.4f}", f"{row['cosine']:.4f}", _bytes(row),
                 _speedup(row, "1"), _speedup(row, "32")] for row in result["rows"]]
    return [[_name(row), f"{100 * row['accuracy']:.2f}%", f"{row['change_points']:+.2f}",
             _bytes(row), _speedup(row, "1"), _speedup(row, "64")] for row in result["rows"]]


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    lines = ["# Deployment peers: nnzip's deployed int8 against ORT, OpenVINO/NNCF, torchao", "",
             f"Machine: {machine['cpu_model']}, flags {', '.join(machine['cpu_flags'])}, one "
             f"thread; {versions}.", "",
             "Accuracy on the 10 000 MNIST test images (Δ in points against PyTorch eager fp32). "
             "Speed-up: PyTorch eager fp32 p50 over the runtime's p50, every runtime timed "
             f"interleaved in one run (p50 of {REPEATS[1]} calls at batch 1, {REPEATS[64]} "
             "at batch 32/64, each block of calls after an untimed one, in a shuffled order per "
             "round; each model's runtimes in one run, different models possibly in different "
             "runs). nnzip's row is, per batch size, the runtime `nnzip.runtime.deploy` chose: "
             "the fastest correct one, or the smallest file within 3 % of its latency (two "
             "rows, each timed at its own batch size, when it picks two). Bytes: the "
             "deployed file (ONNX; OpenVINO .xml + .bin; for torchao the tensors its converted "
             "graph reads); '–' for PyTorch eager.", ""]
    for result in report["models"]:
        lines += [f"## {result['arch']}", ""]
        if result.get("load_average"):
            lines += [f"Load average (1, 5, 15 min) as its timing ended: "
                      f"{', '.join(map(str, result['load_average']))} on {machine['cores']} "
                      "cores.", ""]
        if result["arch"] == "minilm":
            latency = result["rows"][0]["latency_ms"]
            lines += [f"all-MiniLM-L6-v2 on {result['pairs']} STS-B dev pairs: Spearman of "
                      "cos(s1, s2) against gold, mean cosine of each sentence's embedding to "
                      "PyTorch fp32's. Batch 1: a dev sentence of median length "
                      f"({latency['1']['tokens']} tokens); batch 32: the first 32 dev sentences "
                      f"padded to {latency['32']['tokens']} tokens. nnzip's rows: "
                      f"{', '.join(MINILM_DEPLOYED)}, each deployed by `nnzip.runtime.deploy` "
                      "(per batch size, the runtime it found fastest with cosine ≥ 0.99 to the "
                      f"quantized model on {DEPLOY_SAMPLES} validation sentences; two rows, "
                      "each timed at its own batch size, when it picks two).", ""]
        lines += [*markdown_table(columns_of(result), table_rows(result)), ""]
        for failure in result["failures"]:
            lines += [f"- **{failure['peer']}** not measured: {failure['error']}"]
        lines += [f"- {note}" for note in result.get("notes", [])]
        if result["failures"] or result.get("notes"):
            lines += [""]
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for name in ("onnxruntime", "openvino", "nncf", "torchao"):
        with contextlib.suppress(Exception):
            found[name] = __import__(name).__version__
    return found


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--pairs", type=int, default=None,
                        help="MiniLM: only the first N STS-B dev pairs (a quick look)")
    parser.add_argument("--fresh", action="store_true",
                        help="measure the --models again instead of keeping their rows")
    args = parser.parse_args()
    console = Console(width=160)
    data = load_mnist()
    path = RESULTS / f"{NAME}.json"
    report = (json.loads(path.read_text(encoding="utf-8")) if path.exists()
              else {"benchmark": NAME, "models": []})
    if args.fresh:  # the named models are measured again; the others' rows are kept
        report["models"] = [r for r in report["models"] if r["arch"] not in args.models]
    report |= {"machine": machine_info(1), "versions": versions()}
    done = {result["arch"] for result in report["models"]}
    for arch in args.models:
        if arch in done:
            console.print(f"{arch}: kept from {path.name} (--fresh measures it again)")
            continue
        console.print(f"{arch}: measuring")
        report["models"].append(run_model(arch, data, args, console))
        report["models"].sort(key=lambda result: MODELS.index(result["arch"]))
        write_results(NAME, report, render_markdown, default=float)
        result = next(r for r in report["models"] if r["arch"] == arch)
        print_table(console, result["arch"], columns_of(result), table_rows(result),
                    left=["runtime"])

if __name__ == "__main__":
    quiet_single_thread()
    main()
