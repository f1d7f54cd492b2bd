"""The ``train`` command: one configuration, one line per epoch, resumable (``--resume DIR``).

The flags come from TrainSettings, one per field with help; torch is imported inside the handler.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from rest.cli.common import PROG, ProgressBar, pct
from rest.errors import UserError
from rest.settings import TrainSettings
from rest.storage import fresh_dir, local, writing


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


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train one configuration and print one line per epoch")
    _add_train_flags(p)
    p.set_defaults(handler=cmd_train)
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    values = {field: getattr(args, field) for _, field, _, _ in TRAIN_FLAGS if getattr(args, field) is not None}
    return TrainSettings.from_dict(values).validate()


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
            print(f"{record['epoch']:5d} {record['train_loss']:6.3f}  {pct(record['val_worst_group_acc'])}     "
                  f"{pct(record['val_avg_acc'])}    {pct(record['test_worst_group_acc'])}      "
                  f"{pct(record['test_unbiased_acc'])}         {pct(record['test_conflict_acc'])}      "
                  f"{record['density']:.4f} {record['epoch_seconds']:5.1f}", flush=True)  # fmt: skip
    if not record:
        print(f"the run already finished all {settings.epochs} epochs")
        return 0
    print(
        f"selected epoch {record['best_epoch']} "
        f"(best validation worst-group {pct(record['best_val_worst_group_acc'])}%): "
        f"test worst-group {pct(record['best_test_worst_group_acc'])}%, "
        f"unbiased {pct(record['best_test_unbiased_acc'])}%, "
        f"conflicting {pct(record['best_test_conflict_acc'])}%"
    )
    return 0
