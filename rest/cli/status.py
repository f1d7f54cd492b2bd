"""The ``status`` command: one plain-text table of a study's progress, read from storage (rest/report/status.py).

``add_parser(subparsers)`` adds the command to the main command line (rest/cli/main.py).
Neither Ray nor torch is imported: status answers while a driver runs the study,
from any machine that can read its storage.
"""

from __future__ import annotations

import argparse
import math
import signal
import time

from rest.errors import UserError

COLUMNS = ("phase", "cell", "trials", "done", "run", "pend", "err", "stop", "epochs", "best so far")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "status",
        help="a study's progress per phase and cell (trials, epochs, best so far, ETA, "
        "stalls, driver), read from storage while it runs",
    )
    p.add_argument("study", metavar="NAME", help="study name (under --storage) or path")
    p.add_argument(
        "--storage",
        default=None,
        help="directory or s3:// / gs:// URI holding studies (default $REST_TUNE_STORAGE or ./studies)",
    )
    p.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="SECONDS",
        help="show it again every SECONDS until the study ends (Ctrl-C stops watching)",
    )
    p.set_defaults(handler=cmd_status)
    return p


class CtrlC:
    """SIGINT while watching: during the pause between refreshes it stops at once; during a refresh
    it stops after that refresh is shown (a second Ctrl-C stops at once).

    Why not Python's KeyboardInterrupt alone: raised anywhere in a refresh, it can land between a
    lock's acquire and the ``with`` block that releases it (the reader's thread pools take locks),
    and the process then hangs at exit. A watcher did once, in CI.
    """

    def __init__(self) -> None:
        self.pressed = False
        self.pausing = False

    def __call__(self, signum, frame) -> None:
        if self.pausing or self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def pause(self, seconds: float) -> bool:
        """Sleep `seconds`; False if Ctrl-C was pressed before or during it."""
        self.pausing = True
        try:
            if not self.pressed:
                time.sleep(seconds)
        except KeyboardInterrupt:
            self.pressed = True
        finally:
            self.pausing = False
        return not self.pressed


def cmd_status(args: argparse.Namespace) -> int:
    from rest.report.status import find, study_status

    if args.watch is not None and not (math.isfinite(args.watch) and args.watch > 0):
        raise UserError(f"--watch {args.watch:g} is not a positive number of seconds; give e.g. --watch 10")
    study = find(args.study, args.storage)
    ctrl_c = CtrlC()
    if args.watch is not None:
        signal.signal(signal.SIGINT, ctrl_c)
    try:
        while True:
            status = study_status(study)
            print(render(status), flush=True)
            if args.watch is None or status.finished or not ctrl_c.pause(args.watch):
                return 0  # Ctrl-C ends watching; nothing was being written
            print(flush=True)
    except KeyboardInterrupt:  # a second Ctrl-C during a refresh, or Ctrl-C without --watch
        return 0


# ------------------------------------------------------------------ rendering


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def best_text(cell, primary: str) -> str:
    if not cell.best:
        return "-"
    config = ", ".join(f"{k} {_value(v)}" for k, v in cell.best.items())
    from rest.selection import PRIMARY_METRIC_KEYS

    score = cell.best_metrics.get(f"val_{PRIMARY_METRIC_KEYS[primary]}")
    seeds = f", {cell.best_seeds} seeds" if cell.best_seeds > 1 else ""
    return f"{config} (val {primary.replace('_', '-')} {100 * score:.1f}%{seeds})" if score is not None else config


def rows(status) -> list[tuple]:
    out = []
    for phase in status.phases:
        if phase.status == "skipped":
            continue
        for c in phase.cells:
            out.append(
                (
                    phase.phase,
                    ", ".join(_value(v) for v in c.cell),
                    c.planned,
                    c.done,
                    c.running,
                    c.pending,
                    c.errored,
                    c.stopped,
                    f"{c.epochs_done}/{c.epochs_planned}",
                    best_text(c, status.primary),
                )
            )
    return out


def table(body: list[tuple]) -> str:
    cells = [tuple(str(v) for v in r) for r in [COLUMNS, *body]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    right = {2, 3, 4, 5, 6, 7, 8}
    return "\n".join(
        "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
        for r in cells
    )


def header(status) -> list[str]:
    phases = ", ".join(f"{p.phase} {p.status}" for p in status.phases)
    lines = [f"study {status.name} ({status.location}): {phases}"]
    for p in status.phases:
        if p.status in ("done", "skipped") or not p.cells:
            continue
        spe = f"{p.seconds_per_epoch:.1f} s/epoch" if p.seconds_per_epoch else "no epoch timed yet"
        lines.append(f"{p.phase}: {p.slots} running, {spe}, ETA {duration(p.eta_seconds)}")
    return lines


def driver_line(lock) -> str:
    if lock is None:
        return "driver: none holds the study"
    state = "alive" if lock.alive else "gone or cut off" if lock.alive is False else "unknown"
    return (
        f"driver: pid {lock.pid} on {lock.host} ({state}), since {lock.started}, "
        f"last heartbeat {lock.heartbeat_age:.0f} s ago"
    )


def render(status) -> str:
    lines = header(status) + [driver_line(status.lock), "", table(rows(status))]
    if status.stalls:
        lines += ["", "stalls (stalls.log):"] + [f"  {line}" for line in status.stalls]
    if status.finished:
        lines += ["", "finished"]
    return "\n".join(lines)
