"""Data-parallel fine-tuning on several processes: ``torch.distributed`` DDP, gloo on CPU.

The processes are started by torchrun (``torchrun --nproc-per-node 2 -m nnzip.cli compress …``,
or ``nnzip compress --nproc 2 …``, which re-launches itself through ``torch.distributed.run``).
Every process runs the whole command on the same data and the same seed, so the stages that do
not train (pruning masks, quantizer set-up, clustering) come out the same in each; only the
training loop of :func:`nnzip.train.fit` is shared out: each rank trains on its shard of every
global batch (a ``DistributedSampler``) and DDP averages the gradients, so every rank takes the
same optimizer step and all end with the same weights. Only rank 0 measures and writes outputs,
reports and checkpoints (:func:`is_main_process`); the others wait at the next collective.
"""

from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from nnzip.errors import NnzipError

#: How long a rank waits for the others at a collective: rank 0 measures the model (latency,
#: robustness) after every stage while the others wait, which on a large model takes long.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=3)


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun (``torch.distributed.run``) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def init_from_environment() -> bool:
    """Join the process group torchrun set up (gloo: the CPU backend); False when there is none.

    Safe to call twice. torchrun's environment (``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE``…) says
    where rank 0 listens, so nothing here is configured by hand.
    """
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return True


def shutdown() -> None:
    """Leave the process group (after a last barrier, so no rank exits while others still send)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def relaunch_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``nnzip argv`` on ``nproc`` processes through torchrun (one machine;
    ``--standalone`` picks a free port for the rendezvous), by :mod:`nnzip.core.torchrun`: the
    same launcher, without its failure summary."""
    if nproc < 2:
        raise NnzipError(f"--nproc {nproc}: pass 2 or more processes, or leave it out")
    return [sys.executable, "-m", "nnzip.core.torchrun", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "nnzip.cli", *argv]


#: Set by ``nnzip … --nproc N`` for its ranks: the folder where a rank writes its error line
#: instead of printing it, so that the user sees it once (printed by the parent).
RANK_ERRORS_ENV = "NNZIP_RANK_ERRORS"


def record_rank_error(line: str) -> bool:
    """Under ``--nproc``, write this rank's error line for the parent to print; False (print it
    yourself) in a process that no ``nnzip --nproc`` started, e.g. under a user's torchrun."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder or not launched_by_torchrun():
        return False
    from pathlib import Path

    from nnzip.atomic import write_text

    write_text(Path(folder) / f"rank{os.environ.get('RANK', '0')}.txt", line)
    return True


def first_rank_error(folder: str | os.PathLike) -> str | None:
    """The error line of the lowest rank that wrote one (every rank usually meets the same
    error: it is shown once), or None when no rank did (a crash)."""
    from pathlib import Path

    lines = sorted(Path(folder).glob("rank*.txt"),
                   key=lambda path: int(path.stem.removeprefix("rank") or 0))
    return lines[0].read_text() if lines else None


def per_rank_batch_size(batch_size: int) -> int:
    """The batch each rank trains on so that the *global* batch stays ``batch_size``: the run
    then takes the same optimizer steps as one process would."""
    ranks = world_size()
    if batch_size % ranks:
        divisible = max(ranks, batch_size - batch_size % ranks)
        raise NnzipError(f"batch size {batch_size} cannot be shared by {ranks} processes: pass "
                         f"a batch size divisible by {ranks} (e.g. {divisible}) or another "
                         "number of processes")
    return batch_size // ranks


def data_parallel(model: nn.Module) -> nn.Module:
    """``model`` wrapped for DDP in a process group, or ``model`` itself in one process.

    Wrap it once its structure is final (after pruning's surgery, after fake-quant is in place):
    DDP broadcasts rank 0's parameters and buffers and hooks the parameters that exist now.
    ``static_graph``: the fit loop runs the same graph every step, and a stage may leave
    trainable parameters out of it (e.g. a quantizer that is off), on which DDP would otherwise
    wait forever; unlike ``find_unused_parameters`` it does not search the graph every step
    (nor warn on every rank that it found nothing).
    """
    if not is_distributed():
        return model
    return nn.parallel.DistributedDataParallel(model, static_graph=True)


def mean_over_ranks(total: float, count: int) -> float:
    """``sum(total) / sum(count)`` over all ranks (e.g. the epoch's mean training loss)."""
    if not is_distributed():
        return total / max(count, 1)
    sums = torch.tensor([total, float(count)], dtype=torch.float64)
    dist.all_reduce(sums)
    return float(sums[0] / max(sums[1].item(), 1.0))
