"""Your input is never overwritten, and an output is complete or absent (issue 15, items 2 and 5).

Every --out is checked before any work: a refusal is one line, exit status 2, before data is
loaded or anything is measured (the work functions are replaced by ones that fail the test).
A run replaces --out as a whole only when it succeeds; Ctrl-C keeps the finished stages, marked
as interrupted, in OUT.interrupted and leaves --out as it was.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nnzip.data
import nnzip.pipeline
import nnzip.runtime
import nnzip.train
from nnzip.cli import build_parser, check_outputs, main
from nnzip.data import load_digits
from nnzip.errors import NnzipError
from nnzip.models import create_model, save_model
from nnzip.models.io import export_model
from nnzip.recipe import parse_recipe

FAST = ["--repeats", "2", "--robustness-samples", "50", "--no-progress"]
REPO = Path(__file__).resolve().parents[2]


class WorkStarted(BaseException):
    """Raised by a work function that a refused command must never reach."""


@pytest.fixture
def no_work(monkeypatch):
    """Loading data, measuring, training or deploying fails the test: a refusal comes first."""
    def started(*args, **kwargs):
        raise WorkStarted("work started before --out was checked")

    monkeypatch.setattr(nnzip.data, "load_dataset", started)
    monkeypatch.setattr(nnzip.pipeline, "evaluate", started)
    monkeypatch.setattr(nnzip.train, "fit", started)
    monkeypatch.setattr(nnzip.runtime, "deploy", started)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    """An (untrained) LeNet-300-100 for 8×8 digits saved once as a model folder, .nnz and .pt2."""
    data = load_digits(seed=0)
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=data.input_shape,
                         num_classes=data.num_classes).eval()
    example = data.test.tensors[0][:2]
    folder = tmp_path_factory.mktemp("models")
    return {"folder": save_model(model, folder / "model"),
            "nnz": save_model(model, folder / "model.nnz", example=example),
            "pt2": export_model(model, folder / "model.pt2", example)}


def _save(kind: str, saved_models: dict[str, Path], folder: Path) -> Path:
    """A copy, in ``folder``, of the model saved as a model folder, an .nnz or a .pt2 file."""
    source = saved_models[kind]
    folder.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        return Path(shutil.copytree(source, folder / source.name))
    return Path(shutil.copy2(source, folder / source.name))


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def _refused(capsys, argv: list[str], *names: str) -> str:
    """``argv`` exits with status 2 and one error line naming each of ``names``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for name in names:
        assert name in err, err
    return err


def _command(command: str, model: Path, out: Path, recipe: Path) -> list[str]:
    extra = {"compress": ["--recipe", str(recipe)], "eval": [], "deploy": []}[command]
    return [command, "--model", str(model), "--out", str(out), "--data", "digits", *extra]


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text("stages:\n  - prune: {sparsity: 0.5, finetune_epochs: 0}\n")
    return path


# --- 1. the reproduction: compress --model D/model --out D replaced the dense original --------

def test_compress_never_overwrites_its_own_input(tmp_path, saved_models, recipe, capsys):
    model_dir = _save("folder", saved_models, tmp_path / "D")
    before = _hashes(tmp_path / "D")
    _refused(capsys, ["compress", "--model", str(model_dir), "--recipe", str(recipe), "--data",
                      "digits", "--out", str(tmp_path / "D"), *FAST],
             str(model_dir), str(tmp_path / "D"))
    assert _hashes(tmp_path / "D") == before


# --- 4. the data-safety matrix: --model equal to / inside / parent of --out ------------------

@pytest.mark.parametrize("command", ["compress", "eval", "deploy"])
@pytest.mark.parametrize("kind", ["folder", "nnz", "pt2"])
@pytest.mark.parametrize("relation", ["equal", "out_contains_model", "out_inside_model"])
def test_out_over_the_input_model_is_refused_before_any_work(
        tmp_path, saved_models, recipe, capsys, no_work, command, kind, relation):
    model = _save(kind, saved_models, tmp_path / "D")
    out = {"equal": model, "out_contains_model": tmp_path / "D",
           "out_inside_model": model / "results"}[relation]
    before = _hashes(tmp_path / "D")
    # Inside a model file is a path under a file: refused as such, naming the file.
    _refused(capsys, _command(command, model, out, recipe), str(model))
    assert _hashes(tmp_path / "D") == before


