"""Coverage on user models: nnzip beside PyTorch's own pruning and dynamic quantization.

For each family of :mod:`nnzip.models.examples` (grouped conv + shuffle, DenseNet, ViT on
nn.MultiheadAttention, nn.TransformerEncoder, LSTM/GRU language models with tied embeddings,
functional parameters, Conv1d, Conv3d, a layer called twice) this measures, in one run:

- 50 % magnitude pruning: ``nnzip.apply(model, "prune", sparsity=0.5)`` against
  ``torch.nn.utils.prune.global_unstructured`` (L1) given every >= 2-D parameter of every module,
  as a user would write it: the fraction of all parameters set to zero, and whether a tied
  embedding is still one tensor afterwards;
- dynamic int8 quantization: nnzip's ``quantize`` stage in ``mode: dynamic`` against
  ``torch.ao.quantization.quantize_dynamic`` on {Linear, LSTM, GRU}: the fraction of the
  parameters each quantized, the output error relative to the float model on the family's
  inputs, and the tie.

A method that fails records its error message instead of a number. Run:
``python benchmarks/coverage.py``. Writes benchmarks/results/coverage.{md,json}.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from rich.console import Console
from torch import nn
from torch.nn.utils import prune as torch_prune

from common import benchmark_parser, machine_line, markdown_table, print_table, run_each
from nnzip import apply
from nnzip.core import find_weights, unique_parameters
from nnzip.evaluate import machine_info
from nnzip.models.examples import EXAMPLES, example_model

SPARSITY = 0.5


def _zero_fraction(model: nn.Module) -> float:
    params = list(unique_parameters(model).values())
    return sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params)


def _tied(model: nn.Module) -> bool | None:
    """Whether a tied embedding/decoder is still one tensor (None: the model has no tie)."""
    if not hasattr(model, "decoder"):
        return None
    decoder = model.decoder
    weight = decoder.weight() if callable(getattr(decoder, "weight", None)) \
        else getattr(decoder, "weight", None)
    return weight is model.embed.weight


def _relative_error(model: nn.Module, reference: torch.Tensor, inputs: torch.Tensor) -> float:
    with torch.no_grad():
        output = model(inputs)
    return float((output - reference).norm() / reference.norm())


def _attempt(run) -> dict:
    started = time.perf_counter()
    try:
        result = run()
    except Exception as error:  # a benchmark reports a failure as data, whatever it is
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    return {**result, "seconds": time.perf_counter() - started}


def _torch_prune(model: nn.Module) -> dict:
    seen, targets = set(), []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and param.shape[0] > 1:
                targets.append((module, name))
                seen.add(id(param))
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured,
                                    amount=SPARSITY)
    for module, name in targets:
        torch_prune.remove(module, name)
    return {"zero_fraction": _zero_fraction(model), "tied": _tied(model)}


def _nnzip_prune(model: nn.Module) -> dict:
    result = apply(model, "prune", sparsity=SPARSITY, finetune_epochs=0)
    return {"zero_fraction": _zero_fraction(result.model), "tied": _tied(result.model),
            "skipped": result.coverage.skipped}


def _torch_dynamic(model: nn.Module, reference: torch.Tensor, inputs: torch.Tensor) -> dict:
    before = sum(p.numel() for p in unique_parameters(model).values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8)
    # quantize_dynamic copies the model; a weight it quantized is no longer a float parameter
    # under any of its names (packed int8 instead).
    float_names = set(dict(quantized.named_parameters(remove_duplicate=False)))
    covered = sum(w.numel for w in find_weights(model)
                  if not float_names & {w.name, *w.aliases})
    return {"covered_fraction": covered / before,
            "relative_error": _relative_error(quantized, reference, inputs),
            "tied": _tied(quantized)}


def _nnzip_dynamic(model: nn.Module, reference: torch.Tensor, inputs: torch.Tensor) -> dict:
    result = apply(model, "quantize", mode="dynamic")
    return {"covered_fraction": result.coverage.changed_fraction,
            "relative_error": _relative_error(result.model, reference, inputs),
            "tied": _tied(result.model), "skipped": result.coverage.skipped}


def run_family(name: str, console: Console) -> dict:
    model, inputs = example_model(name, batch=32)
    with torch.no_grad():
        reference = model(inputs)
    weights = sum(w.numel for w in find_weights(model))
    params = sum(p.numel() for p in unique_parameters(model).values())
    row = {"family": name, "description": EXAMPLES[name].description, "params": params,
           "weight_fraction": weights / params,
           "prune": {"nnzip": _attempt(lambda: _nnzip_prune(copy.deepcopy(model))),
                     "torch": _attempt(lambda: _torch_prune(copy.deepcopy(model)))},
           "dynamic_int8": {
               "nnzip": _attempt(lambda: _nnzip_dynamic(copy.deepcopy(model), reference,
                                                        inputs)),
               "torch": _attempt(lambda: _torch_dynamic(copy.deepcopy(model), reference,
                                                        inputs))}}
    console.print(f"  {name}: prune nnzip {_cell(row['prune']['nnzip'], 'zero_fraction')} / "
                  f"torch {_cell(row['prune']['torch'], 'zero_fraction')}; dynamic int8 nnzip "
                  f"{_cell(row['dynamic_int8']['nnzip'], 'covered_fraction')} / torch "
                  f"{_cell(row['dynamic_int8']['torch'], 'covered_fraction')}")
    return row


def _cell(result: dict, key: str, percent: bool = True) -> str:
    if "error" in result:
        return "error"
    value = result[key]
    return f"{100 * value:.1f} %" if percent else f"{value:.4f}"


def _tie(result: dict) -> str:
    tied = result.get("tied")
    return "" if tied is None or "error" in result else (" (tied)" if tied else " (untied)")


def _rows(report: dict) -> list[list[str]]:
    rows = []
    for row in report["families"]:
        prune, dynamic = row["prune"], row["dynamic_int8"]
        rows.append([
            row["family"], f"{row['params']:,}",
            _cell(prune["nnzip"], "zero_fraction") + _tie(prune["nnzip"]),
            _cell(prune["torch"], "zero_fraction") + _tie(prune["torch"]),
            _cell(dynamic["nnzip"], "covered_fraction") + _tie(dynamic["nnzip"]),
            _cell(dynamic["torch"], "covered_fraction") + _tie(dynamic["torch"]),
            _cell(dynamic["nnzip"], "relative_error", percent=False),
            _cell(dynamic["torch"], "relative_error", percent=False)])
    return rows


COLUMNS = ["Family", "Params", "Pruned: nnzip", "Pruned: torch", "Dyn. int8: nnzip",
           "Dyn. int8: torch", "Rel. error nnzip", "Rel. error torch"]


def render(report: dict) -> str:
    lines = ["# Coverage on user models: nnzip beside PyTorch", "",
             "Fraction of **all** parameters zeroed by 50 % magnitude pruning (nnzip's `prune` "
             "stage vs `torch.nn.utils.prune.global_unstructured` over every >= 2-D parameter), "
             "and quantized by dynamic int8 (nnzip's `quantize` stage, `mode: dynamic`, vs "
             "`torch.ao.quantization.quantize_dynamic` on Linear/LSTM/GRU), with the output "
             "error relative to the float model. (tied)/(untied): whether the LM's output layer "
             "is still the embedding tensor afterwards. Biases and normalization scales are "
             "not pruned by either, so 50 % of the weights is a little under 50 % of the "
             "parameters.", ""]
    lines += markdown_table(COLUMNS, _rows(report))
    errors = [(row["family"], method, tool, result["error"])
              for row in report["families"] for method in ("prune", "dynamic_int8")
              for tool, result in row[method].items() if "error" in result]
    skipped = [(row["family"], method, name, reason)
               for row in report["families"] for method in ("prune", "dynamic_int8")
               for name, reason in row[method]["nnzip"].get("skipped", {}).items()]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {family}, {method}, {tool}: `{error}`"
                  for family, method, tool, error in errors]
    if skipped:
        lines += ["", "What nnzip skipped, and why:", ""]
        lines += [f"- {family}, {method}: `{name}`: {reason}"
                  for family, method, name, reason in skipped]
    lines += ["", machine_line(report["machine"], ", 1 thread"), ""]
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--families", nargs="+", default=list(EXAMPLES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console()
    report = {"machine": machine_info(1), "sparsity": SPARSITY, "families": []}
    run_each("coverage", report, args.families, lambda name: run_family(name, console), render,
             key="families")
    print_table(console, "Coverage", COLUMNS, _rows(report), left=["Family"])


if __name__ == "__main__":
    main()
