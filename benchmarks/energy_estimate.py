"""Estimated energy per batch-1 inference of the zoo models, float and compressed (no timing).

For each cached zoo model (trained on MNIST, in runs/cache) this builds the float model, W8A8
and W4 weight-only PTQ (calibrated on 32 test images), 90 % global magnitude pruning (masked), 50 %
of the channels removed (Torch-Pruning, no fine-tune) and 4-bit k-means clustering, and estimates
the energy of one inference of one real MNIST test image with :mod:`nnzip.evaluate.energy_model`
(Horowitz 2014 45 nm per-operation costs). Accuracy is not measured: the other benchmarks do
that; this one shows where the estimated joules go (compute, weights, activations) and which
compression reduces which. Counting, not timing, so the figures are the same on any machine.
Run: ``python benchmarks/energy_estimate.py``. Writes benchmarks/results/energy_estimate.{md,json}.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from rich.console import Console
from torch import nn

from common import RESULTS, benchmark_parser, markdown_table, rewrite_markdown, run_each
from nnzip.data import load_mnist, probe_batch
from nnzip.evaluate.energy_model import ESTIMATE_TITLE, SOURCE, estimate_energy, fmt_joules
from nnzip.prune.structured import prune_channels
from nnzip.prune.unstructured import magnitude_prune
from nnzip.quant import QuantConfig, quantize_static
from nnzip.share.cluster import cluster_weights
from nnzip.train import train_zoo_model

NAME = "energy_estimate"
ARCHS = ("lenet300", "lenet5", "resnet8", "resnet20", "mobilenetv2")
VARIANTS = ("float32", "W8A8", "W4 weight-only", "90 % unstructured (masked)",
            "50 % channels removed", "4-bit clustered")


def _pruned(model: nn.Module) -> nn.Module:
    pruned = copy.deepcopy(model)
    magnitude_prune(pruned, 0.9)
    return pruned


def _clustered(model: nn.Module) -> nn.Module:
    clustered = copy.deepcopy(model)
    cluster_weights(clustered, bits=4)
    return clustered


def variants(model: nn.Module, sample: torch.Tensor, calibration: list) -> dict[str, nn.Module]:
    return {
        "float32": model,
        "W8A8": quantize_static(model, calibration, QuantConfig()),
        "W4 weight-only": quantize_static(model, calibration,
                                          QuantConfig(weight_bits=4, activation_bits=None)),
        "90 % unstructured (masked)": _pruned(model),
        "50 % channels removed": prune_channels(model, 0.5, example_inputs=sample),
        "4-bit clustered": _clustered(model),
    }


def render_markdown(report: dict) -> str:
    rows = [[model["arch"], *[fmt_joules(model["variants"][v]["total_j"]) for v in VARIANTS]]
            for model in report["models"]]
    parts = [f"# {NAME}", "", f"{ESTIMATE_TITLE} per batch-1 inference of one MNIST "
             "test image.", "", *markdown_table(["Model", *VARIANTS], rows), ""]
    split = [[model["arch"], variant, fmt_joules(e["compute_j"]), fmt_joules(e["weight_memory_j"]),
              fmt_joules(e["activation_memory_j"]),
              ", ".join(f"{dtype} {count:,}" for dtype, count in e["macs"].items())]
             for model in report["models"] for variant, e in model["variants"].items()]
    parts += ["Where it goes:", "", *markdown_table(
        ["Model", "Variant", "Compute", "Weights (DRAM)", "Activations", "MACs"], split), "",
        f"Per-operation costs: {SOURCE}. Counted, not timed: the same on any machine.", ""]
    return "\n".join(parts)


def main() -> None:
    parser = benchmark_parser(__doc__, ARCHS)
    parser.add_argument("--render", action="store_true",
                        help=f"only rewrite {NAME}.md from the committed {NAME}.json")
    args = parser.parse_args()
    console = Console(width=160)
    if args.render:
        rewrite_markdown(NAME, render_markdown)
        console.print((RESULTS / f"{NAME}.md").read_text(encoding="utf-8"))
        return
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(1)
    data = load_mnist(seed=0)
    sample, calibration = probe_batch(data, 1), [probe_batch(data, 32)]

    def run(arch: str) -> dict:
        model = train_zoo_model(arch, data, cache_dir=args.cache_dir, progress=False)
        estimates = {name: estimate_energy(m, sample)
                     for name, m in variants(model, sample, calibration).items()}
        console.print(f"{arch}: " + ", ".join(f"{name} {fmt_joules(e['total_j'])}"
                                              for name, e in estimates.items()))
        return {"arch": arch, "variants": estimates}

    run_each(NAME, {"models": []}, args.archs, run, render_markdown)
    console.print((RESULTS / f"{NAME}.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
