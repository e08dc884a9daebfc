"""When to prune: one-shot, iterative with fine-tuning between steps, or gradual during training.

Every schedule takes a *pruner*, ``pruner(model, sparsity, keep) -> masks`` (prune ``model`` in
place to ``sparsity``, never reviving weights that ``keep`` pruned), so the schedule knows nothing
about the criterion or the scope. Fine-tuning always runs :func:`nnzip.train.fit` with a step hook
that keeps the masks (and, for gradual pruning, moves them).

- one-shot: prune once, then fine-tune (Han et al. 2015 prune-then-retrain, a single round).
- iterative: ``steps`` rounds of prune + fine-tune, sparsity rising linearly or geometrically
  (Han et al. 2015, §3.3 "Iterative Pruning").
- gradual: the cubic schedule of Zhu & Gupta (2017, "To prune, or not to prune"):
  ``s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³``, masks recomputed every ``Δt`` optimizer steps
  inside the training loop, then a recovery fine-tune at the final masks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from nnzip.data.splits import DataSplits
from nnzip.errors import NnzipError
from nnzip.prune.masks import Masks, apply_masks, check_sparsity, mask_hook
from nnzip.prune.unstructured import prune_unstructured
from nnzip.train import TrainConfig, fit

#: ``pruner(model, sparsity, keep) -> masks``: prune in place, keeping ``keep``'s zeros pruned.
Pruner = Callable[[nn.Module, float, Masks | None], Masks]
Spacing = Literal["geometric", "linear"]


def magnitude_pruner(model: nn.Module, sparsity: float, keep: Masks | None) -> Masks:
    """The default pruner: global magnitude over every weight (tied tensors once)."""
    return prune_unstructured(model, sparsity, keep=keep)


def cubic_sparsity(step: int, final_sparsity: float, *, end_step: int,
                   initial_sparsity: float = 0.0, begin_step: int = 0,
                   frequency: int = 1) -> float:
    """Zhu & Gupta (2017): ``s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³`` with ``nΔt = end − begin``.

    ``t`` is rounded down to the last update (a multiple of ``frequency`` = Δt after
    ``begin_step`` = t0), so the sparsity is a staircase; it is ``s_i`` before t0 and ``s_f`` from
    ``end_step`` on. Pruning is fast at first, while redundant weights abound, and slows down.
    """
    if end_step <= begin_step:
        raise NnzipError(f"cubic schedule needs end_step > begin_step, got {begin_step} → "
                         f"{end_step}")
    if frequency < 1:
        raise NnzipError(f"cubic schedule frequency (Δt) must be >= 1 step, got {frequency}")
    if step <= begin_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    last_update = begin_step + (step - begin_step) // frequency * frequency
    progress = (last_update - begin_step) / (end_step - begin_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def iterative_sparsities(final_sparsity: float, steps: int,
                         spacing: Spacing = "geometric") -> list[float]:
    """The sparsity after each of ``steps`` rounds, ending exactly at ``final_sparsity``.

    ``linear`` adds the same fraction each round; ``geometric`` removes the same fraction of the
    *remaining* weights each round (density ``(1 − s_f)^{k/steps}``), gentler near the end.
    """
    final_sparsity = check_sparsity(final_sparsity, "final sparsity")
    if steps < 1:
        raise NnzipError(f"iterative pruning needs at least one step, got {steps}")
    if spacing == "linear":
        values = [final_sparsity * k / steps for k in range(1, steps + 1)]
    elif spacing == "geometric":
        values = [1.0 - (1.0 - final_sparsity) ** (k / steps) for k in range(1, steps + 1)]
    else:
        raise NnzipError(f"unknown sparsity spacing {spacing!r}: use 'geometric' or 'linear'")
    values[-1] = final_sparsity
    return values


def finetune_masked(model: nn.Module, data: DataSplits, masks: Masks, config: TrainConfig | None,
                    *, progress: bool = False, description: str = "finetune pruned") -> None:
    """Fine-tune with ``fit``, the masks re-applied after every optimizer step."""
    if config is None or config.epochs == 0:
        return
    fit(model, data, config, step_hook=mask_hook(masks), progress=progress,
        description=description)


def oneshot_prune(model: nn.Module, data: DataSplits, sparsity: float,
                  config: TrainConfig | None = None, *, pruner: Pruner = magnitude_pruner,
                  progress: bool = False) -> Masks:
    """Prune once to ``sparsity``, then fine-tune with the masks kept (``config=None``: don't)."""
    masks = pruner(model, check_sparsity(sparsity), None)
    finetune_masked(model, data, masks, config, progress=progress)
    return masks


def iterative_prune(model: nn.Module, data: DataSplits, final_sparsity: float,
                    config: TrainConfig | None = None, *, steps: int = 5,
                    spacing: Spacing = "geometric", pruner: Pruner = magnitude_pruner,
                    progress: bool = False) -> Masks:
    """``steps`` rounds of prune + fine-tune (``config`` per round) up to ``final_sparsity``."""
    masks: Masks | None = None
    targets = iterative_sparsities(final_sparsity, steps, spacing)
    for index, sparsity in enumerate(targets, start=1):
        masks = pruner(model, sparsity, masks)
        finetune_masked(model, data, masks, config, progress=progress,
                        description=f"prune {index}/{steps} ({100 * sparsity:.1f}%)")
    return masks


def _steps_per_epoch(data: DataSplits, batch_size: int) -> int:
    # Mirrors fit(): the last partial batch is dropped when there is more than one batch.
    samples = len(data.train)
    return samples // batch_size if samples > batch_size else 1


def gradual_prune(model: nn.Module, data: DataSplits, final_sparsity: float,
                  config: TrainConfig, *, pruner: Pruner = magnitude_pruner,
                  initial_sparsity: float = 0.0, updates: int = 10, ramp_fraction: float = 0.5,
                  progress: bool = False) -> Masks:
    """Zhu & Gupta (2017) gradual pruning inside ``fit``, then a recovery fine-tune.

    The first ``ramp_fraction`` of ``config.epochs`` trains at a constant learning rate while a
    step hook raises the sparsity from ``initial_sparsity`` to ``final_sparsity`` in ``updates``
    mask updates spaced Δt steps apart (cubic schedule). The rest of the epochs fine-tune with
    the final masks under ``config``'s own schedule, keeping the best validation epoch.
    """
    final_sparsity = check_sparsity(final_sparsity, "final sparsity")
    initial_sparsity = check_sparsity(initial_sparsity, "initial sparsity")
    if updates < 1:
        raise NnzipError(f"gradual pruning needs at least one mask update, got {updates}")
    if not 0.0 < ramp_fraction <= 1.0:
        raise NnzipError(f"ramp_fraction must be in (0, 1], got {ramp_fraction}")
    if config.epochs < 1:
        raise NnzipError("gradual pruning happens during training: give it at least 1 epoch")
    ramp_epochs = max(1, round(ramp_fraction * config.epochs))
    ramp_steps = ramp_epochs * _steps_per_epoch(data, config.batch_size)
    updates = min(updates, ramp_steps)
    frequency = ramp_steps // updates
    end_step = frequency * updates
    masks = pruner(model, initial_sparsity, None)
    last_state: dict[str, torch.Tensor] = {}

    def prune_on_schedule(net: nn.Module, step: int) -> None:
        done = step + 1  # optimizer steps taken so far
        if done % frequency == 0 and done <= end_step:
            sparsity = cubic_sparsity(done, final_sparsity, end_step=end_step,
                                      initial_sparsity=initial_sparsity, frequency=frequency)
            masks.update(pruner(net, sparsity, masks))
        else:
            apply_masks(net, masks)
        if done == ramp_steps:
            # fit() restores its best validation epoch, which during a ramp is a denser one;
            # the ramp's result is where it ends.
            last_state.update(copy.deepcopy(net.state_dict()))

    ramp_config = config.model_copy(update={"epochs": ramp_epochs, "schedule": "constant",
                                            "patience": None})
    fit(model, data, ramp_config, step_hook=prune_on_schedule, progress=progress,
        description=f"gradual prune → {100 * final_sparsity:.1f}%")
    if not last_state:
        raise RuntimeError("gradual pruning did not reach the end of its ramp")
    model.load_state_dict(last_state)
    rest = config.epochs - ramp_epochs
    if rest > 0:
        finetune_masked(model, data, masks, config.model_copy(update={"epochs": rest}),
                        progress=progress, description="recover pruned")
    return masks