@pytest.mark.parametrize("command", ["eval", "deploy"])
@pytest.mark.parametrize("relation", ["equal", "out_contains_reference"])
def test_out_over_the_reference_is_refused(tmp_path, saved_models, recipe, capsys, no_work,
                                           command, relation):
    model = _save("nnz", saved_models, tmp_path / "M")
    reference = _save("folder", saved_models, tmp_path / "R")
    out = reference if relation == "equal" else tmp_path / "R"
    before = _hashes(tmp_path / "R")
    _refused(capsys, [*_command(command, model, out, recipe), "--reference", str(reference)],
             "--reference", str(reference))
    assert _hashes(tmp_path / "R") == before


def test_out_holding_the_data_recipe_checkpoint_or_cache_is_refused(tmp_path, saved_models,
                                                                   capsys, no_work):
    model = _save("nnz", saved_models, tmp_path / "M")
    data = tmp_path / "D" / "x.npz"
    data.parent.mkdir()
    data.write_bytes(b"not read: refused before any work")
    recipe = tmp_path / "R" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("stages:\n  - prune: {sparsity: 0.5}\n")
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    cases = [
        (["eval", "--model", str(model), "--data", str(data), "--out", str(data.parent)],
         "--data"),
        (["eval", "--model", str(model), "--data", str(images), "--out", str(images / "dog")],
         "--data"),
        (["compress", "--model", str(model), "--recipe", str(recipe), "--out",
          str(recipe.parent)], "--recipe"),
        (["train", "--arch", "lenet300", "--data", "digits", "--checkpoint",
          str(tmp_path / "T" / "ck.pt"), "--out", str(tmp_path / "T")], "--checkpoint"),
        (["demo", "--cache-dir", str(cache), "--out", str(cache)], "--cache-dir"),
    ]
    before = _hashes(tmp_path)
    for argv, option in cases:
        _refused(capsys, argv, option)
    assert _hashes(tmp_path) == before


def test_out_beside_the_data_file_is_allowed(tmp_path):
    data = tmp_path / "x.npz"
    data.write_bytes(b"")
    args = build_parser().parse_args(["eval", "--model", "m.nnz", "--data", str(data),
                                      "--out", str(tmp_path / "results")])
    check_outputs(args)  # does not raise


def test_report_never_rerenders_into_its_own_folder(tmp_path, capsys, no_work):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "report.json").write_text("{}")
    (folder / "model.nnz").write_bytes(b"the compressed model")
    before = _hashes(folder)
    _refused(capsys, ["report", str(folder / "report.json"), "--out", str(folder)],
             str(folder))
    assert _hashes(folder) == before


# --- 4. an --out that cannot be written: refused before any work -------------------------------

COMMANDS = {
    "train": ["train", "--arch", "lenet300", "--data", "digits"],
    "eval": ["eval", "--model", "MODEL", "--data", "digits"],
    "compress": ["compress", "--model", "MODEL", "--recipe", "RECIPE", "--data", "digits"],
    "deploy": ["deploy", "--model", "MODEL", "--data", "digits"],
    "demo": ["demo", "--data", "digits"],
    "report": ["report", "REPORT"],
    # A search folder is resumed, not replaced (nnzip.search.runner); the refusals below hold
    # for it as for the others, and an unrelated folder is refused as "not a search".
    "search": ["search", "--model", "MODEL", "--space", "SPACE", "--data", "digits"],
}


def _argv(command: str, tmp_path: Path, out: Path) -> list[str]:
    names = {"MODEL": str(tmp_path / "model.nnz"), "RECIPE": str(tmp_path / "recipe.yaml"),
             "REPORT": str(tmp_path / "report.json"), "SPACE": str(tmp_path / "space.yaml")}
    return [names.get(arg, arg) for arg in COMMANDS[command]] + ["--out", str(out)]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_that_is_a_file_or_under_a_file_is_refused_before_any_work(tmp_path, capsys,
                                                                       no_work, command):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    started = time.perf_counter()
    _refused(capsys, _argv(command, tmp_path, a_file), str(a_file))
    _refused(capsys, _argv(command, tmp_path, a_file / "results"), str(a_file))
    assert time.perf_counter() - started < 1.0
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_in_a_folder_that_cannot_be_written_is_refused(tmp_path, capsys, no_work,
                                                           monkeypatch, command):
    # Mocked: as root (as CI may run) a read-only folder is still writable.
    locked = tmp_path / "locked"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw:
                        Path(path) != locked and real_access(path, mode, **kw))
    locked.mkdir()
    _refused(capsys, _argv(command, tmp_path, locked / "new" / "results"), str(locked),
             "permission denied")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root can write into a read-only folder")
