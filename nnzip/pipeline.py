"""Run a recipe: model + data -> stages -> compressed model -> measurements -> report.

The model is measured before the first stage (the ``baseline`` row) and after every stage. The
run writes into a temporary folder that replaces ``out_dir`` as a whole when it succeeds
(:mod:`nnzip.outputs`); on Ctrl-C the rows finished so far are kept, marked as interrupted, in
``OUT.interrupted`` beside it. The model before compression is the reference for compression
ratio and agreement, and the default teacher of the stages.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from nnzip.codec.nnz import codec_options
from nnzip.core.coverage import Coverage, MethodResult, changed_coverage
from nnzip.core.interrupt import check_interrupt
from nnzip.core.modes import set_eval
from nnzip.core.weights import unique_parameters
from nnzip.data.splits import DataSplits, calibration_batches, probe_batch
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig, build_report, evaluate, machine_info, write_report
from nnzip.models.nnz import nnz_artifact, save_nnz
from nnzip.outputs import final_paths, staged_folder
from nnzip.recipe import Recipe, load_recipe, parse_recipe
from nnzip.stage import Context, Stage

log = logging.getLogger(__name__)


def apply(model: nn.Module, stage: Stage | str, data: DataSplits | None = None, *,
          teacher: nn.Module | None = None, finetune_epochs: int = 3, seed: int = 0,
          progress: bool = False, **options) -> MethodResult:
    """Run one method on ``model``: the one call shape every method shares.

    ``stage`` is a method's config object, which is also its recipe stage
    (``Prune(sparsity=0.5)``), or its recipe name with the options as keywords
    (``apply(model, "prune", data, sparsity=0.5)``, validated exactly as a recipe is). ``data``
    is the calibration / fine-tuning data for the methods that need it.

    In place vs copy, the one rule: a method changes ``model`` in place (as torchao's
    ``quantize_`` does) and returns it in ``result.model``, in eval mode; a method that rebuilds
    layers may return a new module, so always continue with ``result.model``. To keep the
    original, pass a copy (:func:`compress` copies the caller's model once for a whole recipe).
    ``result.coverage`` lists every parameter: what the method did to it, or why it left it.
    """
    stage = _stage(stage, options)
    if data is not None:
        from nnzip.tasks import task_of

        task_of(data).check_stage(stage)
    context = Context(data=data, reference=set_eval(copy.deepcopy(model)) if teacher is None
                      else teacher, finetune_epochs=finetune_epochs, seed=seed,
                      progress=progress)
    return _run_stage(stage, model, context, stage.kind)


def _stage(stage: Stage | str, options: dict) -> Stage:
    if isinstance(stage, Stage):
        if options:
            raise NnzipError(f"pass the options of {stage.kind!r} in its config object, not as "
                             f"keywords ({', '.join(options)})")
        return stage
    return parse_recipe({"stages": [{stage: options}]}, source=f"apply({stage!r})").steps[0].stage


def _run_stage(stage: Stage, model: nn.Module, context: Context, label: str) -> MethodResult:
    """Apply ``stage``; its coverage is what it recorded, or else what changed in the model.

    Only a stage that records no coverage costs a copy of the parameters (to compare against).
    """
    before = None if stage.records_coverage else {
        name: param.detach().clone() for name, param in unique_parameters(model).items()}
    context.details = {}
    result = stage.apply(model, context)
    if not isinstance(result, nn.Module):
        raise NnzipError(f"stage {label} returned {type(result).__name__}, not a model: "
                         "a stage's apply() must return the compressed nn.Module")
    set_eval(result)
    details = dict(context.details)
    recorded = details.pop("coverage", None)
    if stage.records_coverage and recorded is None:
        raise NnzipError(f"stage {label} ({stage.kind}) says it records its coverage but did not: "
                         "a bug in the stage; please report it")
    coverage = (Coverage.from_dict(recorded) if recorded is not None
                else changed_coverage(before, result, stage.kind))
    return MethodResult(model=result, coverage=coverage, details=details)


@dataclass
class CompressResult:
    model: nn.Module
    report: dict
    paths: dict[str, Path] = field(default_factory=dict)


def _write(rows: list[dict], eval_config: EvalConfig, out_dir: Path | None,
           extra: dict) -> tuple[dict, dict[str, Path]]:
    report = build_report(rows, machine_info(eval_config.threads), extra=extra,
                          score_weights=eval_config.score_weights)
    paths = write_report(report, out_dir) if out_dir is not None else {}
    return report, paths


def evaluate_models(models: list[tuple[str, str, nn.Module]], data: DataSplits, *,
                    out_dir: str | Path | None = None, eval_config: EvalConfig | None = None,
                    reference: nn.Module | None = None, extra: dict | None = None,
                    artifacts: dict[str, Path] | None = None) -> tuple[dict, dict[str, Path]]:
    """Measure ``(name, stage, model)`` triples against one reference and write the report.

    Without a reference the first model is the reference of the others. ``artifacts`` maps a
    model's stage to the file it was loaded from, whose bytes are then its size (e.g. an .nnz):
    the stage, since two rows may name the same architecture.
    """
    eval_config = eval_config or EvalConfig()
    out_dir = Path(out_dir) if out_dir is not None else None
    extra = {"data": data.summary(), **(extra or {})}
    reference_model = reference if reference is not None else models[0][2]
    reference_size = None
    rows: list[dict] = []
    report: dict = {}
    paths: dict[str, Path] = {}

    def save_finished(folder: Path) -> bool:
        planned = [name for name, _, _ in models]
        return _write_interrupted(rows, planned, eval_config, folder, extra)

    with staged_folder(out_dir, save_finished) as folder:
        for index, (name, stage, model) in enumerate(models):
            is_reference = reference is None and index == 0
            entry = evaluate(model, data, name=name, stage=stage,
                             reference=None if is_reference else reference_model,
                             reference_size_bytes=reference_size, config=eval_config,
                             artifact_path=(artifacts or {}).get(stage))
            if is_reference:
                reference_size = entry["size_bytes"]
            rows.append(entry)
            report, paths = _write(rows, eval_config, folder, extra)
    return report, final_paths(paths, folder, out_dir)


def check_compressible(model: nn.Module) -> None:
    """Refuse a model run by ONNX Runtime or OpenVINO (a loaded ``.onnx`` or IR ``.xml``): its
    weights live in the runtime's graph, not in tensors a stage can prune or quantize, so a
    recipe would change nothing while the report claimed a compression."""
    from nnzip.runtime.openvino import OvModule
    from nnzip.runtime.session import OrtModule

    runtimes = {OrtModule: "ONNX Runtime", OvModule: "OpenVINO"}
    runtime = next((name for kind, name in runtimes.items() if isinstance(model, kind)), None)
    if runtime is not None:
        raise NnzipError(f"{model.path.name} runs in {runtime}: an ONNX/OpenVINO file can be "
                         "evaluated (nnzip eval) and deployed (nnzip deploy), not compressed: "
                         "pass the PyTorch model it was exported from")


def compress(model: nn.Module, recipe: Recipe | str | Path, data: DataSplits, *,
             name: str = "model", out_dir: str | Path | None = None,
             eval_config: EvalConfig | None = None, finetune_epochs: int = 3, seed: int = 0,
             progress: bool = True) -> CompressResult:
    """Apply ``recipe`` to a copy of ``model`` stage by stage, measuring after each.

    The caller's ``model`` is never changed (it is copied once, here; the stages then change the
    copy in place) and is the reference of the report: ``result.model`` is the compressed one,
    in eval mode. With ``out_dir`` the report files (and the final model, when it can be saved)
    are written there.

    In a process group (torchrun, :mod:`nnzip.core.distributed`) every rank applies the stages,
    whose fine-tuning is then data-parallel, but only rank 0 measures and writes: the others
    return the same compressed model with an empty report and no paths.
    """
    from nnzip.core.distributed import is_main_process
    from nnzip.tasks import task_of

    check_compressible(model)
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    recipe.check_task(task_of(data))  # a stage that does not fit the task: refused before work
    recipe.check_model(model)  # layer names, stage/architecture fit: before the baseline
    eval_config = eval_config or EvalConfig()
    if eval_config.score_weights is None and recipe.score is not None:  # the CLI's flag first
        eval_config = replace(eval_config, score_weights=recipe.score)
    # Measuring on every rank would also time latency while other ranks load the same cores.
    measures = is_main_process()
    out_dir = Path(out_dir) if out_dir is not None and measures else None
    torch.manual_seed(seed)
    reference = set_eval(copy.deepcopy(model))
    model = copy.deepcopy(reference)
    extra = {"data": data.summary(), "task": task_of(data).name, "recipe": recipe.to_dict(),
             "stages": []}
    rows: list[dict] = []
    report: dict = {}
    paths: dict[str, Path] = {}

    def save_finished(folder: Path) -> bool:
        # A stage applied but not yet measured has no row: its section is left out too.
        measured = {**extra, "stages": extra["stages"][:max(len(rows) - 1, 0)]}
        planned = ["baseline", *(step.label for step in recipe.steps)]
        return _write_interrupted(rows, planned, eval_config, folder, measured,
                                  saves_model=True)

    with staged_folder(out_dir, save_finished) as folder:
        context = Context(data=data, reference=reference, finetune_epochs=finetune_epochs,
                          seed=seed, workdir=folder, progress=progress)
        if measures:
            baseline = evaluate(model, data, name=name, stage="baseline", config=eval_config)
            rows.append(baseline)
            report, paths = _write(rows, eval_config, folder, extra)
        for step in recipe.steps:
            check_interrupt()
            log.info("stage %s (%s)", step.label, step.stage.kind)
            started = time.perf_counter()
            result = _run_stage(step.stage, model, context, step.label)
            model = result.model
            extra["stages"].append({"label": step.label, "kind": step.stage.kind,
                                    "seconds": round(time.perf_counter() - started, 3),
                                    "details": {**result.details,
                                                "coverage": result.coverage.to_dict()}})
            if not measures:
                continue
            with tempfile.TemporaryDirectory(prefix="nnzip-artifact-") as artifact_folder:
                # After weight sharing (or an encode stage) the size is that of the .nnz file.
                rows.append(evaluate(model, data, name=name, stage=step.label,
                                     reference=reference,
                                     reference_size_bytes=baseline["size_bytes"],
                                     artifact_path=nnz_artifact(model, artifact_folder,
                                                                example=probe_batch(data, 2)),
                                     config=eval_config))
            report, paths = _write(rows, eval_config, folder, extra)
        set_eval(model)
        if folder is not None:
            paths["model"] = save_final_model(model, folder, data)
    return CompressResult(model=model, report=report, paths=final_paths(paths, folder, out_dir))


def _write_interrupted(rows: list[dict], planned: list[str], eval_config: EvalConfig,
                       folder: Path, extra: dict, saves_model: bool = False) -> bool:
    """After Ctrl-C: the rows measured so far as one consistent report set in ``folder``, marked
    as interrupted (what was measured, what was not); False when nothing was measured."""
    if not rows:
        return False
    for stale in folder.iterdir():  # e.g. a stage's scratch files: only the report set is kept
        if stale.name not in ("report.json", "report.md", "report.html"):
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
    interrupted = {"measured": planned[:len(rows)], "not_measured": planned[len(rows):],
                   **({"model_saved": False} if saves_model else {})}
    _write(rows, eval_config, folder, {**extra, "interrupted": interrupted})
    return True


def _save_lowbit_onnx(model: nn.Module, out_dir: Path, example: torch.Tensor) -> Path | None:
    """A group-wise int4 or dynamic int8 model as its MatMulNBits / MatMulInteger ``.onnx``;
    None (said at INFO) when the model has no such layer or the export fails."""
    from nnzip.quant.modules import quantized_layers
    from nnzip.runtime.onnx_export import export_onnx
    from nnzip.runtime.onnx_lowbit import is_lowbit_layer

    if not any(is_lowbit_layer(layer) for layer in quantized_layers(model).values()):
        return None
    tokens = example.dim() == 2 and not example.is_floating_point()
    try:
        return export_onnx(model, out_dir / "model.onnx", example,
                           **({"sequence_dim": 1} if tokens else {}))
    except NnzipError as error:
        log.info("not saved as an int4/dynamic int8 ONNX file: %s", error)
        return None


def save_final_model(model: nn.Module, out_dir: Path, data: DataSplits) -> Path:
    """Save as a zoo folder (safetensors + spec) when the zoo can rebuild it, else as a .pt2.

    After weight sharing (or an ``encode`` stage) the model is saved as its ``.nnz`` file (a
    model outside the zoo as its torch.export program, traced on two test inputs).

    A Hugging Face sentence encoder is saved as a folder that ``transformers``,
    ``sentence-transformers`` and nnzip load (:func:`nnzip.models.hf_save.save_hf`) while its
    layers are still transformers' own (pruned, distilled, layers dropped); otherwise (heads
    pruned, quantized, factorized) as its ``.nnz``, which reloads bit for bit.

    A model quantized by nnzip is saved as a QDQ ``.onnx`` file: int8 weights with their
    scales and (for image and feature models) the fully integer chain ``deploy`` runs,
    calibrated on training batches, for ONNX Runtime's integer kernels (a .pt2 would hold fp32
    copies of the weights); where ONNX has no form for it, as its ``.nnz``. Group-wise int4 and
    dynamic int8 models (a sentence encoder's included) are saved as the int-sized ``.onnx`` ORT
    runs (MatMulNBits, MatMulInteger: :mod:`nnzip.runtime.onnx_lowbit`), the ``.nnz`` when that
    export fails.
    """
    from nnzip.models import export_model, model_spec, save_model
    from nnzip.models.hf import SentenceEncoder
    from nnzip.models.hf_save import hf_save_refusal, save_hf
    from nnzip.runtime.onnx_export import export_onnx, is_quantized

    example = probe_batch(data, 2)
    options = codec_options(model)
    if options is not None:
        return save_nnz(model, out_dir / "model.nnz", example=example,
                        huffman=options["huffman"])
    onnx_path = _save_lowbit_onnx(model, out_dir, example)
    if onnx_path is not None:
        return onnx_path
    if isinstance(model, SentenceEncoder):
        reason = hf_save_refusal(model)
        if reason is None:
            return save_hf(model, out_dir / "model")
        log.info("not saved as a Hugging Face folder: %s", reason)
        try:
            return save_nnz(model, out_dir / "model.nnz", example=example)
        except NnzipError as error:  # e.g. activation quantization: the ONNX file holds it
            log.info("not saved as .nnz: %s", error)
    if is_quantized(model):
        tokens = example.dim() == 2 and not example.is_floating_point()
        # Images and features ship the integer chain the report timed (adds, pooling, outputs
        # quantized too, calibrated on training batches); token models nnzip's QDQ file.
        extra = ({"sequence_dim": 1} if tokens
                 else {"calibration": calibration_batches(data, 8)})
        try:
            return export_onnx(model, out_dir / "model.onnx", example, **extra)
        except NnzipError as error:  # e.g. group-wise int4 (no QDQ form), dynamic int8
            onnx_refusal = error
            log.info("not saved as ONNX: %s", error)
        try:  # weight-only integers keep their size in the .nnz, and reload bit for bit
            return save_nnz(model, out_dir / "model.nnz", example=example)
        except NnzipError as error:  # e.g. dynamic quantization
            # Neither file holds the integers: what is saved below is a float model. The user
            # asked for a quantized one, so this is said where they see it (not at INFO).
            log.warning("the quantized model is saved as a float model, not as integers: ONNX "
                        "refused it (%s) and so did .nnz (%s)", onnx_refusal, error)

    if model_spec(model) is not None:
        try:
            return save_model(model, out_dir / "model")
        except NnzipError as error:  # e.g. a method changed layer shapes: the spec no longer fits
            log.info("saving as torch.export instead of a zoo folder: %s", error)
    return export_model(model, out_dir / "model.pt2", example)
