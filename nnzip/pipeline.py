"""Run a recipe: model + data -> stages -> compressed model -> measurements -> report.

The model is measured before the first stage (the ``baseline`` row) and after every stage; the
report is rewritten atomically after each measurement, so an interrupted run keeps every row it
finished. The model before compression is the reference for compression ratio and agreement, and
the default teacher of the stages.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnzip.codec.nnz import codec_options
from nnzip.data.splits import DataSplits
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig, build_report, evaluate, machine_info, write_report
from nnzip.models.nnz import nnz_artifact, save_nnz
from nnzip.recipe import Recipe, load_recipe
from nnzip.stage import Context

log = logging.getLogger(__name__)


@dataclass
class CompressResult:
    model: nn.Module
    report: dict
    paths: dict[str, Path] = field(default_factory=dict)


def _write(rows: list[dict], eval_config: EvalConfig, out_dir: Path | None,
           extra: dict) -> tuple[dict, dict[str, Path]]:
    report = build_report(rows, machine_info(eval_config.threads), extra=extra)
    paths = write_report(report, out_dir) if out_dir is not None else {}
    return report, paths


def evaluate_models(models: list[tuple[str, str, nn.Module]], data: DataSplits, *,
                    out_dir: str | Path | None = None, eval_config: EvalConfig | None = None,
                    reference: nn.Module | None = None, extra: dict | None = None,
                    artifacts: dict[str, Path] | None = None) -> tuple[dict, dict[str, Path]]:
    """Measure ``(name, stage, model)`` triples against one reference and write the report.

    Without a reference the first model is the reference of the others. ``artifacts`` maps a
    model's name to the file it was loaded from, whose bytes are then its size (e.g. an .nnz).
    """
    eval_config = eval_config or EvalConfig()
    out_dir = Path(out_dir) if out_dir is not None else None
    extra = {"data": data.summary(), **(extra or {})}
    reference_model = reference if reference is not None else models[0][2]
    reference_size = None
    rows: list[dict] = []
    report: dict = {}
    paths: dict[str, Path] = {}
    for index, (name, stage, model) in enumerate(models):
        is_reference = reference is None and index == 0
        entry = evaluate(model, data, name=name, stage=stage,
                         reference=None if is_reference else reference_model,
                         reference_size_bytes=reference_size, config=eval_config,
                         artifact_path=(artifacts or {}).get(name))
        if is_reference:
            reference_size = entry["size_bytes"]
        rows.append(entry)
        report, paths = _write(rows, eval_config, out_dir, extra)
    return report, paths


def compress(model: nn.Module, recipe: Recipe | str | Path, data: DataSplits, *,
             name: str = "model", out_dir: str | Path | None = None,
             eval_config: EvalConfig | None = None, finetune_epochs: int = 3, seed: int = 0,
             progress: bool = True) -> CompressResult:
    """Apply ``recipe`` to ``model`` stage by stage, measuring after each; returns the result.

    ``model`` is changed in place by the stages; the reference is a copy taken before the first.
    With ``out_dir`` the report files (and the final model, when it can be saved) are written there.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    eval_config = eval_config or EvalConfig()
    out_dir = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(seed)
    reference = copy.deepcopy(model).eval()
    context = Context(data=data, reference=reference, finetune_epochs=finetune_epochs, seed=seed,
                      workdir=out_dir, progress=progress)
    extra = {"data": data.summary(), "recipe": recipe.to_dict(), "stages": []}

    baseline = evaluate(model, data, name=name, stage="baseline", config=eval_config)
    rows = [baseline]
    report, paths = _write(rows, eval_config, out_dir, extra)
    for step in recipe.steps:
        log.info("stage %s (%s)", step.label, step.stage.kind)
        started = time.perf_counter()
        context.details = {}
        result = step.stage.apply(model, context)
        if not isinstance(result, nn.Module):
            raise NnzipError(f"stage {step.label} returned {type(result).__name__}, not a model: "
                             "a stage's apply() must return the compressed nn.Module")
        model = result
        extra["stages"].append({"label": step.label, "kind": step.stage.kind,
                                "seconds": round(time.perf_counter() - started, 3),
                                "details": context.details})
        with tempfile.TemporaryDirectory(prefix="nnzip-artifact-") as folder:
            # After weight sharing (or an encode stage) the size is that of the .nnz file.
            rows.append(evaluate(model, data, name=name, stage=step.label, reference=reference,
                                 reference_size_bytes=baseline["size_bytes"],
                                 artifact_path=nnz_artifact(model, folder,
                                                            example=_example(data)),
                                 config=eval_config))
        report, paths = _write(rows, eval_config, out_dir, extra)
    if out_dir is not None:
        paths["model"] = save_final_model(model, out_dir, data)
    return CompressResult(model=model, report=report, paths=paths)


def _example(data: DataSplits) -> torch.Tensor:
    """Two test inputs: what torch.export traces a model outside the zoo on."""
    return data.test.tensors[0][:2]


def save_final_model(model: nn.Module, out_dir: Path, data: DataSplits) -> Path:
    """Save as a zoo folder (safetensors + spec) when the zoo can rebuild it, else as a .pt2.

    After weight sharing (or an ``encode`` stage) the model is saved as its ``.nnz`` file (a
    model outside the zoo as its torch.export program, traced on two test inputs).

    A model quantized by nnzip is saved as a QDQ ``.onnx`` file: int8 weights with their scales,
    runnable on ONNX Runtime's integer kernels (a .pt2 would hold fp32 copies of the weights).
    """
    from nnzip.models import export_model, model_spec, save_model
    from nnzip.runtime.onnx_export import export_onnx, is_quantized

    example = _example(data)
    options = codec_options(model)
    if options is not None:
        return save_nnz(model, out_dir / "model.nnz", example=example,
                        huffman=options["huffman"])
    if is_quantized(model):
        try:
            return export_onnx(model, out_dir / "model.onnx", example)
        except NnzipError as error:  # e.g. dynamic quantization: ORT quantizes that itself
            log.info("saving as torch.export instead of ONNX: %s", error)

    if model_spec(model) is not None:
        try:
            return save_model(model, out_dir / "model")
        except NnzipError as error:  # e.g. a method changed layer shapes: the spec no longer fits
            log.info("saving as torch.export instead of a zoo folder: %s", error)
    return export_model(model, out_dir / "model.pt2", example)
