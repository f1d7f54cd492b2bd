"""The ``prepare-data`` command: build Colored MNIST or Corrupted CIFAR-10 in the LfF
layout from the raw files torchvision downloads, or check any LfF tree.

``add_parser(subparsers)`` adds the command to the main command line (rest/cli/main.py).
Only argparse-level modules are imported here: numpy, Pillow and torch load inside
the handlers, so ``--help`` answers at once. Progress goes to stderr (a tqdm bar on a
terminal); stdout carries the result (a summary line, or check's table).
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rest.cli.common import PROG, Parser, ProgressBar
from rest.errors import UserError

log = logging.getLogger("rest.core.prepare")

DEFAULT_RATIOS = "0.5,1,2,5"
CHECK_DATASET_NAMES = ("cmnist", "cifar10c", "bffhq")


# ----------------------------------------------------------------- parser


def _add_build_flags(p: argparse.ArgumentParser, source: str) -> None:
    p.add_argument(
        "--raw", type=Path, required=True, metavar="DIR", help=f"directory holding {source} as torchvision downloads it"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output root (built in a hidden sibling, renamed when complete)",
    )
    p.add_argument(
        "--ratios",
        default=DEFAULT_RATIOS,
        metavar="LIST",
        help=f"conflicting percentages, one <pct>pct folder each (default {DEFAULT_RATIOS})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the validation split, bias labels and rendering (default 0)"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out, once the new tree is complete")
    p.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes encoding images (default: all cores)"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `prepare-data {cmnist,cifar10c,check}` to a subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "prepare-data", help="build cmnist / cifar10c in the LfF layout, or check an LfF tree",
        description="Build Colored MNIST or Corrupted CIFAR-10 in the LfF/DisEnt folder layout from torchvision's "
                    "raw files, or check an existing tree (see docs/datasets.md).",
    )  # fmt: skip
    sub = p.add_subparsers(dest="prepare_command", metavar="{cmnist,cifar10c,check}", parser_class=Parser)
    sub.required = True

    cm = sub.add_parser("cmnist", help="Colored MNIST from MNIST (torchvision.datasets.MNIST files)",
                        description="Colored MNIST: digit = y, colour = b (the embedded colored_digits colouring), "
                                    "exact per-class conflict quotas, a biased validation split, "
                                    "an unbiased test split.")  # fmt: skip
    _add_build_flags(cm, "MNIST/raw/")
    cm.set_defaults(handler=cmd_build, dataset="cmnist", severity=4)

    cc = sub.add_parser("cifar10c",
                        help="Corrupted CIFAR-10 (type 0) from CIFAR-10 (torchvision.datasets.CIFAR10 files)",
                        description="Corrupted CIFAR-10, type 0: y = CIFAR class, b = one of ten corruptions "
                                    "(snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate, "
                                    "saturate).")  # fmt: skip
    _add_build_flags(cc, "cifar-10-batches-py/")
    cc.add_argument(
        "--severity",
        type=int,
        default=4,
        choices=range(1, 6),
        metavar="1..5",
        help="corruption severity (default 4, as LfF)",
    )
    cc.set_defaults(handler=cmd_build, dataset="cifar10c")

    ck = sub.add_parser("check", help="validate an LfF-layout tree (cmnist, cifar10c, bffhq)",
                        description="Counts per split, group and class, conflict ratio per <pct>pct folder, malformed "
                                    "names, unreadable images, duplicates across splits. "
                                    "Exit 2 if anything is wrong.")  # fmt: skip
    ck.add_argument("dir", type=Path, metavar="DIR", help="root of the tree")
    ck.add_argument(
        "--dataset", choices=CHECK_DATASET_NAMES, default=None, help="also check labels against this dataset's classes"
    )
    ck.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes decoding images (default: all cores)"
    )
    ck.set_defaults(handler=cmd_check)
    return p


# ---------------------------------------------------------------- signals


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, timeouts, schedulers) cleans up like Ctrl-C instead of dying mid-write."""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------- handlers


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} is below 1")


def cmd_build(args: argparse.Namespace) -> int:
    _check_workers(args.workers)
    from rest.core.prepare import build, parse_ratios

    ratios = parse_ratios(args.ratios)
    with _sigterm_as_interrupt():
        summary = build(args.dataset, args.raw, args.out, ratios=ratios, seed=args.seed, severity=args.severity,
                        force=args.force, workers=args.workers,
                        progress=ProgressBar("files", logger=log.name))  # fmt: skip
    print(f"built {summary.dataset} at {', '.join(f'{r:g}' for r in summary.ratios)}% conflicting in {summary.out}: "
          f"{summary.files} files ({summary.rendered} images rendered) in {summary.seconds:.1f} s; "
          f"check it with: {PROG} prepare-data check {summary.out} --dataset {summary.dataset}")  # fmt: skip
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    _check_workers(args.workers)
    from rest.core.prepare import check_tree, format_report

    report = check_tree(args.dir, args.dataset, workers=args.workers, progress=ProgressBar("images", logger=log.name))
    print(format_report(report), flush=True)
    if report.problems:
        raise UserError(report.summary())
    print(report.summary())
    return 0