def test_out_in_a_really_read_only_folder_is_refused(tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(capsys, _argv("eval", tmp_path, locked / "results"), str(locked))
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("command", ["eval", "compress", "deploy", "train", "search"])
def test_an_unrelated_folder_is_never_replaced(tmp_path, capsys, no_work, command):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    _refused(capsys, _argv(command, tmp_path, mine), str(mine), "not empty")
    assert (mine / "holiday.jpg").read_bytes() == b"\xff\xd8 a photo"


def test_train_replaces_only_an_nnz_file_it_wrote(tmp_path, capsys, no_work):
    other = tmp_path / "model.nnz"
    other.write_bytes(b"not an nnz file")
    _refused(capsys, ["train", "--arch", "lenet300", "--out", str(other)], str(other))
    assert other.read_bytes() == b"not an nnz file"


# --- 2. a finished run replaces --out as a whole, and never touches the input -----------------

def _fake_finished_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "report.json").write_text('{"old": true}')
    (folder / "report.html").write_text("old")
    (folder / "model.nnz").write_bytes(b"a stale model of an earlier run")


def test_rerun_replaces_the_folder_whole_and_leaves_the_input_identical(
        tmp_path, saved_models, recipe, capsys):
    model_dir = _save("folder", saved_models, tmp_path / "D")
    out = tmp_path / "D" / "compressed"  # beside the input, in the same folder: allowed
    _fake_finished_run(out)
    before = _hashes(model_dir)
    assert main(["compress", "--model", str(model_dir), "--recipe", str(recipe), "--data",
                 "digits", "--out", str(out), *FAST]) == 0
    assert _hashes(model_dir) == before
    assert sorted(p.name for p in out.iterdir()) == ["model", "report.html", "report.json",
                                                     "report.md"]  # no stale model.nnz
    assert [m["stage"] for m in json.loads((out / "report.json").read_text())["models"]] == [
        "baseline", "prune"]
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["compressed", "model"]
    assert str(out / "report.html") in capsys.readouterr().out.replace("\n", "")


# --- 3. interrupts and crashes ------------------------------------------------------------------

def _interrupt_stages(monkeypatch, error: BaseException):
    def interrupted(*args, **kwargs):
        raise error

    monkeypatch.setattr(nnzip.pipeline, "_run_stage", interrupted)


def test_ctrl_c_after_the_baseline_keeps_it_beside_an_untouched_out(
        tmp_path, saved_models, recipe, capsys, monkeypatch):
    model = _save("nnz", saved_models, tmp_path)
    out = tmp_path / "results"
    _fake_finished_run(out)
    before = _hashes(out)
    _interrupt_stages(monkeypatch, KeyboardInterrupt())
    assert main(["compress", "--model", str(model), "--recipe", str(recipe), "--data", "digits",
                 "--out", str(out), *FAST]) == 130
    partial = tmp_path / "results.interrupted"
    err = capsys.readouterr().err
    assert str(partial) in err and f"{out} is unchanged" in err, err
    assert _hashes(out) == before
    assert sorted(p.name for p in partial.iterdir()) == ["report.html", "report.json",
                                                         "report.md"]
    report = json.loads((partial / "report.json").read_text())
    assert [m["stage"] for m in report["models"]] == ["baseline"]
    assert report["interrupted"] == {"measured": ["baseline"], "not_measured": ["prune"],
                                     "model_saved": False}
    line = "Interrupted (Ctrl-C): measured baseline; not measured prune"
    assert line in (partial / "report.md").read_text()
    assert line in (partial / "report.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nnz", "recipe.yaml",
                                                          "results", "results.interrupted"]


def test_ctrl_c_before_anything_finished_leaves_nothing(tmp_path, saved_models, recipe, capsys,
                                                       monkeypatch):
    model = _save("nnz", saved_models, tmp_path)
    out = tmp_path / "results"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nnzip.pipeline, "evaluate", interrupted)
    assert main(["eval", "--model", str(model), "--data", "digits", "--out", str(out),
                 *FAST]) == 130
    assert "interrupted before any result was finished" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nnz", "recipe.yaml"]


