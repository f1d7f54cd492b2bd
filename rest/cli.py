"""Command line: builds typed settings from flags and calls the library.

Heavy modules (torch, ray, pandas) are imported inside the command handlers, so
``--help`` answers at once. Errors a user can fix are printed on one line and
exit with status 2; nothing on disk is overwritten.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import UserError
from .settings import (
    DATASET_NAMES, DISTRIBUTIONS, MODEL_NAMES, OPTIMIZERS, REWEIGHT_NAMES, SCHEDULES, SPARSE_METHODS, TrainSettings,
)  # fmt: skip

log = logging.getLogger("rest")
PROG = "tune_search.py"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage dumps."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


_D = TrainSettings()
# flag, settings field, type, help. Choices are checked by TrainSettings.validate so the
# error lists them in one line.
TRAIN_FLAGS: list[tuple[str, str, Callable, str]] = [
    ("--dataset", "dataset", str, f"dataset: {', '.join(DATASET_NAMES)} (default {_D.dataset}, embedded)"),
    ("--conflict-pct", "conflict_pct", float, f"percent of bias-conflicting training samples (default {_D.conflict_pct:g})"),
    ("--data-root", "data_root", str, "root of an LfF-layout dataset (cmnist, cifar10c, bffhq)"),
    ("--model", "model", str, f"model: {', '.join(MODEL_NAMES)} (default: the dataset's)"),
    ("--width", "width", int, f"ResNet base width (default {_D.width})"),
    ("--density", "density", float, f"fraction of conv/linear weights kept, in (0, 1] (default {_D.density:g} = dense)"),
    ("--sparse", "sparse", str, f"mask update rule: {', '.join(SPARSE_METHODS)} (default {_D.sparse})"),
    ("--distribution", "distribution", str, f"layer-wise density: {', '.join(DISTRIBUTIONS)} (default {_D.distribution})"),
    ("--update-frequency", "update_frequency", int, f"optimizer steps between mask updates (default {_D.update_frequency})"),
    ("--drop-rate", "drop_rate", float, f"initial drop fraction, cosine-decayed (default {_D.drop_rate:g})"),
    ("--reweight", "reweight", str, f"sampling: {', '.join(REWEIGHT_NAMES)} (default {_D.reweight})"),
    ("--lambda-upweight", "lambda_upweight", float, f"upweighting factor, >= 1 (default {_D.lambda_upweight:g})"),
    ("--jtt-epochs", "jtt_epochs", int, f"ERM epochs of JTT's identification model (default {_D.jtt_epochs})"),
    ("--optimizer", "optimizer", str, f"optimizer: {', '.join(OPTIMIZERS)} (default {_D.optimizer})"),
    ("--lr", "lr", float, f"learning rate (default {_D.lr:g})"),
    ("--weight-decay", "weight_decay", float, f"weight decay (default {_D.weight_decay:g})"),
    ("--schedule", "schedule", str, f"LR schedule: {', '.join(SCHEDULES)} (default {_D.schedule})"),
    ("--batch-size", "batch_size", int, f"batch size (default {_D.batch_size})"),
    ("--epochs", "epochs", int, f"epochs (default {_D.epochs})"),
    ("--seed", "seed", int, f"random seed (default {_D.seed})"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N (default auto: the GPU if there is one)"),
]


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    for flag, field, kind, help_text in TRAIN_FLAGS:
        p.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    p.add_argument("--out", type=Path, default=None, help="directory for metrics.jsonl and checkpoint.pt (default runs/train-<time>)")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="REST (reweighted sparse training) studies on Ray Tune.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("train", help="train one configuration and print one line per epoch")
    _add_train_flags(p)
    p.set_defaults(handler=cmd_train)
    return parser


# ------------------------------------------------------------------ train

def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    values = {field: getattr(args, field) for _, field, _, _ in TRAIN_FLAGS if getattr(args, field) is not None}
    return TrainSettings.from_dict(values).validate()


def _fresh_dir(path: Path, what: str) -> Path:
    path = path.expanduser().resolve()
    if path.exists() and any(path.iterdir()):
        raise UserError(f"{what} {path} already exists and is not empty; choose another directory (nothing was overwritten)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path} ({exc.strerror}); choose a writable directory") from None
    return path


def _progress_bar(stream=sys.stderr) -> Callable[[int, int], None] | None:
    """A one-line progress bar, drawn only on a terminal."""
    if not stream.isatty():
        return None

    def draw(done: int, total: int) -> None:
        filled = int(30 * done / total)
        stream.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} batches")
        if done == total:
            stream.write("\r" + " " * 60 + "\r")
        stream.flush()

    return draw


def _pct(x: float) -> str:
    return "  n/a" if x != x else f"{100 * x:5.1f}"


def cmd_train(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    out = (args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output directory {out} already exists and is not empty; choose another --out (nothing was overwritten)")
    import torch

    from .train import Trainer

    trainer = Trainer(settings, progress=_progress_bar())  # loads data: bad input fails before anything is written
    out = _fresh_dir(out, "output directory")
    (out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1))
    print(f"training {settings.dataset} at {settings.conflict_pct:g}% conflicting, density {settings.density:g} "
          f"({settings.sparse}), reweight {settings.reweight} x{settings.lambda_upweight:g}, {settings.epochs} epochs "
          f"on {trainer.device}; writing {out}", flush=True)  # fmt: skip
    print("epoch  loss   val-worst val-avg  test-worst test-unbiased test-conflict  density   sec", flush=True)
    record = {}
    with open(out / "metrics.jsonl", "a") as metrics:
        while trainer.epoch < settings.epochs:
            record = trainer.run_epoch()
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            print(f"{record['epoch']:5d} {record['train_loss']:6.3f}  {_pct(record['val_worst_group_acc'])}     "
                  f"{_pct(record['val_avg_acc'])}    {_pct(record['test_worst_group_acc'])}      "
                  f"{_pct(record['test_unbiased_acc'])}         {_pct(record['test_conflict_acc'])}      "
                  f"{record['density']:.4f} {record['epoch_seconds']:5.1f}", flush=True)  # fmt: skip
    torch.save(trainer.state_dict(), out / "checkpoint.pt")
    print(f"selected epoch {record['best_epoch']} (best validation worst-group {_pct(record['best_val_worst_group_acc'])}%): "
          f"test worst-group {_pct(record['best_test_worst_group_acc'])}%, unbiased {_pct(record['best_test_unbiased_acc'])}%, "
          f"conflicting {_pct(record['best_test_conflict_acc'])}%")  # fmt: skip
    return 0


# ------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
