"""Data-parallel fit: 2 gloo processes give the one-process result (nnzip.core.distributed)."""

from __future__ import annotations

import os
import subprocess
import sys
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


def _prune_then_qat(model, data):
    """The recipe stages whose fine-tuning runs under DDP: masks (prune) and fake-quant (qat)
    are put in place by the stage, then fit wraps the model."""
    from nnzip.pipeline import apply

    options = {"finetune_epochs": 1, "augment": False, "lr": 1e-3}
    model = apply(model, "prune", data, sparsity=0.5, **options).model
    return apply(model, "qat", data, **options).model


def _test_logits(model, data) -> torch.Tensor:
    with torch.no_grad():
        return model(data.test.tensors[0])


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
            fitted = {k: v.clone() for k, v in model.state_dict().items()}
            compressed = _prune_then_qat(model, data)
        torch.save({"state": fitted, "history": result.history, "wrapped": type(model).__name__,
                    "logits": _test_logits(compressed, data)}, folder / f"result{rank}.pt")
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


def test_pruning_masks_and_fake_quant_fine_tune_under_ddp_as_in_one_process(two_process_run,
                                                                           digits):
    _, (rank0, rank1) = two_process_run
    single = _mlp(digits)
    _fit_with_mask(single, digits, None)
    logits = _test_logits(_prune_then_qat(single, digits), digits)
    # Fake-quant rounds the weights: a 1e-6 difference can move a weight to the next step, so
    # outputs are compared, not weights. Measured on the 359 test digits: max |Δlogit| 0.0094
    # (mean 0.0011), no prediction changed; the same run on another shuffle (seed 2: other
    # examples in every step) differs by max 1.07 (mean 0.17) and changes 8 predictions.
    torch.testing.assert_close(rank0["logits"], logits, atol=0.05, rtol=0)
    assert (rank0["logits"].argmax(1) != logits.argmax(1)).sum() <= 1
    assert torch.equal(rank0["logits"], rank1["logits"]), "both ranks compressed alike"


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
    assert command[1:] == ["-m", "nnzip.core.torchrun", "--standalone", "--nproc-per-node=2",
                           "-m", "nnzip.cli", "compress", "--model", "m"]
    with pytest.raises(NnzipError, match="--nproc 1: pass 2 or more"):
        distributed.relaunch_command(1, [])
    from nnzip.cli import _without_nproc

    assert _without_nproc(["train", "--nproc", "2", "--out", "x"]) == ["train", "--out", "x"]
    assert _without_nproc(["train", "--nproc=2", "--seed", "1"]) == ["train", "--seed", "1"]


def test_train_with_nproc_2_runs_on_two_processes_and_only_rank_0_saves_and_prints(tmp_path):
    """The CLI end to end: ``--nproc 2`` re-launches itself through torchrun."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "nnzip.cli", "train", "--arch", "lenet300",
                           "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "m"),
                           "--no-progress", "--nproc", "2"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1, "one result printed, by rank 0"
    assert "OMP_NUM_THREADS" not in done.stderr, "no torchrun banner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors",
                                                                  "spec.json"]


def test_compress_on_a_rank_other_than_0_applies_the_stages_but_measures_and_writes_nothing(
        tmp_path, trained_mlp, digits, monkeypatch):
    import nnzip.pipeline
    from nnzip.pipeline import compress
    from nnzip.recipe import parse_recipe

    def no_measuring(*args, **kwargs):
        raise AssertionError("a rank other than 0 measured the model")

    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    monkeypatch.setattr(nnzip.pipeline, "evaluate", no_measuring)
    recipe = parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "finetune_epochs": 0}}]})
    result = compress(trained_mlp, recipe, digits, out_dir=tmp_path / "out", progress=False)
    weights = [p for name, p in result.model.named_parameters() if name.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01), "the stage ran"
    assert result.report == {} and result.paths == {}
    assert list(tmp_path.iterdir()) == []


def test_nproc_is_refused_where_it_makes_no_sense(capsys):
    from nnzip.cli import main

    assert main(["train", "--arch", "lenet300", "--data", "digits", "--out", "x",
                 "--nproc", "0"]) == 2
    assert "nproc" in capsys.readouterr().err
