"""Command line: builds typed settings from flags and calls the library.

Heavy modules (torch, ray, pandas) are imported inside the command handlers, so
``--help`` answers at once. Errors a user can fix are printed on one line and
exit with status 2; nothing on disk is overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rest.cli.common import PROG, Parser, ProgressBar, StudyProgress
from rest.cli.prepare import add_parser as add_prepare_parser
from rest.cli.status import add_parser as add_status_parser
from rest.errors import UserError
from rest.settings import DATASET_NAMES, TrainSettings
from rest.storage import fresh_dir, local, writing

log = logging.getLogger("rest")


def _flag(f: dataclasses.Field) -> tuple[str, str, Callable, str]:
    """(flag, settings field, type, help) of one TrainSettings field. Choices are checked by
    TrainSettings.validate, so a bad value gets the one-line error that lists them."""
    kind = {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
    default = "none" if f.default is None else f"{f.default:g}" if isinstance(f.default, float) else f.default
    return f"--{f.name.replace('_', '-')}", f.name, kind, f"{f.metadata['help']} (default {default})"


# One flag per training setting, derived from TrainSettings: a new setting gets its flag here.
TRAIN_FLAGS = [_flag(f) for f in dataclasses.fields(TrainSettings) if "help" in f.metadata]


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    for flag, field, kind, help_text in TRAIN_FLAGS:
        p.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for metrics.jsonl and checkpoint.pt (default runs/train-<time>)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run in DIR (its --out) from its last epoch checkpoint, with its settings",
    )


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="REST (reweighted sparse training) studies on Ray Tune.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("train", help="train one configuration and print one line per epoch")
    _add_train_flags(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("run", help="run a study (search, then confirm) on Ray Tune")
    p.add_argument("space", type=Path, help="study definition, e.g. search_spaces/default.yaml")
    p.add_argument("--name", default=None, help="study name (default: the file's name)")
    _add_cluster_flags(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted study where it stopped, with the options it ran with")
    p.add_argument("name", help="study name (a directory under --storage)")
    _add_cluster_flags(p)
    p.set_defaults(handler=cmd_resume)

    add_status_parser(sub)

    p = sub.add_parser("export", help="best-config tables, a plot and a summary from a study directory")
    p.add_argument("study", nargs="+", help="study name (under --storage) or path; several: one merged table")
    p.add_argument(
        "--storage",
        default=None,
        help="directory or s3:// / gs:// URI holding studies (default $REST_TUNE_STORAGE or ./studies)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default results/<study name>); it holds "
        "this export alone: an earlier export of the same studies there is replaced, other files are refused",
    )
    p.add_argument("--format", default="md,csv,tex", help="comma-separated: md, csv, tex (default md,csv,tex)")
    p.add_argument(
        "--selection",
        choices=("val", "oracle"),
        default="val",
        help="rank configs on validation as the study's selection setting says (default) or, "
        "labelled ORACLE, on test worst-group accuracy",
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("export-model", help="save a cell's selected best-epoch model in compact sparse form")
    p.add_argument("study", help="study name (under --storage) or path, or a 'train --out' directory")
    p.add_argument("--cell", default=None, help="DATASET:CONFLICT_PCT, e.g. colored_digits:1 (a study needs it)")
    p.add_argument(
        "--storage",
        default=None,
        help="directory or s3:// / gs:// URI holding studies (default $REST_TUNE_STORAGE or ./studies)",
    )
    p.add_argument("--out", type=Path, default=None, help="model file (default results/<study>/model-<cell>.pt)")
    p.set_defaults(handler=cmd_export_model)

    p = sub.add_parser(
        "predict", help="accuracy and throughput (images/s) of an exported model, dense or sparse engine"
    )
    p.add_argument("model", type=Path, help="model file written by export-model")
    p.add_argument("--dataset", default=None, help=f"dataset: {', '.join(DATASET_NAMES)} (default: the model's)")
    p.add_argument(
        "--conflict-pct", type=float, default=None, help="conflict ratio of the dataset (default: the model's)"
    )
    p.add_argument(
        "--data-root", default=None, help="root of an LfF-layout dataset (default: the model's, if it has one)"
    )
    p.add_argument(
        "--engine",
        default="dense",
        help="dense (the PyTorch model) or sparse (BN folded, sparse kernels "
        "below the measured crossover density; CPU) (default dense)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--split", default="test", help="test, valid or train (default test)")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads, at most this machine's CPUs (default: PyTorch's)"
    )
    p.set_defaults(handler=cmd_predict)

    add_prepare_parser(sub)
    return parser


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """The run options of `run` and `resume` (rest.study.options.RunOptions); resume keeps the study's unless given."""
    p.add_argument(
        "--storage",
        default=None,
        help="directory or s3:// / gs:// URI holding studies "
        "(default $REST_TUNE_STORAGE or ./studies); "
        "shared by all nodes on a multi-node cluster",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray to run on: local (a private Ray started for this driver alone), "
        "auto (the cluster 'ray start' started on this machine) or HOST:PORT (default $RAY_ADDRESS, else local)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="dataset root for folder datasets (overrides the study file; resume: the study's, unless given)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=None,
        help="CPUs per trial (default: the study file's; resume: the study's)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial, fractions allowed (default: the study file's; resume: the study's)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="at most this many trials at once (default: as resources allow; resume: the study's)",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: do not refuse trials that no current node can run",
    )
    p.add_argument(
        "--stall-minutes",
        type=float,
        default=10.0,
        help="say so when trials wait this long for resources with none running (default 10)",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="console output: 0 none from Ray (only warnings, errors and the summary), 1 one progress "
        "line per phase: trials done/running/pending, best so far, ETA (default), 2 Ray Tune's own "
        "tables and every result",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=None,
        help="retries of a failing trial, from its last checkpoint (default 2; resume: the study's); "
        "a trial still failing fails its phase: exit 3, and resume runs it again",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="a driver on another host whose lock goes unrenewed this long is taken over; one on this host "
        "only once its process is gone (default 60; resume: the study's)",
    )
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=None,
        help="how often the driver renews its lock and checks that it still holds it (default 10; resume: the study's)",
    )
    p.add_argument(
        "--storage-retry-seconds",
        type=float,
        default=None,
        help="how long reads and writes to object storage (s3://, gs://) are retried while it does not "
        "answer, before a trial or the driver fails (default 300; resume: the study's; 0: no retries)",
    )


# ------------------------------------------------------------------ train


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    values = {field: getattr(args, field) for _, field, _, _ in TRAIN_FLAGS if getattr(args, field) is not None}
    return TrainSettings.from_dict(values).validate()


def _pct(x: float) -> str:
    return "  n/a" if x != x else f"{100 * x:5.1f}"


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _resume_train(args)
    settings = settings_from_args(args)
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    fresh_dir(out, what="--out", fix="choose another --out", create=False)  # before loading data
    from rest.core.train import Trainer

    trainer = Trainer(settings, progress=ProgressBar("batches", log_from=None))  # loads data: bad input fails first
    out = fresh_dir(out, what="--out", fix="choose another --out")
    with writing(out / "settings.json", "free space and run the command again"):
        local(out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1))  # no partial file left
    print(f"training {settings.dataset} at {settings.conflict_pct:g}% conflicting, density {settings.density:g} "
          f"({settings.sparse}), reweight {settings.reweight} x{settings.lambda_upweight:g}, {settings.epochs} epochs "
          f"on {trainer.device} in {trainer.precision}; writing {out}", flush=True)  # fmt: skip
    return _train_loop(trainer, out)


