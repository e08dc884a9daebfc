"""nnzip deploy with OpenVINO beside ONNX Runtime: which runtime wins, per batch size, on this CPU.

For each zoo model (trained on MNIST, cached in runs/cache), in one run on one thread: nnzip's
static PTQ (W8A8), then ``nnzip.runtime.deploy`` with the fp32 model as the baseline. Every
candidate — PyTorch eager, ONNX Runtime (int8 QDQ, QOperator, dequantized, fp32), OpenVINO
(fp32 pinned, bf16, int8 from nnzip's QDQ file; dynamic and static shapes) — is checked on 2 000
validation images (±0.2 points) and the correct ones are timed interleaved at batch 1 and 64.
The saved model (the winner at batch 1) is reloaded with ``nnzip.load_model`` and scored on the
10 000 MNIST test images. Speed-ups are p50 ratios measured in the same run.

    python benchmarks/deploy_openvino.py --cache-dir runs/cache [--archs lenet5 resnet8]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

from common import (
    benchmark_parser,
    machine_line,
    markdown_table,
    print_table,
    quiet_single_thread,
    run_each,
)
from nnzip.data import calibration_batches, load_mnist
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.models import load_model
from nnzip.quant import quantize_static
from nnzip.runtime import deploy
from nnzip.train import train_zoo_model

BATCHES = (1, 64)
REPEATS = 40
COLUMNS = ("runtime", "correct", "accuracy Δ (points)", "integer layers",
           *(f"p50 ms @{batch}" for batch in BATCHES))
WINNER_COLUMNS = ("batch", "winner", "p50 ms", "vs PyTorch eager fp32", "runner-up",
                  "vs runner-up")


def run_model(arch: str, data, cache_dir: Path, console: Console) -> dict:
    dense = train_zoo_model(arch, data, cache_dir=cache_dir, progress=False).eval()
    int8 = quantize_static(dense, calibration_batches(data, 8))
    folder = Path(tempfile.mkdtemp(prefix=f"nnzip-deploy-ov-{arch}-"))
    deployment = deploy(int8, data, folder / "deploy", batch_sizes=BATCHES, repeats=REPEATS,
                        original=dense)
    saved = load_model(deployment.path)
    test_accuracy = accuracy(predict_logits(saved, data.loader("test", batch_size=1000)),
                             data.test.tensors[1])
    summary = deployment.summary()
    console.print(f"  {arch}: saved {deployment.chosen.name} ({deployment.path.name}), "
                  f"{100 * test_accuracy:.2f} % on the test set")
    return {"arch": arch, "saved_runtime": deployment.chosen.name,
            "saved_file": deployment.path.name, "saved_test_accuracy": test_accuracy,
            "chosen": summary["chosen"], "skipped": summary["skipped"],
            "runtimes": summary["runtimes"], "machine": summary["machine"]}


def runtime_rows(result: dict) -> list[list[str]]:
    rows = []
    for runtime in result["runtimes"]:
        status = ("yes" if runtime["correct"] else "no") if runtime["candidate"] else "baseline"
        rows.append([runtime["name"], status, f"{runtime['accuracy_change_points']:+.2f}",
                     "" if runtime["integer_ops"] is None else str(runtime["integer_ops"]),
                     *(f"{runtime['latency_ms'][str(b)]['p50']:.3f}"
                       if str(b) in runtime["latency_ms"] else "—" for b in BATCHES)])
    return rows


def winner_rows(result: dict) -> list[list[str]]:
    rows = []
    for batch, choice in result["chosen"].items():
        rows.append([batch, choice["runtime"], f"{choice['p50_ms']:.3f}",
                     f"{choice['speedup']:.2f}×", choice["runner_up"] or "—",
                     "" if choice["speedup_vs_runner_up"] is None
                     else f"{choice['speedup_vs_runner_up']:.2f}×"])
    return rows


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    lines = ["# nnzip deploy: OpenVINO beside ONNX Runtime, the winner per batch size", "",
             "nnzip static PTQ (W8A8) of models trained on MNIST, deployed with "
             "`nnzip.runtime.deploy` (original fp32 model as the baseline, PyTorch eager). "
             f"Correct = within 0.2 accuracy points of the W8A8 model on 2 000 validation "
             f"images; p50 of {REPEATS} interleaved calls, 1 thread, one run "
             "(`python benchmarks/deploy_openvino.py`). Integer layers: for ONNX Runtime, the "
             "integer operators in the file (QLinearConv...; a QDQ file has none until ORT fuses "
             "it); for OpenVINO, the compute layers its execution graph runs on u8/i8.", ""]
    for result in report["models"]:
        lines += [f"## {result['arch']}", "",
                  *markdown_table(WINNER_COLUMNS, winner_rows(result)), "",
                  f"Saved: **{result['saved_runtime']}** (`{result['saved_file']}`, the winner "
                  f"at batch {BATCHES[0]}), reloaded with `nnzip.load_model`: "
                  f"{100 * result['saved_test_accuracy']:.2f} % on the 10 000 test images.", "",
                  *markdown_table(COLUMNS, runtime_rows(result)), ""]
        for skip in result["skipped"]:
            lines.append(f"- skipped {skip['runtime']}: {skip['reason']}")
        lines.append("")
    first = report["models"][0]["machine"] if report["models"] else {}
    lines.append(machine_line(machine, ", 1 thread") + f" CPU flags: "
                 f"{', '.join(first.get('cpu_flags', machine['cpu_flags']))}; onnxruntime "
                 f"{first.get('onnxruntime_version')}, openvino {first.get('openvino_version')} "
                 f"(CPU capabilities {', '.join(first.get('openvino_cpu_capabilities', []))}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    from nnzip.evaluate import machine_info

    args = benchmark_parser(__doc__, ["lenet5", "resnet8"]).parse_args()
    console = Console(width=160)
    data = load_mnist()
    report = {"benchmark": "deploy_openvino", "machine": machine_info(1), "models": []}
    run_each("deploy_openvino", report, args.archs,
             lambda arch: run_model(arch, data, args.cache_dir, console), render_markdown)
    for result in report["models"]:
        print_table(console, f"{result['arch']}: the winner per batch size", WINNER_COLUMNS,
                    winner_rows(result), left=["winner", "runner-up"])
        print_table(console, f"{result['arch']}: every runtime", COLUMNS,
                    runtime_rows(result), left=["runtime"])


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--render"]:  # the markdown again from the committed JSON
        from common import rewrite_markdown

        print(rewrite_markdown("deploy_openvino", render_markdown))
    else:
        quiet_single_thread()
        main()
