"""The ``nnzip`` command: demo, train, eval, compress, search, report.

Library code never prints; this module is where results reach the terminal. Every user-fixable
problem arrives as an :class:`NnzipError` and is printed as one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from nnzip import __version__
from nnzip.core.interrupt import exit_status, interruptible
from nnzip.errors import NnzipError

console = Console()
error_console = Console(stderr=True)

ZOO_HINT = "an architecture name, not a trained model"


def _print_error(message: str) -> None:
    """The one error line: never wrapped, and the message's own brackets are not read as
    markup."""
    import re

    from nnzip.core.distributed import record_rank_error

    line = re.sub(r"\s*\n\s*", " ", message.strip())  # a library's message may have several
    if record_rank_error(line):  # a rank of --nproc: the parent prints it, once
        return
    error_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but its errors are one line (its usage block made three or more) with exit
    status 2, as every other mistake is; ``--help`` still shows the usage."""

    def error(self, message: str):
        _print_error(f"{self.prog}: {message}; see '{self.prog} --help'")
        sys.exit(2)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help="mnist (the default), digits, stsb-lm (STS-B text for a causal "
                             "language model), a .npz file (x, y) or a folder of class "
                             "sub-folders. A Hugging Face encoder (hf:) is judged on STS-B")
    parser.add_argument("--mnist-dir", type=Path, default=None,
                        help="folder with the MNIST IDX test files (default: ../shared/data/mnist "
                             "or $NNZIP_MNIST_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits and training")


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads used while timing latency (fixed for stable numbers)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per batch size")
    parser.add_argument("--robustness-samples", type=int, default=None,
                        help="test images used for the noise/FGSM accuracy (default: all)")
    parser.add_argument("--shift-samples", type=int, default=500, metavar="N",
                        help="test samples (STS pairs for an encoder) in each shifted set of "
                             "the generalization-under-shift suite (default: 500)")
    parser.add_argument("--shift-severities", type=int, nargs="+", default=[1, 2, 3],
                        metavar="S", help="severities (1-3) of the shift suite (default: 1 2 3)")
    parser.add_argument("--no-shift", action="store_true",
                        help="measure no generalization under shift")
    parser.add_argument("--simulation-timing", action="store_true",
                        help="time a quantized model as its PyTorch simulation instead of on "
                             "the runtime `nnzip deploy` would choose")


def _add_score_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--score-weights", default=None, metavar="NAME=W,...",
                        help="weights of the report's composite score, e.g. "
                             "accuracy=3,size=1,latency=1,energy=1,robustness=1,shift=1 (the "
                             "defaults; unnamed ones keep theirs; overrides a recipe's score:)")


def _score_weights(args: argparse.Namespace):
    from nnzip.evaluate.score import parse_score_weights

    text = getattr(args, "score_weights", None)
    return parse_score_weights(text) if text is not None else None


def _add_sentence_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sentence encoders (hf:)", "the embed task's data: STS-B "
                                      "dev pairs to judge on, training sentences to calibrate "
                                      "and fine-tune on")
    group.add_argument("--pairs", type=int, default=None, metavar="N",
                       help="judge on the first N STS-B dev pairs (default: all 1 500)")
    group.add_argument("--train-sentences", type=int, default=2048, metavar="N",
                       help="STS-B training sentences for calibration and fine-tuning "
                            "(default: 2048)")


