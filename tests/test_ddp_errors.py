"""`--nproc N`: an error in the processes reaches the user as one line and exit status 2, not
as torchrun's traceback and failure summary (nnzip.core.torchrun, nnzip.core.distributed)."""

import os
import subprocess
import sys
from pathlib import Path

from nnzip.core import distributed


def test_an_error_in_the_processes_is_one_line_and_exit_status_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # 63 cannot be split over 2 processes: every rank refuses it once it has joined the group.
    done = subprocess.run([sys.executable, "-m", "nnzip.cli", "train", "--arch", "lenet300",
                           "--data", "digits", "--epochs", "1", "--batch-size", "63", "--out",
                           str(tmp_path / "m"), "--no-progress", "--nproc", "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        "error: batch size 63 cannot be shared by 2 processes: pass a batch size divisible by "
        "2 (e.g. 62) or another number of processes"], done.stderr[-3000:]
    assert done.stdout == ""
    assert not (tmp_path / "m").exists()


def test_the_lowest_rank_s_error_line_is_the_one_shown(tmp_path, monkeypatch):
    assert distributed.first_rank_error(tmp_path) is None  # a crash: no line recorded
    monkeypatch.setenv(distributed.RANK_ERRORS_ENV, str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not distributed.record_rank_error("not under torchrun: printed, not recorded")
    monkeypatch.setenv("WORLD_SIZE", "12")
    monkeypatch.setenv("LOCAL_RANK", "0")
    for rank in (10, 2):
        monkeypatch.setenv("RANK", str(rank))
        assert distributed.record_rank_error(f"error of rank {rank}")
    assert distributed.first_rank_error(tmp_path) == "error of rank 2"