def test_a_failing_stage_leaves_the_previous_folder_untouched(tmp_path, saved_models, recipe,
                                                             capsys, monkeypatch):
    model = _save("nnz", saved_models, tmp_path)
    out = tmp_path / "results"
    _fake_finished_run(out)
    before = _hashes(out)
    _interrupt_stages(monkeypatch, NnzipError("the stage failed"))
    _refused(capsys, ["compress", "--model", str(model), "--recipe", str(recipe), "--data",
                      "digits", "--out", str(out), *FAST], "the stage failed")
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nnz", "recipe.yaml", "results"]


@pytest.mark.slow  # a fresh interpreter (~5 s of imports here) measures the baseline first
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_sigint_to_a_running_compress_keeps_consistent_partial_results(tmp_path, saved_models,
                                                                      signum, status):
    # SIGTERM (kill, a scheduler) takes Ctrl-C's path; the status says which signal it was.
    model = _save("nnz", saved_models, tmp_path)
    recipe = tmp_path / "slow.yaml"
    recipe.write_text("stages:\n  - finetune: {epochs: 1000}\n")  # runs until interrupted
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "nnzip.cli", "compress", "--model", str(model), "--recipe",
         str(recipe), "--data", "digits", "--out", str(out), "--work-threads", "1", *FAST],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".results.*.tmp/report.json")):  # the baseline is written
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the baseline was never written"
            time.sleep(0.1)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == status, err
    assert "results.interrupted" in err
    assert not out.exists()
    partial = tmp_path / "results.interrupted"
    assert sorted(p.name for p in partial.iterdir()) == ["report.html", "report.json",
                                                         "report.md"]
    assert json.loads((partial / "report.json").read_text())["interrupted"]["measured"] == [
        "baseline"]


# --- the same from Python: nnzip.compress and deploy stage their folder too --------------------

def test_the_api_refuses_an_unrelated_folder_before_the_baseline(tmp_path, no_work):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    data = load_digits(seed=0)
    model = create_model("lenet300", input_shape=data.input_shape, num_classes=data.num_classes)
    with pytest.raises(NnzipError, match="did not write"):
        nnzip.pipeline.compress(model, parse_recipe({"stages": [{"prune": {"sparsity": 0.5}}]}),
                                data, out_dir=mine, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert (mine / "notes.txt").read_text() == "mine"


def test_deploy_replaces_an_earlier_deployment_whole(tmp_path, saved_models, capsys):
    out = tmp_path / "deployed"
    (out / "runtimes").mkdir(parents=True)
    (out / "deploy.json").write_text("{}")
    (out / "runtimes" / "stale.onnx").write_bytes(b"an earlier runtime")
    (out / "model.pt2").write_bytes(b"an earlier choice")
    model = _save("nnz", saved_models, tmp_path)
    assert main(["deploy", "--model", str(model), "--data", "digits", "--out", str(out),
                 "--batch-sizes", "1", "--repeats", "2"]) == 0
    summary = json.loads((out / "deploy.json").read_text())
    assert Path(summary["path"]).parent == out and Path(summary["path"]).is_file()
    saved = {Path(p).name for p in (out / "runtimes").iterdir()}
    assert "stale.onnx" not in saved
    assert {Path(r["path"]).name for r in summary["runtimes"] if r["path"]} <= saved
    assert all(Path(r["path"]).parent == out / "runtimes"
               for r in summary["runtimes"] if r["path"])
    assert b"an earlier choice" not in [p.read_bytes() for p in out.iterdir() if p.is_file()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployed", "model.nnz"]


def test_a_ctrl_c_swallowed_by_a_callback_is_raised_again_at_the_next_step():
    """Python drops a KeyboardInterrupt raised inside a weakref callback or ``__del__`` ("Exception
    ignored"): the recorded request is raised again between training steps, never lost. The
    handler is called as the interpreter would call it on SIGINT (a real SIGINT raised inside
    this pytest process after OpenVINO compiled models in it crashed the interpreter: see the
    subprocess test above for a real one)."""
    import signal

    from nnzip.core import interrupt

    with interrupt.interruptible():
        assert signal.getsignal(signal.SIGINT) is interrupt._on_sigint
        interrupt.check_interrupt()  # nothing requested yet
        try:
            interrupt._on_sigint(signal.SIGINT, None)  # raises KeyboardInterrupt ...
        except KeyboardInterrupt:
            pass  # ... which a callback or __del__ would swallow
        with pytest.raises(KeyboardInterrupt):
            interrupt.check_interrupt()
    assert signal.getsignal(signal.SIGINT) is not interrupt._on_sigint
    interrupt.check_interrupt()  # the request ends with the block
