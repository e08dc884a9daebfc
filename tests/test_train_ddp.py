"""Data-parallel fit: 2 gloo processes give the one-process result (nnzip.core.distributed)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnzip.core import distributed
from nnzip.data import load_digits
from nnzip.errors import NnzipError
from nnzip.evaluate.latency import fixed_threads
from nnzip.models import create_model
from nnzip.train import TrainConfig, fit

CONFIG = TrainConfig(epochs=2, batch_size=64, lr=2e-3, patience=None, augment=False, seed=1)


def _mlp(data):
    torch.manual_seed(0)
    return create_model("lenet300", input_shape=data.input_shape, num_classes=data.num_classes)


def _mask(model) -> torch.Tensor:
    """Half of fc1's weights pruned, the same on every rank (a fixed seed)."""
    generator = torch.Generator().manual_seed(5)
    return (torch.rand(model.fc1.weight.shape, generator=generator) > 0.5).float()


def _fit_with_mask(model, data, checkpoint: Path | None):
    mask = _mask(model)
    model.fc1.weight.data *= mask

    def keep_mask(m, step):  # pruning's step hook: masked weights stay zero through training
        m.fc1.weight.data *= mask

    return fit(model, data, CONFIG, step_hook=keep_mask, checkpoint=checkpoint, progress=False)


def _rank_main(rank: int, world: int, folder: str) -> None:
    """One rank: join the gloo group, fit, save what it ended with for the test to compare."""
    folder = Path(folder)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank,
                            world_size=world)
    try:
        with fixed_threads(1):
            data = load_digits(seed=0)
            model = _mlp(data)
            # Each rank names its own checkpoint: a file from rank 1 would show it wrote one.
            result = _fit_with_mask(model, data, folder / f"rank{rank}.ckpt")
        torch.save({"state": model.state_dict(), "history": result.history,
                    "wrapped": type(model).__name__}, folder / f"result{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_run():
    with tempfile.TemporaryDirectory(prefix="nnzip-ddp-") as folder:
        mp.spawn(_rank_main, args=(2, folder), nprocs=2, join=True)
        yield {path.name: path for path in Path(folder).iterdir()}, [
            torch.load(Path(folder) / f"result{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_two_processes_end_with_the_same_weights_as_one_process_with_the_same_global_batch(
        two_process_run, digits):
    _, results = two_process_run
    single = _mlp(digits)
    history = _fit_with_mask(single, digits, None).history
    for key, value in single.state_dict().items():
        # Same examples in every step, gradients averaged: the runs differ only in float
        # rounding (a mean of two half-batch means, summed in another order). Measured: 1.1e-6
        # at most after these 2 epochs (40 Adam steps); 1e-4 leaves room for other CPUs' BLAS,
        # while a wrong shard (other examples per step) moves weights by ~1e-2 (seen: 0.086).
        torch.testing.assert_close(results[0]["state"][key], value, atol=1e-4, rtol=1e-3)
    for ddp_row, row in zip(results[0]["history"], history, strict=True):
        assert ddp_row["train_loss"] == pytest.approx(row["train_loss"], rel=1e-4)
        assert ddp_row["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-9)


def test_every_rank_ends_with_identical_weights_and_the_pruning_mask_holds(two_process_run,
                                                                           digits):
    _, (rank0, rank1) = two_process_run
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    mask = _mask(_mlp(digits))
    assert torch.all(rank0["state"]["fc1.weight"][mask == 0] == 0)
    assert (rank0["state"]["fc1.weight"][mask == 1] != 0).float().mean() > 0.99
    assert rank0["wrapped"] == type(_mlp(digits)).__name__, "fit hands back the unwrapped model"
    assert rank0["history"] == rank1["history"], "both ranks log the global mean loss"


def test_only_rank_0_writes_the_checkpoint(two_process_run):
    files, _ = two_process_run
    assert "rank0.ckpt" in files and "rank1.ckpt" not in files


def test_a_batch_that_the_processes_cannot_share_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert distributed.per_rank_batch_size(64) == 32
    with pytest.raises(NnzipError, match="batch size 65 cannot be shared by 2 processes.*64"):
        distributed.per_rank_batch_size(65)


def test_nproc_relaunches_through_torchrun_on_one_machine():
    command = distributed.relaunch_command(2, ["compress", "--model", "m"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "nnzip.cli", "compress", "--model", "m"]
    with pytest.raises(NnzipError, match="--nproc 1: pass 2 or more"):
        distributed.relaunch_command(1, [])