def _add_nproc_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="train on N processes (data-parallel, torch.distributed DDP with "
                             "gloo): the command re-launches itself through torchrun; each "
                             "process trains on 1/N of every batch, rank 0 writes the outputs")


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` (or ``--nproc=N``): what each torchrun process runs."""
    rest, skip = [], False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = index + 1 < len(argv)
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return rest


def _relaunch_on_processes(args: argparse.Namespace, argv: list[str]) -> int | None:
    """With ``--nproc N`` (N > 1) outside torchrun: run this command on N processes through
    torchrun and return its exit status; None when this process should do the work itself."""
    import subprocess

    from nnzip.core import distributed

    nproc = getattr(args, "nproc", None)
    if nproc is None or nproc == 1 or distributed.launched_by_torchrun():
        return None
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nnzip-ranks-") as errors:
        # OMP_NUM_THREADS: torchrun's default, set here so that it prints no banner saying so.
        env = {"OMP_NUM_THREADS": "1", **os.environ, distributed.RANK_ERRORS_ENV: errors}
        status = subprocess.call(distributed.relaunch_command(nproc, _without_nproc(argv)),
                                 env=env)
        if status == 0:
            return 0
        # Each rank wrote its error line rather than print it: shown once, here.
        _print_error(distributed.first_rank_error(errors) or (
            f"the {nproc} processes stopped (exit status {status}) without an error message: "
            "run the command without --nproc to see what went wrong"))
    return 2


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a saved nnzip model folder, a torch.export .pt2, an .onnx file, a "
                             "TorchScript file, a pickled model with --trust-pickle, or "
                             "hf:FOLDER for a Hugging Face encoder (hf:minilm: the shipped "
                             "all-MiniLM-L6-v2)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow loading a pickled full model, TorchScript, a .pt2 with "
                             "pickled parts or a Hugging Face pytorch_model.bin (these can run "
                             "code from the file: trusted files only)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="measure a model whose weights hold NaN or Inf instead of refusing "
                             "it")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nnzip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nnzip {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log each epoch and stage")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument("--work-threads", type=int, default=None, metavar="N",
                        help="torch threads for training and other work (default: torch's "
                             "choice; on a shared machine 1 is often faster). Latency timing "
                             "uses --threads")
    subparsers = parser.add_subparsers(dest="command", required=True)

    class Commands:  # every command takes the common options after its name
        @staticmethod
        def add_parser(name: str, **kwargs) -> argparse.ArgumentParser:
            return subparsers.add_parser(name, parents=[common], **kwargs)

    commands = Commands()

    demo = commands.add_parser("demo", help="train LeNet-5 and LeNet-300-100 on MNIST, measure "
                                            "them and write an HTML report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--cache-dir", type=Path, default=Path("runs/cache"),
                      help="trained models are kept here and reused by later runs")
    _add_data_options(demo)
    _add_eval_options(demo)

    train = commands.add_parser("train", help="train a zoo model and save it")
    train.add_argument("--arch", required=True, help="zoo architecture, e.g. lenet5, resnet20")
    train.add_argument("--out", type=Path, required=True, help="folder to save the model in")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--optimizer", choices=("adam", "sgd"), default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--checkpoint", type=Path, default=None,
                       help="checkpoint file: written every epoch, resumed if present")
    _add_data_options(train)
    _add_nproc_option(train)

    evaluate = commands.add_parser("eval", help="measure a model and write a report")
    _add_model_options(evaluate)
    evaluate.add_argument("--reference", default=None,
                          help="model to compare against (compression ratio, agreement)")
    evaluate.add_argument("--out", type=Path, default=Path("runs/eval"))
    _add_data_options(evaluate)
    _add_sentence_options(evaluate)
    _add_eval_options(evaluate)
    _add_score_option(evaluate)

    compress = commands.add_parser("compress", help="apply a YAML recipe, measuring every stage")
    _add_model_options(compress)
    compress.add_argument("--recipe", type=Path, required=True)
    compress.add_argument("--out", type=Path, default=Path("runs/compress"))
    compress.add_argument("--finetune-epochs", type=int, default=3,
                          help="default fine-tune budget of the stages")
    _add_data_options(compress)
    _add_sentence_options(compress)
    _add_eval_options(compress)
    _add_score_option(compress)
    _add_nproc_option(compress)

    deploy = commands.add_parser("deploy", help="run a model on every runtime (PyTorch, ONNX "
                                 "Runtime fp32/int8, OpenVINO fp32/bf16/int8) and keep the "
                                 "fastest correct one per batch size")
    _add_model_options(deploy)
    deploy.add_argument("--reference", default=None,
                        help="the original model, timed beside the runtimes as the baseline")
    deploy.add_argument("--out", type=Path, default=Path("runs/deploy"))
    deploy.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64],
                        help="batch sizes to time; the winner at the first (or "
                             "--target-batch) is saved")
    deploy.add_argument("--target-batch", type=int, default=None,
                        help="the batch size whose winner is saved (one of --batch-sizes)")
    deploy.add_argument("--threads", type=int, default=1, help="threads of every runtime")
    deploy.add_argument("--repeats", type=int, default=50, help="timed runs per batch size")
    deploy.add_argument("--max-accuracy-change", type=float, default=0.2,
                        help="accuracy points a runtime may differ from the model and count as "
                             "correct")
    deploy.add_argument("--size-tolerance", type=float, default=0.03,
                        help="runtimes within this fraction of the fastest latency are tied; "
                             "the smallest file of them is deployed (0: strictly the fastest)")
    deploy.add_argument("--min-cosine", type=float, default=0.99,
                        help="sentence encoders (hf:): the mean cosine to the model's own "
                             "embeddings a runtime must reach to count as correct")
    _add_data_options(deploy)
    _add_sentence_options(deploy)

    _add_sts_parser(commands)

    search = commands.add_parser("search", help="search a space of recipes (Optuna) for the "
                                 "measured Pareto front of the objectives; resumable, parallel")
    _add_model_options(search)
    search.add_argument("--space", type=Path, required=True,
                        help="YAML search space (e.g. recipes/search-lenet5.yaml)")
    search.add_argument("--objectives", nargs="+", default=["accuracy", "bytes"],
                        help="report keys to optimize: accuracy, accuracy_drop, bytes, latency "
                             "(latency@N: batch N), flops, score (the composite score, "
                             "default weights), or another numeric row key")
    search.add_argument("--constraint", action="append", default=[], metavar="NAME<=VALUE",
                        help="a hard constraint, e.g. \"accuracy_drop<=0.5\" (points); repeat "
                             "for several")
    search.add_argument("--trials", type=int, default=20,
                        help="finished trials the study should hold: a rerun resumes, a larger "
                             "number extends a finished search")
    search.add_argument("--workers", type=int, default=1,
                        help="worker processes on this machine sharing the storage")
    search.add_argument("--storage", default=None,
                        help="Optuna RDB URL shared by every worker (default: "
                             "sqlite:///OUT/search.db; postgresql://... for several machines)")
    search.add_argument("--study", default=None,
                        help="study name in the storage (default: the space's name)")
    search.add_argument("--out", type=Path, default=Path("runs/search"))
    _add_data_options(search)

    report = commands.add_parser("report", help="print and re-render report.json files "
                                                "(several are merged into one comparison)")
    report.add_argument("reports", nargs="+", type=Path)
    report.add_argument("--out", type=Path, default=None,
                        help="write report.{json,md,html} here (default: only print)")
    _add_score_option(report)
    return parser


# --- every numeric option's range, checked before any work -----------------------------------

#: The most threads, timed repeats and batch size that are not a typo: past them a run would only
#: oversubscribe the machine, time for days or allocate without bound.
MAX_THREADS = 1024
MAX_REPEATS = 100_000
MAX_BATCH = 65_536
MAX_EPOCHS = 100_000


def _option_ranges():
    """The numeric options of every command with their allowed ranges, as a pydantic model
    (a command without an option leaves its field at the default, which is not checked)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    finite = {"allow_inf_nan": False}
    batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]

    class OptionRanges(BaseModel):
        model_config = ConfigDict(extra="ignore")

        threads: int = Field(1, ge=1, le=MAX_THREADS)
        work_threads: int | None = Field(None, ge=1, le=MAX_THREADS)
        nproc: int | None = Field(None, ge=1, le=MAX_THREADS)
        repeats: int = Field(50, ge=1, le=MAX_REPEATS)
        robustness_samples: int | None = Field(None, ge=1)
        shift_samples: int = Field(500, ge=1)
        shift_severities: list[Annotated[int, Field(ge=1, le=3)]] = Field(
            default_factory=lambda: [1, 2, 3])
        seed: int = Field(0, ge=0, lt=2 ** 32)  # numpy's seeds
        pairs: int | None = Field(None, ge=2)  # a Spearman correlation needs two
        train_sentences: int = Field(2048, ge=2)  # a training and a validation sentence
        calibration: int = Field(256, ge=1)
        group_size: int | None = Field(None, ge=1)
        epochs: int | None = Field(None, ge=0, le=MAX_EPOCHS)
        finetune_epochs: int = Field(3, ge=0, le=MAX_EPOCHS)
        lr: float | None = Field(None, gt=0, **finite)
        batch_size: batch | None = None
        batch_sizes: list[batch] = Field(default_factory=lambda: [1, 64], min_length=1)
        max_accuracy_change: float = Field(0.2, ge=0, le=100, **finite)
        size_tolerance: float = Field(0.03, ge=0, le=1, **finite)
        trials: int = Field(20, ge=1, le=MAX_EPOCHS)
        workers: int = Field(1, ge=1, le=MAX_THREADS)

    return OptionRanges


def check_options(args: argparse.Namespace) -> None:
    """Refuse a negative, zero, non-finite or absurd numeric option before anything runs, naming
    the option and its range (``--robustness-samples -5`` once silently used 9 995 images)."""
    from pydantic import ValidationError

    try:
        _option_ranges().model_validate(vars(args))
    except ValidationError as error:
        raise NnzipError(validation_line(error, options=True)) from None


def validation_line(error, options: bool = False) -> str:
    """A pydantic ``ValidationError`` as one line: each field (as its ``--option`` when
    ``options``), what it must be and what it got."""
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        field = "--" + loc[0].replace("_", "-") if options and loc else ".".join(loc)
        if options and len(loc) > 1:
            field += f" (value {int(loc[1]) + 1})" if loc[1].isdigit() else ""
        must = item["msg"].replace("Input should be", "must be")
        for said, plain in (("greater than or equal to", "at least"),
                            ("less than or equal to", "at most"),
                            ("greater than", "above"), ("less than", "below")):
            must = must.replace(said, plain)
        got = item.get("input")
        shown = f", got {got!r}" if not isinstance(got, dict) else ""
        problems.append(f"{field or error.title} {must}{shown}")
    where = "" if options else f"invalid {error.title}: "
    return where + "; ".join(problems)


def _eval_config(args: argparse.Namespace):
    from nnzip.evaluate import EvalConfig

    if args.threads < 1 or args.repeats < 1:
        raise NnzipError("--threads and --repeats must be at least 1")
    return EvalConfig(threads=args.threads, repeats=args.repeats,
                      robustness_samples=args.robustness_samples,
                      shift_samples=args.shift_samples,
                      shift_severities=(() if args.no_shift
                                        else tuple(dict.fromkeys(args.shift_severities))),
                      runtime_timing=not getattr(args, "simulation_timing", False),
                      score_weights=_score_weights(args))


def _load_data(args: argparse.Namespace):
    from nnzip.data import load_dataset

    return load_dataset(args.data or "mnist", mnist_dir=args.mnist_dir, seed=args.seed)


def _is_encoder(model) -> bool:
    from nnzip.models.hf import SentenceEncoder

    return isinstance(model, SentenceEncoder)


def _model_data(args: argparse.Namespace, model):
    """The data ``model`` is judged on: ``--data``, or for a sentence encoder the embed task's
    STS-B data, whose targets are this model's own embeddings (one fp32 encode)."""
    if not _is_encoder(model):
        return _load_data(args)
    if args.data is not None:
        raise NnzipError(f"a sentence encoder is judged on STS-B, not on --data {args.data}: "
                         "drop --data (--pairs and --train-sentences choose the sentences)")
    from nnzip.tasks import sentence_data

    return sentence_data(model, pairs=args.pairs, train_sentences=args.train_sentences,
                         seed=args.seed, progress=not args.no_progress)


def _load_model(spec: str, args: argparse.Namespace):
    from nnzip.models import ZOO, load_model

    if spec in ZOO and not Path(spec).exists():
        raise NnzipError(f"{spec!r} is {ZOO_HINT}: train it first with "
                         f"'nnzip train --arch {spec} --out DIR', then pass --model DIR")
    return load_model(spec, trust_pickle=args.trust_pickle,
                      allow_nonfinite=args.allow_nonfinite)


def _show(report: dict, paths: dict[str, Path]) -> None:
    from nnzip.evaluate import rich_table
    from nnzip.evaluate.tables import aligned_table, transposed_summary

    if console.is_terminal:
        console.print(rich_table(report))
    else:  # piped: lines that no terminal width can wrap mid-word
        for line in aligned_table(*transposed_summary(report["models"])):
            print(line)
    for stage in report.get("stages", []):
        console.print(_coverage_line(stage), soft_wrap=True)
    for kind in ("json", "md", "html", "model"):
        if kind in paths:
            console.print(f"{kind:>5}: {paths[kind]}")


def _coverage_line(stage: dict) -> str:
    """One line per stage: what share of the parameters it changed, and what it skipped."""
    coverage = stage.get("details", {}).get("coverage") or {}
    skipped = coverage.get("skipped") or {}
    line = (f"{stage['label']}: changed {100 * coverage.get('changed_fraction', 0):.1f} % of "
            f"{coverage.get('total_params', 0):,} parameters")
    if skipped:
        shown = "; ".join(f"{name} ({reason})" for name, reason in list(skipped.items())[:3])
        more = f"; and {len(skipped) - 3} more (see the report)" if len(skipped) > 3 else ""
        line += f"; skipped {len(skipped)} weight(s): {shown}{more}"
    return line


def _inputs(args: argparse.Namespace) -> dict[str, Path | None]:
    """The files and folders a command reads, by option, that its --out must never overwrite."""
    from nnzip.outputs import input_path

    inputs = {option: input_path(getattr(args, name, None)) for option, name in (
        ("--model", "model"), ("--reference", "reference"), ("--recipe", "recipe"),
        ("--data", "data"), ("--mnist-dir", "mnist_dir"), ("--cache-dir", "cache_dir"),
        ("--space", "space"))}
    if getattr(args, "checkpoint", None) is not None:  # written by the run: may not exist yet
        inputs["--checkpoint"] = args.checkpoint
    for path in getattr(args, "reports", None) or []:
        inputs[str(path)] = input_path(path)
    return inputs


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse a bad --out before any work (see :mod:`nnzip.outputs`): a model folder or .nnz
    file for train, a results folder for every other command that writes one."""
    from nnzip.outputs import MODEL_MARKERS, RUN_MARKERS, check_output, check_output_file

    out = getattr(args, "out", None)
    if out is None:
        return
    if args.command == "search":  # resumed, not replaced: see nnzip.search.runner
        from nnzip.outputs import check_not_over_inputs, check_writable_place
        from nnzip.search.runner import check_search_folder

        check_not_over_inputs(out, _inputs(args))
        check_writable_place(out)
        check_search_folder(out)
    elif args.command == "train" and out.suffix.lower() == ".nnz":
        from nnzip.codec.nnz import MAGIC
        from nnzip.outputs import starts_with

        check_output_file(out, is_ours=lambda path: starts_with(path, MAGIC),
                          inputs=_inputs(args))
    else:
        check_output(out, inputs=_inputs(args),
                     markers=MODEL_MARKERS if args.command == "train" else RUN_MARKERS)


def _interrupted_message(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """Where the results finished before Ctrl-C are, and that --out was left as it was."""
    if getattr(interrupt, "message", None):  # a search says itself what it kept
        return interrupt.message
    saved = getattr(interrupt, "saved_to", None)
    out = getattr(args, "out", None)
    unchanged = f"; {out} is unchanged" if out is not None else ""
    if saved is not None:
        return (f"interrupted: the results finished so far are in {saved} (marked as "
                f"interrupted){unchanged}")
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and checkpoint.exists():
        return f"interrupted: the epochs finished so far are in {checkpoint}{unchanged}"
    return f"interrupted before any result was finished{unchanged}"


def cmd_demo(args: argparse.Namespace) -> None:
    from nnzip.pipeline import evaluate_models
    from nnzip.train import train_zoo_model

    data = _load_data(args)
    progress = not args.no_progress
    lenet5 = train_zoo_model("lenet5", data, cache_dir=args.cache_dir, progress=progress)
    lenet300 = train_zoo_model("lenet300", data, cache_dir=args.cache_dir, progress=progress)
    report, paths = evaluate_models(
        [("lenet5", "baseline", lenet5), ("lenet300", "baseline", lenet300)], data,
        out_dir=args.out, eval_config=_eval_config(args), extra={"job": "demo"})
    _show(report, paths)


def cmd_train(args: argparse.Namespace) -> None:
    from nnzip.evaluate.accuracy import accuracy, predict_logits
    from nnzip.evaluate.metrics import check_model_accepts
    from nnzip.models import create_model, save_model
    from nnzip.train import DEFAULT_TRAINING, TrainConfig, fit

    data = _load_data(args)
    model = create_model(args.arch, input_shape=data.input_shape, num_classes=data.num_classes)
    check_model_accepts(model, data, args.arch)  # e.g. token ids for an image model: say so now
    base = DEFAULT_TRAINING.get(args.arch, TrainConfig())
    overrides = {key: value for key, value in {
        "epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer,
        "batch_size": args.batch_size, "seed": args.seed}.items() if value is not None}
    config = base.model_copy(update=overrides)
    TrainConfig.model_validate(config.model_dump())  # re-check the overrides' ranges
    result = fit(model, data, config, checkpoint=args.checkpoint,
                 progress=not args.no_progress, description=f"train {args.arch}")
    from nnzip.core.distributed import is_main_process

    if not is_main_process():  # the other ranks trained the same weights; rank 0 saves them
        return
    if data.task == "lm":  # a split's logits would not fit in memory: scored batch by batch
        from nnzip.evaluate.language import next_token_scores

        scores = next_token_scores(model, data)
        test = {"test_perplexity": scores.perplexity}
        measured = f"test perplexity {scores.perplexity:.2f} on {scores.tokens} tokens"
        val_name = "val next-token accuracy"
    else:
        test_accuracy = accuracy(predict_logits(model, data.loader("test", 256)),
                                 data.test.tensors[1])
        test = {"test_accuracy": test_accuracy}
        measured = f"test accuracy {100 * test_accuracy:.2f}% on {len(data.test)} images"
        val_name = "val accuracy"
    path = save_model(model, args.out, extra={"training": config.model_dump(), **test})
    console.print(f"{args.arch}: best {val_name} {100 * result.best_val_accuracy:.2f}% "
                  f"(epoch {result.best_epoch}), {measured}")
    console.print(f"model: {path}")


def cmd_eval(args: argparse.Namespace) -> None:
    from nnzip.pipeline import evaluate_models

    model = _load_model(args.model, args)
    reference = _load_model(args.reference, args) if args.reference else None
    data = _model_data(args, reference if reference is not None else model)
    # Rows named by what each model is ("LeNet-5 (MNIST)"), as compress names them; the stage
    # column tells the two apart when both are the same architecture.
    models = [(_title(model, data, args.model), "evaluated", model)]
    if reference is not None:
        models.insert(0, (_title(reference, data, args.reference), "baseline", reference))
    from nnzip.codec.nnz import is_nnz

    # An .nnz file is weighed as the file itself, not as the dense model it decodes to.
    artifacts = {stage: Path(spec) for stage, spec in (("evaluated", args.model),
                                                       ("baseline", args.reference))
                 if spec and Path(spec).is_file() and is_nnz(spec)}
    report, paths = evaluate_models(models, data, out_dir=args.out,
                                    eval_config=_eval_config(args), artifacts=artifacts)
    _show(report, paths)


def _title(model, data, spec: str) -> str:
    """What a report calls ``model``: its architecture and data ("LeNet-5 (MNIST)"), not its
    folder ("lenet5-mnist-d785a6554558"); a model that cannot say (no zoo spec) keeps the name
    of its file."""
    from nnzip.models.naming import model_title

    return model_title(model, data.name, fallback=Path(spec.removeprefix("hf:")).stem)


def cmd_compress(args: argparse.Namespace) -> None:
    from nnzip.pipeline import check_compressible, compress
    from nnzip.recipe import load_recipe
    from nnzip.tasks import TASKS

    recipe = load_recipe(args.recipe)  # validated before anything slow happens
    model = _load_model(args.model, args)
    check_compressible(model)  # an .onnx / .xml: before the recipe is checked against it
    if _is_encoder(model):
        recipe.check_task(TASKS["embed"])  # before the encoder is run on the STS-B sentences
    recipe.check_model(model)  # layer names and stage/model fit, before any data is loaded
    data = _model_data(args, model)
    name = _title(model, data, args.model)
    result = compress(model, recipe, data, name=name, out_dir=args.out,
                      eval_config=_eval_config(args), finetune_epochs=args.finetune_epochs,
                      seed=args.seed, progress=not args.no_progress)
    from nnzip.core.distributed import is_main_process

    if is_main_process():  # the other ranks only trained: rank 0 measured and wrote the report
        _show(result.report, result.paths)


def cmd_search(args: argparse.Namespace) -> None:
    import optuna

    from nnzip.search import load_space, search
    from nnzip.search.runner import check_search_folder

    space = load_space(args.space)  # validated before anything slow happens
    check_search_folder(args.out)
    model = _load_model(args.model, args)
    data = _model_data(args, model)
    if not args.verbose:  # one line per trial otherwise; the progress bar says as much
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = search(model, data, space, out=args.out, objectives=args.objectives,
                    constraints=args.constraint, trials=args.trials, workers=args.workers,
                    storage=args.storage, study_name=args.study, seed=args.seed,
                    name=_title(model, data, args.model), model_source=args.model,
                    progress=not args.no_progress)
    console.print(f"{result.finished} finished trials in {result.storage}; "
                  f"{len(result.front)} on the front")
    console.print(Path(result.paths["md"]).read_text(), markup=False, highlight=False)
    for kind in ("json", "md", "png", "front", "report_html"):
        if kind in result.paths:
            console.print(f"{kind.removeprefix('report_'):>5}: {result.paths[kind]}")


def cmd_deploy(args: argparse.Namespace) -> None:
    from rich.table import Table

    from nnzip.evaluate.metrics import check_model_accepts
    from nnzip.runtime import deploy

    if args.target_batch is not None and args.target_batch not in args.batch_sizes:
        raise NnzipError(f"--target-batch {args.target_batch} is not among the timed batch sizes "
                         f"{args.batch_sizes}: add it to --batch-sizes")  # before anything loads
    if not 0.0 < args.min_cosine <= 1.0:
        raise NnzipError(f"--min-cosine is a cosine similarity in (0, 1], got {args.min_cosine}")
    model = _load_model(args.model, args)
    # A sentence encoder is judged on STS-B sentences, with its own embeddings as the targets.
    data = _model_data(args, model)
    reference = _load_model(args.reference, args) if args.reference else None
    for name, each in (("model", model), ("reference", reference)):
        if each is not None:  # a model that does not fit the data: said before any timing
            check_model_accepts(each, data, name)
    deployment = deploy(model, data, args.out, batch_sizes=tuple(args.batch_sizes),
                        threads=args.threads, repeats=args.repeats,
                        max_accuracy_change=args.max_accuracy_change, original=reference,
                        target_batch=args.target_batch, min_cosine=args.min_cosine,
                        size_tolerance=args.size_tolerance)
    machine = deployment.machine
    table = Table(title=f"runtimes on {machine['cpu_model']} ({', '.join(machine['cpu_flags'])}); "
                        f"onnxruntime {machine['onnxruntime_version']}, "
                        f"openvino {machine['openvino_version'] or 'not installed'}")
    embed = deployment.runtimes[0].cosine is not None
    quality = "cosine to the model" if embed else "accuracy Δ (points)"
    for column in ("runtime", "correct", quality, "integer ops",
                   *(f"p50 ms @{batch}" for batch in args.batch_sizes)):
        table.add_column(column)
    for runtime in deployment.runtimes:
        status = ("yes" if runtime.correct else "no") if runtime.candidate else "baseline"
        table.add_row(("→ " if runtime is deployment.chosen else "") + runtime.name, status,
                      f"{runtime.cosine:.4f}" if embed
                      else f"{runtime.accuracy_change_points:+.2f}",
                      "" if runtime.integer_ops is None else str(runtime.integer_ops),
                      *(f"{runtime.latency_ms[batch]['p50']:.3f}" if batch in runtime.latency_ms
                        else "—" for batch in args.batch_sizes))
    console.print(table)
    baseline = "the reference" if reference is not None else deployment.baseline().name
    winners = Table(title="runtime deployed per batch size",
                    caption=f"the fastest correct runtime, or the smallest file within "
                            f"{100 * args.size_tolerance:g} % of its latency")
    for column in ("batch", "winner", "p50 ms", "bytes", f"vs {baseline}", "runner-up",
                   "vs runner-up", "runner-up bytes"):
        winners.add_column(column)
    for batch in deployment.chosen_by_batch:
        choice = deployment.choice(batch)
        size = choice["file_bytes"]
        runner_up_size = choice["runner_up_file_bytes"]
        winners.add_row(str(batch), choice["runtime"], f"{choice['p50_ms']:.3f}",
                        "—" if size is None else f"{size:,}",
                        f"{choice['speedup']:.2f}×", choice["runner_up"] or "—",
                        "" if choice["speedup_vs_runner_up"] is None
                        else f"{choice['speedup_vs_runner_up']:.2f}×",
                        "—" if runner_up_size is None else f"{runner_up_size:,}")
    console.print(winners)
    for skip in deployment.skipped:
        console.print(f"skipped {skip['runtime']}: {skip['reason']}", markup=False)
    console.print(f"saved: {deployment.chosen.name}, the winner at batch "
                  f"{deployment.target_batch}: {deployment.path}\n deploy.json: "
                  f"{args.out / 'deploy.json'}")


# --- nnzip sts: judge a sentence encoder on the STS Benchmark, fp32 and quantized -------------

#: Neighbours compared by the overlap column (top-k among the judged sentences).
STS_NEIGHBOURS = 10
STS_COLUMNS = ("scheme", "Spearman", "Δ", "cos to fp32", f"top-{STS_NEIGHBOURS} overlap",
               "bytes", "of fp32", "quantize s", "encode s")


def _add_sts_parser(commands) -> None:
    import textwrap

    from nnzip.quant.schemes import DEFAULT_GROUP_SIZE, RENAMED, SCHEMES

    width = max(len(name) for name in SCHEMES) + 2
    schemes = "\n".join(textwrap.fill(scheme.summary, 94, initial_indent=f"  {name:<{width}}",
                                      subsequent_indent=" " * (width + 2))
                        for name, scheme in SCHEMES.items())
    renamed = ", ".join(f"{old} → {new}" for old, new in RENAMED.items())
    sts = commands.add_parser(
        "sts", help="judge a sentence encoder (hf:FOLDER, hf:minilm) on the STS Benchmark, "
                    "fp32 and quantized",
        description=textwrap.fill(
            "Judge a sentence encoder on the STS Benchmark: the Spearman correlation of cos(s1, "
            "s2) with the gold scores, for the fp32 model and for each --quantize scheme, with "
            "its mean cosine to the fp32 embeddings, top-10 neighbour overlap and bytes. The "
            "fp32 model is encoded once and is every scheme's reference. Progress goes to "
            "stderr, the table to stdout.", 94),
        epilog=f"quantization schemes (calibrated on STS-B training sentences where they need "
               f"it):\n{schemes}\n\n"
               + textwrap.fill(f"Old names still work, with a warning: {renamed}. Measured "
                               "numbers: README.md (Transformers) and "
                               "benchmarks/results/hf_quant.md.", 94),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_options(sts)
    sts.add_argument("--quantize", nargs="+", default=[], metavar="SCHEME",
                     help="one or more schemes (listed below), compared in one table against "
                          "one fp32 encode")
    sts.add_argument("--split", choices=("dev", "train"), default="dev",
                     help="the STS-B split to judge on (default: dev)")
    sts.add_argument("--pairs", type=int, default=None, help="only the first N pairs")
    sts.add_argument("--group-size", type=int, default=None,
                     help=f"group size of the weight-int4-* schemes (default "
                          f"{DEFAULT_GROUP_SIZE})")
    sts.add_argument("--calibration", type=int, default=256,
                     help="training sentences used for calibration")
    sts.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass")


def _sts_schemes(names: list[str], group_size: int | None) -> list:
    """The schemes asked for, in order, once each; an old name is warned about on stderr."""
    from nnzip.quant.schemes import find_scheme

    schemes = []
    for name in names:
        if name == "none":  # the old default: the fp32 model only
            continue
        scheme = find_scheme(name)
        if scheme.name != name:
            error_console.print(f"warning: --quantize {name} is now called {scheme.name}",
                                soft_wrap=True, highlight=False, markup=False)
        if scheme not in schemes:
            schemes.append(scheme)
    if group_size is not None:
        if group_size < 1:
            raise NnzipError(f"--group-size must be at least 1, got {group_size}")
        if not any(scheme.group_wise for scheme in schemes):
            raise NnzipError("--group-size applies to the weight-int4-rtn and weight-int4-gptq "
                             "schemes: add one to --quantize, or drop --group-size")
    return schemes


def _sts_step(description: str, enabled: bool):
    """A context manager: a spinner and the elapsed time on stderr while a step without batches
    (calibration, quantization) runs, left as a finished line when it ends."""
    from contextlib import contextmanager

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    @contextmanager
    def step():
        with Progress(SpinnerColumn(finished_text="done"), TextColumn("[bold]{task.description}"),
                      TimeElapsedColumn(), console=error_console, disable=not enabled,
                      transient=False) as bar:
            task = bar.add_task(escape(description), total=None)
            yield
            bar.update(task, total=1, completed=1)

    return step()


def _sts_cells(row: dict) -> list[str]:
    """One row of the result table as text (the fp32 row has no Δ, cosine or overlap: n/a)."""
    from nnzip.evaluate.tables import NA

    def number(key: str, spec: str) -> str:
        return NA if row.get(key) is None else format(row[key], spec)

    return [row["scheme"], number("spearman", ".4f"), number("spearman_delta", "+.4f"),
            number("cosine_to_reference", ".4f"), number("neighbour_overlap", ".3f"),
            f"{row['bytes']:,}", f"{row['bytes_fraction']:.1%}",
            number("quantize_seconds", ".1f"), number("encode_seconds", ".1f")]


def sts_text_table(rows: list[dict]) -> list[str]:
    """The result table as aligned markdown lines: they do not depend on any terminal width, so
    piped output is never wrapped mid-word (and pastes into a README)."""
    from nnzip.evaluate.tables import aligned_table

    return aligned_table(list(STS_COLUMNS), [_sts_cells(row) for row in rows])


def _sts_rich_table(rows: list[dict], title: str):
    from rich.table import Table

    table = Table(title=title)
    for column in STS_COLUMNS:
        table.add_column(column, justify="left" if column == "scheme" else "right",
                         no_wrap=True)
    for row in rows:
        table.add_row(*_sts_cells(row))
    return table


def _sts_encoder_and_pairs(args: argparse.Namespace):
    """The encoder and the STS-B pairs it is judged on, each checked."""
    from nnzip.data.sts import load_sts

    if args.pairs is not None and args.pairs < 2:
        raise NnzipError(f"--pairs must be at least 2 (a Spearman correlation), got {args.pairs}")
    if args.calibration < 1:
        raise NnzipError(f"--calibration must be at least 1 sentence, got {args.calibration}")
    if args.no_progress and args.model.startswith("hf:"):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bar
    model = _load_model(args.model, args)
    if not hasattr(model, "tokenize"):
        raise NnzipError(f"{args.model} is not a sentence encoder: pass hf:FOLDER or hf:minilm")
    pairs = load_sts(args.split)
    pairs = pairs.head(args.pairs) if args.pairs else pairs
    if len(pairs.sentences()) <= STS_NEIGHBOURS:
        raise NnzipError(f"{len(pairs)} pairs hold {len(pairs.sentences())} distinct sentences; "
                         f"the top-{STS_NEIGHBOURS} neighbour overlap needs more than "
                         f"{STS_NEIGHBOURS}: raise --pairs")
    return model, pairs


def _sts_row(model, pairs, args: argparse.Namespace, label: str, fp32: dict | None = None,
             reference=None) -> tuple[dict, object]:
    """Encode the sentences of ``pairs`` once with ``model`` and score them, against the fp32
    row and embeddings (a tensor) when given: the table row and the embeddings (a tensor)."""
    import time

    from nnzip.evaluate import artifact_bytes
    from nnzip.evaluate.embedding import sts_embeddings, sts_scores

    started = time.perf_counter()
    sentences, embeddings = sts_embeddings(model, pairs, args.batch_size,
                                           progress=not args.no_progress,
                                           description=f"encode {label}")
    row = {"scheme": label, **sts_scores(sentences, embeddings, pairs, reference,
                                          STS_NEIGHBOURS),
           "encode_seconds": time.perf_counter() - started, "bytes": artifact_bytes(model)}
    row["bytes_fraction"] = row["bytes"] / (fp32["bytes"] if fp32 else row["bytes"])
    if fp32 is not None:
        row["spearman_delta"] = row["spearman"] - fp32["spearman"]
    return row, embeddings


def cmd_sts(args: argparse.Namespace) -> None:
    import time

    from nnzip.data.sts import calibration_sentences
    from nnzip.evaluate.embedding import token_batches
    from nnzip.quant.schemes import quantize_scheme

    schemes = _sts_schemes(args.quantize, args.group_size)  # before anything slow
    model, pairs = _sts_encoder_and_pairs(args)
    progress = not args.no_progress
    calibrated = any(scheme.needs_calibration for scheme in schemes)
    if calibrated and args.split == "train":
        error_console.print("note: calibration sentences come from the training split, the "
                            "split being judged", soft_wrap=True, highlight=False, markup=False)
    # The one fp32 encode: its own Spearman and every scheme's reference.
    fp32, reference = _sts_row(model, pairs, args, "fp32")
    rows = [fp32]
    calibration = None
    if calibrated:
        with _sts_step(f"tokenize {args.calibration} calibration sentences", progress):
            calibration, _ = token_batches(model, calibration_sentences(args.calibration), 32)
    for scheme in schemes:
        group_size = args.group_size if scheme.group_wise else None
        label = scheme.label(group_size)
        started = time.perf_counter()
        with _sts_step(f"quantize {label}"
                       + (" (calibrate)" if scheme.needs_calibration else ""), progress):
            quantized = quantize_scheme(model, scheme, calibration, group_size=group_size).model
        quantize_seconds = time.perf_counter() - started
        row, _ = _sts_row(quantized, pairs, args, label, fp32, reference)
        rows.append({**row, "quantize_seconds": quantize_seconds})
        del quantized
    title = (f"{args.model} on STS-B {args.split}: {len(pairs)} pairs, "
             f"{len(pairs.sentences())} sentences"
             + (f"; calibration: {args.calibration} training sentences" if calibrated else ""))
    if console.is_terminal:
        console.print(_sts_rich_table(rows, title))
    else:
        for line in [title, "", *sts_text_table(rows)]:
            console.print(line, soft_wrap=True, highlight=False, markup=False)


#: The report keys that hold text; every other model key holds numbers (or nested numbers).
REPORT_TEXT_KEYS = ("name", "stage", "task", "energy_note", "runtime_note")
#: The report keys that hold text per batch size ({"batch1": "onnxruntime-int8-qdq"}), or null.
REPORT_TEXT_PER_BATCH_KEYS = ("runtime",)
#: The report keys that hold a record of numbers and labels (a breakdown with its source), or null.
REPORT_RECORD_KEYS = ("energy_estimate",)


def _numbers_and_text(value: object) -> bool:
    if isinstance(value, dict):
        return all(_numbers_and_text(item) for item in value.values())
    return isinstance(value, str) or _numbers_only(value)


def _numbers_only(value: object) -> bool:
    if isinstance(value, dict):
        return all(_numbers_only(item) for item in value.values())
    if isinstance(value, list):
        return all(_numbers_only(item) for item in value)
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def check_report_types(report: dict, path: Path) -> dict:
    """Refuse a report.json whose values have the wrong type (a hand-edited or mistyped file),
    naming the model and the key, before anything is rendered or written."""
    from nnzip.evaluate import REPORT_MODEL_KEYS

    redo = "regenerate it with `nnzip eval`, or fix the value"
    if not isinstance(report["machine"], dict):
        raise NnzipError(f"report {path}: 'machine' is not a JSON object: {redo}")
    stages = report.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(stage, dict) and
                                               isinstance(stage.get("label"), str)
                                               for stage in stages):
        raise NnzipError(f"report {path}: 'stages' is not a list of stages with a label: {redo}")
    for index, model in enumerate(report["models"]):
        for key in REPORT_MODEL_KEYS:
            value = model[key]
            if key in REPORT_TEXT_KEYS:
                fits = isinstance(value, str) or (value is None and key not in ("name", "stage"))
            elif key == "confidence":  # {"difference": .., "test": "mcnemar", "within_noise": ..}
                fits = value is None or (isinstance(value, dict) and all(
                    isinstance(item, str | bool) or _numbers_only(item)
                    for item in value.values()))
            elif key == "robustness":  # its figures, and a "note" when some were not measured
                fits = value is None or (isinstance(value, dict) and all(
                    isinstance(item, str) if name == "note" else _numbers_only(item)
                    for name, item in value.items()))
            elif key in REPORT_TEXT_PER_BATCH_KEYS:
                fits = value is None or (isinstance(value, dict) and all(
                    isinstance(item, str) for item in value.values()))
            elif key == "shift":
                from nnzip.evaluate.shift import is_shift_entry

                fits = is_shift_entry(value)
            elif key in REPORT_RECORD_KEYS:
                fits = value is None or (isinstance(value, dict) and _numbers_and_text(value))
            else:
                fits = _numbers_only(value)
            if not fits:
                kind = ("text" if key in REPORT_TEXT_KEYS else "text per batch size (or null)"
                        if key in REPORT_TEXT_PER_BATCH_KEYS else "a shift entry (metric, values, "
                        "mean; or null)" if key == "shift" else "a record of numbers and text"
                        if key in REPORT_RECORD_KEYS else "a number (or null)")
                raise NnzipError(f"report {path}: model {index} has {key} = {value!r:.60}, not "
                                 f"{kind}: {redo}")
    return report


def _rendered_or_refused(report: dict, sources: list[Path]) -> None:
    """Render the report once before anything is written, so a value the renderers cannot show
    is one error line, never a report.json without its report.md and report.html."""
    from nnzip.evaluate.report import render_html, render_markdown

    try:
        render_markdown(report)
        render_html(report)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
        raise NnzipError(f"report {', '.join(map(str, sources))} cannot be rendered "
                         f"({type(error).__name__}: {error}): regenerate it with `nnzip eval`"
                         ) from None


def _read_report(path: Path) -> dict:
    """A report.json, or a search's front.json (or its folder: it holds search.json), as a
    report: the search's one is rendered from front.json (:func:`nnzip.search.front_report`)."""
    from nnzip.evaluate import load_report

    if path.name == "front.json" or (path.is_dir() and (path / "search.json").is_file()):
        from nnzip.search.front import front_report, load_front

        return front_report(load_front(path))
    return load_report(path)


def cmd_report(args: argparse.Namespace) -> None:
    from nnzip.evaluate import build_report, write_report
    from nnzip.evaluate.score import score_weights
    from nnzip.outputs import final_paths, staged_folder

    weights = _score_weights(args)  # refused before any report is read
    reports = [check_report_types(_read_report(path), path) for path in args.reports]
    if len(reports) == 1:
        # Re-scored: with --score-weights, else with the weights it was written with.
        report = reports[0]
        stored = (report.get("score") or {}).get("weights") \
            if isinstance(report.get("score"), dict) else None
        weights = weights or score_weights(stored, f"report {args.reports[0]}")
        extra = {key: value for key, value in report.items()
                 if key not in ("nnzip_version", "machine", "models", "score")}
        report = {**build_report(report["models"], report["machine"], extra=extra,
                                 score_weights=weights),
                  "nnzip_version": report["nnzip_version"]}
    else:
        models = [entry for report in reports for entry in report["models"]]
        report = build_report(models, reports[0]["machine"],
                              extra={"merged_from": [str(path) for path in args.reports]},
                              score_weights=weights)
    _rendered_or_refused(report, args.reports)
    with staged_folder(args.out) as folder:  # replaces --out as a whole, once written
        paths = write_report(report, folder) if folder is not None else {}
    _show(report, final_paths(paths, folder, args.out))


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "eval": cmd_eval, "compress": cmd_compress,
            "deploy": cmd_deploy, "sts": cmd_sts, "report": cmd_report, "search": cmd_search}


def unexpected_error_line(error: BaseException) -> str:
    """The last resort for an exception nnzip did not foresee (a torch shape error from a model
    and data that do not fit, a library's own failure): one line that names it and says how to
    see the traceback, so it is neither a wall of text nor hidden."""
    if isinstance(error, MemoryError):
        return ("out of memory: use a smaller model, less data or smaller batches "
                "(run with -v for the traceback)")
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}: check the path, its permissions and the free space"
    text = " ".join(str(error).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return (f"unexpected {type(error).__name__}: {text or '(no message)'}; if the model and "
            "data fit each other this is a bug in nnzip: run again with -v for the traceback "
            "and report it")


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s", handlers=[RichHandler(console=error_console)])
    try:
        check_options(args)
        if args.work_threads is not None:
            import torch  # late: `nnzip --help` stays fast

            torch.set_num_threads(args.work_threads)
        check_outputs(args)  # before any work: a bad --out costs a second, not a finished run
        relaunched = _relaunch_on_processes(args, argv)
        if relaunched is not None:
            return relaunched
        from nnzip.core import distributed

        if distributed.init_from_environment() and not distributed.is_main_process():
            console.quiet = True  # one report on the screen: rank 0's (errors still show)
        with interruptible():  # a Ctrl-C that lands in a callback is raised again, not lost
            COMMANDS[args.command](args)
        distributed.shutdown()
    except NnzipError as error:
        _print_error(str(error))
        return 2
    except ValidationError as error:  # a config built from the options (e.g. TrainConfig)
        _print_error(validation_line(error))
        return 2
    except Exception as error:  # noqa: BLE001 - the last resort: one line, the traceback on -v
        if args.verbose:
            error_console.print_exception()
        _print_error(unexpected_error_line(error))
        return 2
    except KeyboardInterrupt as interrupt:
        error_console.print(_interrupted_message(args, interrupt), soft_wrap=True,
                            highlight=False, markup=False)
        return exit_status()  # 130 after Ctrl-C, 143 after a SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