def _resume_train(args: argparse.Namespace) -> int:
    """Continue `train --out DIR` from its last epoch checkpoint; records after it are trained again."""
    import torch

    from rest.core.train import Trainer

    given = [flag for flag, field, _, _ in TRAIN_FLAGS if getattr(args, field) is not None] + (
        ["--out"] if args.out else []
    )
    if given:
        raise UserError(f"--resume continues a run with its own settings; drop {', '.join(given)}")
    out = args.resume.expanduser().resolve()
    if not (out / "settings.json").is_file() or not (out / "checkpoint.pt").is_file():
        raise UserError(f"{out} holds no resumable run (settings.json and checkpoint.pt); pass a train --out directory")
    settings = TrainSettings.from_dict(json.loads((out / "settings.json").read_text())).validate()
    trainer = Trainer(settings, progress=ProgressBar("batches", log_from=None))
    trainer.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False, map_location="cpu"))  # our own file
    kept = [
        line for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line)["epoch"] <= trainer.epoch
    ]
    with writing(out / "metrics.jsonl", _carry_on(out)):
        local(out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    print(f"resuming {out} after epoch {trainer.epoch} of {settings.epochs}", flush=True)
    return _train_loop(trainer, out)


def _carry_on(out: Path) -> str:
    """What to do after a full disk: resume from the last checkpoint, or start afresh when there is none yet."""
    if (out / "checkpoint.pt").is_file():
        return f"free space and `{PROG} train --resume {out}`"
    return f"free space, remove {out} and run the command again"


def _append_record(path: Path, record: dict) -> None:
    """One line of metrics.jsonl; a line cut short by a full disk is taken back, so every line stays whole."""
    import os

    size = path.stat().st_size if path.exists() else 0
    try:
        with writing(path, _carry_on(path.parent)), open(path, "a") as metrics:
            metrics.write(json.dumps(record) + "\n")
    except UserError:
        os.truncate(path, size)
        raise


def _save_checkpoint(trainer, out: Path) -> None:
    """checkpoint.pt through a temporary file: a kill or a full disk mid-write leaves the previous one whole."""
    import os

    import torch

    tmp = out / "checkpoint.pt.tmp"
    try:
        with writing(out / "checkpoint.pt", _carry_on(out)):
            torch.save(trainer.state_dict(), tmp)
    except UserError:
        tmp.unlink(missing_ok=True)  # give back the space the partial file took
        raise
    os.replace(tmp, out / "checkpoint.pt")


def _train_loop(trainer, out: Path) -> int:
    """Train to the last epoch: one printed line, one jsonl record, TensorBoard scalars and a checkpoint per epoch."""
    from tensorboardX import SummaryWriter  # a Ray Tune dependency; the same event files a study's trials have

    settings = trainer.settings
    print("epoch  loss   val-worst val-avg  test-worst test-unbiased test-conflict  density   sec", flush=True)
    record = {}
    with SummaryWriter(str(out)) as board:
        while trainer.epoch < settings.epochs:
            record = {**trainer.run_epoch(), **trainer.data_fields}  # the samples it trained on, with each epoch
            _append_record(out / "metrics.jsonl", record)
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and value == value:
                    board.add_scalar(key, value, record["epoch"])
            _save_checkpoint(trainer, out)
            print(f"{record['epoch']:5d} {record['train_loss']:6.3f}  {_pct(record['val_worst_group_acc'])}     "
                  f"{_pct(record['val_avg_acc'])}    {_pct(record['test_worst_group_acc'])}      "
                  f"{_pct(record['test_unbiased_acc'])}         {_pct(record['test_conflict_acc'])}      "
                  f"{record['density']:.4f} {record['epoch_seconds']:5.1f}", flush=True)  # fmt: skip
    if not record:
        print(f"the run already finished all {settings.epochs} epochs")
        return 0
    print(f"selected epoch {record['best_epoch']} (best validation worst-group {_pct(record['best_val_worst_group_acc'])}%): "
          f"test worst-group {_pct(record['best_test_worst_group_acc'])}%, unbiased {_pct(record['best_test_unbiased_acc'])}%, "
          f"conflicting {_pct(record['best_test_conflict_acc'])}%")  # fmt: skip
    return 0


# ------------------------------------------------------------- run, resume


def _given_options(args: argparse.Namespace) -> dict:
    """The run options the flags give (None: not given), for rest.study.options.resolve_options."""
    from rest.study.options import CHECKS  # every run option, by RunOptions field; run and resume have a flag for each

    return {key: getattr(args, key) for key in CHECKS}


def _finish(path, spec, manifest: dict, storage: str) -> int:
    name = manifest["name"]
    stopped = [p for p, info in manifest["phases"].items() if info["status"] == "interrupted"]
    if stopped:
        print(
            f"study {name}: the {stopped[0]} phase has trials that ended before their planned epochs; "
            f"continue with: {PROG} resume {name} --storage {storage}"
        )
        return 1
    print(f"\nstudy {name} finished: {path}")
    _print_best(path, spec)
    return 0


def _print_best(path, spec) -> None:
    """The selected config of every cell, as the tables say it; a cell with failed configs says how many."""
    from rest.report.export import format_value
    from rest.report.results import read_study
    from rest.report.tables import best_configs

    best = best_configs(read_study(path, spec))
    print(
        f"best config per cell ({best['selection'].iloc[0] if not best.empty else 'no results'}; "
        f"test numbers of the selected epochs, mean over seeds):"
    )
    searched = spec.searched_keys()
    own = {m.name: ["density", *m.train, *m.search] for m in spec.methods}  # a methods study: each method's settings
    for _, row in best.iterrows():
        cell = ", ".join(format_value(row[k]) for k in spec.compare_within)
        flag = "  [small deciding group]" if row.get("small_deciding_group") else ""
        flag += f"  [{row['failed']}]" if row.get("failed") else ""
        if str(row["status"]).startswith(("failed", "no results")):  # a cell without a selected config
            print(f"  [{cell}] {row['row']:>17}: {row['status']}{flag}")
            continue
        keys = dict.fromkeys(searched + own.get(row["row"], []))
        config = ", ".join(f"{k} {format_value(row[k])}" for k in keys if k in row)
        print(
            f"  [{cell}] {row['row']:>17}: {config} -> test worst-group {_pct(row['best_test_worst_group_acc'])}%, "
            f"unbiased {_pct(row['best_test_unbiased_acc'])}% ({row['seeds']} seed{'s' if row['seeds'] > 1 else ''}){flag}"
        )


def _drive(path, spec, opts, storage: str) -> int:
    """Run the study's pending phases under the driver's stop signals; exit status for the user."""
    from rest.errors import TrialsFailed
    from rest.study.driver import Interrupted, StopSignals
    from rest.study.runner import run_study

    progress = StudyProgress() if opts.verbose == 1 else None
    with StopSignals() as stop:
        try:
            try:
                manifest = run_study(path, spec, opts, stop, progress)
            finally:
                if progress is not None:
                    progress.close()  # a bar cut short by a stop or a failure ends its line before the messages
        except Interrupted as exc:
            print(f"interrupted; continue with: {PROG} resume {opts.name} --storage {storage}", flush=True)
            return 128 + exc.signum
        except TrialsFailed:
            print(f"\nstudy {opts.name} FAILED (incomplete results so far): {path}")
            try:
                _print_best(path, spec)
            except Exception as exc:  # what ran is a courtesy; the failure below is the message that matters
                log.warning("cannot summarise the partial results (%s)", exc)
            raise  # main prints the trials, their errors and the fix; exit status 3
    return _finish(path, spec, manifest, storage)


def _command_text(args: argparse.Namespace, name: str | None) -> str:
    """The command as a user can paste it: the study file relative to here when it is below here."""
    import os

    space = Path(args.space)
    if space.resolve().is_relative_to(Path.cwd()):
        space = Path(os.path.relpath(space.resolve()))
    parts = [PROG, "run", space.as_posix()] + (["--name", name] if name else [])
    if args.storage:
        parts += ["--storage", args.storage]
    return " ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    from rest.storage import resolve_storage
    from rest.study.manifest import check_name
    from rest.study.options import resolve_options
    from rest.study.runner import begin_study
    from rest.study.space import load_space

    spec, text = load_space(args.space)
    name = check_name(args.name or spec.name)
    storage = resolve_storage(args.storage)
    opts, _ = resolve_options(storage, name, _given_options(args))
    path = begin_study(spec, text, opts, _command_text(args, args.name))
    print(f"study {opts.name}: {spec.grid_size()} configurations in the search grid; writing {path}", flush=True)
    return _drive(path, spec, opts, storage)


def cmd_resume(args: argparse.Namespace) -> int:
    from rest.storage import resolve_storage
    from rest.study.manifest import check_name, is_complete, open_study
    from rest.study.options import resolve_options, warn_overrides

    check_name(args.name)
    storage = resolve_storage(args.storage)
    path, spec, manifest = open_study(storage, args.name)
    if is_complete(manifest):
        print(f"study {args.name} is already finished; export it with: {PROG} export {args.name} --storage {storage}")
        return 0
    opts, overrides = resolve_options(storage, args.name, _given_options(args), manifest["options"])
    warn_overrides(args.name, overrides)
    print(f"resuming study {args.name} from {path}", flush=True)
    return _drive(path, spec, opts, storage)


# ------------------------------------------------------------------ export


def cmd_export(args: argparse.Namespace) -> int:
    from rest.report.export import export, read_for_export
    from rest.study.manifest import find_study

    studies = [read_for_export(find_study(s, args.storage)) for s in args.study]
    out = args.out or Path("results") / "-".join(s.name for s in studies)
    written = export(studies, out, [f.strip() for f in args.format.split(",") if f.strip()], args.selection)
    names = ", ".join(s.name for s in studies)
    print(f"exported {names} ({sum(len(s.all_trials()) for s in studies)} trials) to {written[0].parent}:")
    for path in written:
        print(f"  {path.name}")
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from rest.api import export_model

    model = export_model(args.study, args.cell, storage=args.storage, out=args.out)
    print(
        f"saved {model.source} (density {model.density:g}, epoch {model.epoch}) to {model.path} "
        f"({model.path.stat().st_size / 1e6:.2f} MB); load it with rest.load_model('{model.path}')"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from rest.deploy.model_file import predict_file

    if args.threads is not None:
        cpus = os.cpu_count() or 1
        if not 1 <= args.threads <= cpus:  # far too many threads crash PyTorch's thread pool
            raise UserError(
                f"--threads {args.threads} is outside 1..{cpus}, the CPUs of this machine; give a count in that range"
            )
        torch.set_num_threads(args.threads)
    r = predict_file(
        args.model, args.engine, args.batch_size, args.split, args.dataset, args.conflict_pct, args.data_root
    )
    print(
        f"{args.model}: {r['dataset']} {r['conflict_pct']:g}% {r['split']} split, {r['samples']} images, "
        f"{r['engine']} engine" + (f" ({r['sparse_layers']} of {r['layers']} layers sparse)" if "layers" in r else "")
    )
    if "avg" in r:
        print(
            f"accuracy: average {_pct(r['avg'])}%, worst-group {_pct(r['worst'])}%, "
            f"conflicting {_pct(r['conflict'])}% ({r['conflict_count']}), aligned {_pct(r['align'])}% ({r['align_count']})"
        )
    print(f"throughput: {r['images_per_s']:.0f} images/s (batch {r['batch_size']}, {r['threads']} threads)")
    return 0


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_status  # 2: bad input; 3: trials failed (errors.TrialsFailed)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
