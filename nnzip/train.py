"""The one fit / fine-tune loop that every method reuses.

Pruning keeps its masks through a *step hook* (called after every optimizer step), QAT and
distillation change the objective through a *loss hook*. Early stopping watches the validation
split, never the test set; the best weights (by validation accuracy) are restored at the end.
A checkpoint written atomically after every epoch makes training resumable: an interrupted run
loses at most the epoch in progress, and a finished run is returned from its checkpoint at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from nnzip.atomic import atomic_path
from nnzip.core import distributed
from nnzip.core.interrupt import check_interrupt
from nnzip.core.outputs import prediction_rows
from nnzip.data.splits import DataSplits, eval_batch_size
from nnzip.distill.losses import DistillOptions, distillation_loss
from nnzip.errors import NnzipError
from nnzip.stage import Context, Stage

log = logging.getLogger(__name__)

#: ``loss_fn(outputs, targets, inputs) -> scalar``; ``inputs`` lets distillation run its teacher.
LossHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``step_hook(model, global_step)``, called after every optimizer step (e.g. to re-apply masks).
StepHook = Callable[[nn.Module, int], None]

CHECKPOINT_VERSION = 1


class TrainConfig(BaseModel):
    """Options of :func:`fit`; the ``finetune`` stage exposes the same fields in a recipe."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_epochs: int = Field(10, ge=1, description="epochs between LR drops for 'step'")
    gamma: float = Field(0.1, gt=0, le=1, description="LR factor at each 'step' drop")
    batch_size: int = Field(64, ge=1)
    patience: int | None = Field(5, ge=1, description="epochs without val gain before stopping")
    augment: bool = True
    seed: int = 0

    # Not an option (not saved, not compared on resume): the objective a stage chose for the
    # loops it hands this config to, e.g. distillation as the fine-tune loss of pruning or QAT.
    _loss_fn: LossHook | None = PrivateAttr(None)

    def with_loss(self, loss_fn: LossHook | None) -> TrainConfig:
        """A copy whose :func:`fit` runs use ``loss_fn`` unless the caller passes its own.

        This is how a stage's fine-tune objective reaches the loops of other method families
        (pruning schedules, QAT) without their code knowing about it; copies made with
        ``model_copy`` keep it.
        """
        config = self.model_copy()
        config._loss_fn = loss_fn
        return config

    @property
    def loss_fn(self) -> LossHook | None:
        return self._loss_fn


@dataclass
class TrainResult:
    """What happened in :func:`fit`; ``history`` has one row per finished epoch."""

    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor,
                  inputs: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy on the labels (every position of a model that classifies positions,
    see :mod:`nnzip.core.outputs`): the task loss of classification and language modelling."""
    del inputs
    return F.cross_entropy(*prediction_rows(outputs, targets))


def task_loss(data: DataSplits) -> LossHook:
    """The default loss hook of ``data``'s task (:mod:`nnzip.tasks`): cross-entropy for a
    classifier or a language model, ``1 − cos`` to the original's embedding for an encoder."""
    from nnzip.tasks import task_of

    task = task_of(data)
    if task.name == "classify":
        return cross_entropy

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor,
                inputs: torch.Tensor) -> torch.Tensor:
        del inputs
        return task.batch_loss(outputs, targets)

    return loss_fn


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise NnzipError("the model has no trainable parameters: nothing to fit or fine-tune")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_epochs,
                                               gamma=config.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, task=None) -> tuple[float, float]:
    """Mean task loss and validation score of ``model`` over ``loader`` (eval mode, mode
    restored). The score is the task's (:mod:`nnzip.tasks`): accuracy by default (a classifier,
    a language model's next token), the cosine to the original's embedding for an encoder."""
    from nnzip.tasks import TASKS

    task = task or TASKS["classify"]
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total_loss, score, count = 0.0, 0.0, 0
    try:
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            batch_score, batch_count = task.batch_score(outputs, targets)
            total_loss += task.batch_loss(outputs, targets).item() * batch_count
            score += batch_score
            count += batch_count
    finally:
        model.train(was_training)
    if count == 0:
        raise NnzipError("the validation split is empty: use a larger val_fraction")
    return total_loss / count, score / count


def _load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused an object: nothing of it was run
        raise NnzipError(f"checkpoint {path} holds objects other than tensors, which nnzip never "
                         "unpickles: it is not an nnzip checkpoint; delete it to start training "
                         "afresh") from None
    except Exception as exc:  # a truncated or foreign file: say so instead of a torch traceback
        cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise NnzipError(f"checkpoint {path} is corrupt or not an nnzip checkpoint "
                         f"({type(exc).__name__}: {cause}): delete it to start training "
                         "afresh") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise NnzipError(f"checkpoint {path} was written by another nnzip version: delete it to "
                         "start training afresh")
    return state


def _check_checkpoint_fits(path: Path, saved: dict, model: nn.Module) -> None:
    """Refuse a checkpoint of another architecture (or of other sizes) before loading it, naming
    a tensor that differs: torch's own error lists every key, over many lines."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if not isinstance(saved, dict):
        raise NnzipError(f"checkpoint {path} holds no model weights: delete it to start "
                         "training afresh")
    found = {name: tuple(getattr(tensor, "shape", ())) for name, tensor in saved.items()}
    if found == expected:
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    resized = [name for name in expected if name in found and found[name] != expected[name]]
    arch = type(model).__name__
    what = (f"it lacks {len(missing)} of the {arch}'s tensors (e.g. {missing[0]})" if missing
            else f"it has {len(extra)} tensors the {arch} has not (e.g. {extra[0]})" if extra
            else f"it holds {resized[0]} as {list(found[resized[0]])}, the {arch} needs "
                 f"{list(expected[resized[0]])}")
    raise NnzipError(f"checkpoint {path} is of another model: {what}; pass another "
                     "--checkpoint path, or delete it to start afresh")


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(model: nn.Module, data: DataSplits, config: TrainConfig | None = None, *,
        loss_fn: LossHook | None = None, step_hook: StepHook | None = None,
        checkpoint: str | Path | None = None, progress: bool = True,
        description: str = "train") -> TrainResult:
    """Train ``model`` in place on ``data.train``, early-stopping on ``data.val``.

    The loop is deliberately plain (one optimizer, one scheduler, epochs of mini-batches) so that
    the hooks are the only place methods change it. With ``checkpoint`` set, state is saved after
    every epoch and an existing checkpoint is resumed (or, if it finished, simply loaded).

    Inside a process group (torchrun, :mod:`nnzip.core.distributed`) the loop is data-parallel:
    each rank trains on its shard of every global batch of ``config.batch_size`` (DDP averages
    the gradients), so the steps are those of one process; every rank validates on the whole
    validation split and takes the same early-stopping decisions; only rank 0 writes the
    checkpoint and shows progress. ``model`` itself is never wrapped: hooks and the caller see it.
    """
    from nnzip.tasks import task_of

    config = config or TrainConfig()
    data_task = task_of(data)
    loss_fn = loss_fn or config.loss_fn or task_loss(data)
    device = _device_of(model)
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config)
    checkpoint = Path(checkpoint) if checkpoint is not None else None

    start_epoch, best_val, best_epoch, bad_epochs = 0, -math.inf, -1, 0
    best_state = _state_copy(model)
    history: list[dict] = []
    state = _load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        if state["config"] != config.model_dump():
            raise NnzipError(f"checkpoint {checkpoint} was made with other training options: "
                             "delete it or pass the same options to resume")
        _check_checkpoint_fits(checkpoint, state["model"], model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_val = state["epoch"], state["best_val"]
        best_epoch, bad_epochs = state["best_epoch"], state["bad_epochs"]
        best_state, history = state["best_state"], json.loads(state["history"])
        log.info("resuming %s from %s at epoch %d", description, checkpoint, start_epoch)

    finished = state is not None and state.get("finished", False)
    val_loader = data.loader("val", batch_size=eval_batch_size(data))
    epoch = start_epoch
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    # Wrapped here, after the stage built its structure (masks, fake-quant), and only for the
    # forward pass: the state dicts, the hooks and the caller keep using the plain model.
    forward_model = distributed.data_parallel(model)
    main = distributed.is_main_process()
    with Progress(*columns, disable=not progress or finished or not main,
                  transient=False) as bar:
        task = bar.add_task(description, total=config.epochs, completed=start_epoch, status="")
        while not finished and epoch < config.epochs:
            train_loss = _train_one_epoch(model, data, config, epoch, optimizer, loss_fn,
                                          step_hook, device, forward_model)
            scheduler.step()
            val_loss, val_acc = validate(model, val_loader, data_task)
            epoch += 1
            improved = val_acc > best_val
            if improved:
                best_val, best_epoch, bad_epochs = val_acc, epoch, 0
                best_state = _state_copy(model)
            else:
                bad_epochs += 1
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"]})
            finished = config.patience is not None and bad_epochs >= config.patience
            bar.update(task, completed=epoch,
                       status=f"loss {train_loss:.4f}  val {data_task.score_name} "
                              f"{100 * val_acc:.2f}%")
            log.info("%s epoch %d: train loss %.4f, val loss %.4f, val acc %.4f", description,
                     epoch, train_loss, val_loss, val_acc)
            if checkpoint and main:
                _save_checkpoint(checkpoint, {
                    "version": CHECKPOINT_VERSION, "config": config.model_dump(),
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "best_val": best_val,
                    "best_epoch": best_epoch, "bad_epochs": bad_epochs, "best_state": best_state,
                    "history": json.dumps(history),
                    "finished": finished or epoch >= config.epochs})
    stopped_early = epoch < config.epochs
    if best_epoch > 0:
        # Copied after the step hooks ran, so the best state already satisfies them (e.g. masks).
        model.load_state_dict(best_state)
    return TrainResult(epochs_run=epoch, best_epoch=best_epoch,
                       best_val_accuracy=max(best_val, 0.0), stopped_early=stopped_early,
                       history=history)


def _train_loader(data: DataSplits, config: TrainConfig, epoch: int) -> DataLoader:
    """The epoch's mini-batches; in a process group, this rank's share of each global batch.

    The shuffle is seeded per epoch, so a resumed run repeats exactly. In a process group the
    ranks first draw the order one process would visit the examples in (the same DataLoader
    shuffle, on indices), then a ``DistributedSampler`` without shuffle gives rank r entries
    r, r + W, … of it; cut into batches of ``batch_size / W``, the W ranks' step-k batches
    together are exactly step k's batch of one process, and the gradient DDP averages is the
    one-process gradient (a mean over the same examples) up to rounding.
    """
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    drop_last = len(data.train) > config.batch_size
    if not distributed.is_distributed():
        return DataLoader(data.train, batch_size=config.batch_size, shuffle=True,
                          generator=generator, drop_last=drop_last)
    one_process_order = torch.cat(list(DataLoader(
        range(len(data.train)), batch_size=config.batch_size, shuffle=True, generator=generator,
        drop_last=drop_last))).tolist()
    sampler = DistributedSampler(Subset(data.train, one_process_order),
                                 num_replicas=distributed.world_size(), rank=distributed.rank(),
                                 shuffle=False, drop_last=True)
    return DataLoader(Subset(data.train, one_process_order),
                      batch_size=distributed.per_rank_batch_size(config.batch_size),
                      sampler=sampler, drop_last=drop_last)


def _train_one_epoch(model: nn.Module, data: DataSplits, config: TrainConfig, epoch: int,
                     optimizer: torch.optim.Optimizer, loss_fn: LossHook,
                     step_hook: StepHook | None, device: torch.device,
                     forward_model: nn.Module | None = None) -> float:
    loader = _train_loader(data, config, epoch)
    # The augmentation is seeded per epoch too; in one process it goes on from the shuffle's
    # generator (as it always did), in a process group each rank draws its own.
    generator = (loader.generator if not distributed.is_distributed() else
                 torch.Generator().manual_seed(config.seed * 100_003 + epoch
                                               + 7_919 * distributed.rank()))
    forward_model = forward_model if forward_model is not None else model
    model.train()
    total, count = 0.0, 0
    steps_per_epoch = len(loader)
    for step, (inputs, targets) in enumerate(loader):
        check_interrupt()
        if config.augment and data.augment is not None:
            inputs = data.augment(inputs, generator)
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        outputs = forward_model(inputs)
        loss = loss_fn(outputs, targets, inputs)
        if not torch.isfinite(loss):
            raise NnzipError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}: "
                             "lower the learning rate")
        loss.backward()
        optimizer.step()
        if step_hook is not None:
            step_hook(model, epoch * steps_per_epoch + step)
        total += loss.item() * len(targets)
        count += len(targets)
    return distributed.mean_over_ranks(total, count)


#: ``batch_loss(model, batch) -> scalar``: the objective of :func:`fit_batches`, which owns the
#: forward pass (pairs of sentences, a teacher's embeddings, keyword inputs, ...).
BatchLoss = Callable[[nn.Module, object], torch.Tensor]


def fit_batches(model: nn.Module, batches: list, batch_loss: BatchLoss,
                config: TrainConfig | None = None, *, step_hook: StepHook | None = None,
                progress: bool = False, description: str = "train") -> list[float]:
    """Train ``model`` in place on prepared ``batches`` for ``config.epochs`` epochs.

    The loop of :func:`fit` (same optimizer, schedule, seeding and step hook) for tasks that are
    not classification over a :class:`DataSplits`, e.g. sentence embeddings: ``batch_loss`` runs
    the model on a batch of any shape. The batch order is shuffled per epoch with ``config.seed``;
    there is no validation split, so no early stopping and no best-epoch restore (the caller
    evaluates). The model is left in eval mode. Returns the mean training loss of every epoch.
    """
    config = config or TrainConfig()
    if not batches:
        raise NnzipError("fit_batches needs at least one training batch")
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config)
    losses = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    model.train()
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(description, total=config.epochs, status="")
        for epoch in range(config.epochs):
            generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            order = torch.randperm(len(batches), generator=generator).tolist()
            total = 0.0
            for step, index in enumerate(order):
                check_interrupt()
                optimizer.zero_grad(set_to_none=True)
                loss = batch_loss(model, batches[index])
                if not torch.isfinite(loss):
                    raise NnzipError(f"training diverged (loss {loss.item()}) at epoch "
                                     f"{epoch + 1}: lower the learning rate")
                loss.backward()
                optimizer.step()
                if step_hook is not None:
                    step_hook(model, epoch * len(batches) + step)
                total += loss.item()
            scheduler.step()
            losses.append(total / len(batches))
            bar.update(task, completed=epoch + 1, status=f"loss {losses[-1]:.4f}")
            log.info("%s epoch %d: train loss %.4f", description, epoch + 1, losses[-1])
    model.eval()
    return losses


#: Training recipes for the zoo on MNIST-sized data (measured in benchmarks/results/zoo_mnist.md)
#: and, for ``gpt``, on the STS-B sentences of ``stsb-lm`` (benchmarks/results/lm_stsb.md): 2 000
#: blocks of 64 tokens, so small batches give the from-scratch transformer enough steps.
DEFAULT_TRAINING: dict[str, TrainConfig] = {
    "lenet300": TrainConfig(epochs=60, lr=1e-3, patience=15),
    "lenet5": TrainConfig(epochs=20, lr=1e-3, patience=8),
    "resnet8": TrainConfig(epochs=15, lr=2e-3, patience=5),
    "resnet20": TrainConfig(epochs=15, lr=2e-3, patience=5),
    "mobilenetv2": TrainConfig(epochs=15, lr=2e-3, patience=5),
    "gpt": TrainConfig(epochs=8, lr=1e-3, batch_size=16, patience=2, augment=False),
    # A ViT learns slowly from 4 500 digits (nnzip/models/vit.py has what was tried): the
    # cosine schedule runs to its end, with no early stop on the 500 noisy validation digits.
    "vit": TrainConfig(epochs=60, lr=1e-3, patience=None),
}


def train_zoo_model(arch: str, data: DataSplits, config: TrainConfig | None = None, *,
                    cache_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """A trained zoo model, taken from ``cache_dir`` when the same training was done before.

    The cache key covers the architecture, the data (name, sizes, shape) and every training option,
    so a changed option trains afresh instead of silently reusing stale weights.
    """
    from nnzip.models import create_model, load_model, save_model

    config = config or DEFAULT_TRAINING.get(arch, TrainConfig())
    summary = data.summary()
    if summary["input_dtype"] == "float32":
        # Every key made before the dtype was reported meant float32: those caches stay valid.
        del summary["input_dtype"]
    key_source = json.dumps({"arch": arch, "data": summary, "train": config.model_dump()},
                            sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    target = Path(cache_dir) / f"{arch}-{data.name}-{key}" if cache_dir else None
    if target is not None and (target / "spec.json").exists():
        log.info("using cached %s from %s", arch, target)
        return load_model(target)
    torch.manual_seed(config.seed)
    model = create_model(arch, input_shape=data.input_shape, num_classes=data.num_classes)
    checkpoint = target.with_name(target.name + ".ckpt") if target is not None else None
    result = fit(model, data, config, checkpoint=checkpoint, progress=progress,
                 description=f"train {arch}")
    if target is not None:
        save_model(model, target, extra={"training": config.model_dump(),
                                         "result": asdict(result)})
        checkpoint.unlink(missing_ok=True)
    return model


class FinetuneOptions(Stage):
    """The fine-tune options every training stage spells the same way in a recipe.

    ``finetune_epochs`` defaults to the pipeline's budget, and early stopping is off (the budget
    is spent, the best validation epoch is kept).
    """

    finetune_epochs: int | None = Field(None, ge=0)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    augment: bool = True

    def finetune_budget(self, context: Context) -> int:
        return context.finetune_epochs if self.finetune_epochs is None else self.finetune_epochs

    def train_config(self, context: Context, epochs: int | None = None) -> TrainConfig:
        """The :class:`TrainConfig` of these options (cross-entropy loss)."""
        return TrainConfig(epochs=self.finetune_budget(context) if epochs is None else epochs,
                           optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                           batch_size=self.batch_size, augment=self.augment, patience=None,
                           seed=context.seed)


class FinetunedStage(FinetuneOptions):
    """Base of the stages that compress and then recover accuracy with :func:`fit`.

    ``distill: {temperature, alpha, targets}`` makes the recovery a distillation from
    ``context.teacher`` (by default the model before compression) instead of plain
    cross-entropy, for every stage built on this class (prune, prune_channels, qat, svd, ...).
    """

    distill: DistillOptions | None = None

    def finetune_config(self, context: Context, epochs: int | None = None) -> TrainConfig:
        config = self.train_config(context, epochs)
        if self.distill is None:
            return config
        if context.teacher is None:
            raise NnzipError(f"stage {self.kind!r} fine-tunes by distillation but there is no "
                             "teacher: run it in a pipeline (the model before compression is "
                             "the teacher) or pass Context(teacher=...)")
        from nnzip.tasks import task_of

        return config.with_loss(distillation_loss(context.teacher, self.distill,
                                                  task_of(context.data)))


class Finetune(Stage):
    """Recipe stage ``finetune``: train the current model further with the shared loop.

    ``epochs`` defaults to the pipeline's fine-tune budget; the loss is cross-entropy (methods
    that need another loss run the loop with their own hook).
    """

    kind = "finetune"

    epochs: int | None = Field(None, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    batch_size: int = Field(64, ge=1)
    patience: int | None = Field(None, ge=1)
    augment: bool = True

    def train_config(self, context: Context) -> TrainConfig:
        options = self.model_dump()
        options["epochs"] = context.finetune_epochs if self.epochs is None else self.epochs
        return TrainConfig(**options, seed=context.seed)

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        fit(model, context.data, self.train_config(context), progress=context.progress,
            description="finetune")
        return model
