"""How far a study's phase has come: trial counts, best so far and time left, as small pure functions.

The study layer fills a ``PhaseProgress`` from Ray Tune's callback hooks and hands it to
whatever progress function its caller passed (the command line draws it as one line);
``status`` computes its time left with the same ``eta_seconds``. Nothing here imports Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FINISHED = ("TERMINATED", "ERROR")


def eta_seconds(epochs_left: int, seconds_per_epoch: float | None, slots: int) -> float | None:
    """Seconds until `epochs_left` trial-epochs are trained, `slots` trials at a time;
    None before an epoch was timed."""
    if not seconds_per_epoch or slots < 1:
        return None
    return epochs_left * seconds_per_epoch / slots


@dataclass(frozen=True)
class PhaseProgress:
    """One phase at one moment: what a progress function receives."""

    phase: str
    done: int  # ended (finished, stopped by ASHA, or failed)
    running: int
    pending: int  # waiting for resources, or not created yet
    failed: int
    best: float | None  # best validation primary metric so far (a fraction)
    metric: str  # its name for people, e.g. "val worst-group"
    eta: float | None  # seconds, an upper bound under early stopping

    @property
    def total(self) -> int:
        return self.done + self.running + self.pending


Progress = Callable[[PhaseProgress], None]  # what a caller of rest.study.runner.run_study passes to be told


def count_trials(statuses: Iterable[str], total: int) -> tuple[int, int, int, int]:
    """(done, running, pending, failed) of a phase of `total` trials, some not created yet (pending)."""
    statuses = list(statuses)
    done = sum(s in FINISHED for s in statuses)
    running = sum(s == "RUNNING" for s in statuses)
    return done, running, max(total, len(statuses)) - done - running, statuses.count("ERROR")


def epochs_left(trials: Iterable[tuple[str, int, int]], unseen: int, planned: int) -> int:
    """Trial-epochs still to train: (status, epochs run, planned epochs) of each trial,
    plus `unseen` trials of `planned`."""
    left = sum(max(0, want - ran) for status, ran, want in trials if status not in FINISHED)
    return left + max(0, unseen) * planned


def duration(seconds: float | None) -> str:
    """1h02m, 3m20s, 45s; "?" when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(p: PhaseProgress) -> str:
    """The line a console shows,
    e.g. ``search: 3/8 done, 2 running, 3 pending, best val worst-group 72.5%, ETA 1m20s``."""
    parts = [f"{p.phase}: {p.done}/{p.total} done", f"{p.running} running", f"{p.pending} pending"]
    if p.failed:
        parts.append(f"{p.failed} failed")
    if p.best is not None:
        parts.append(f"best {p.metric} {100 * p.best:.1f}%")
    parts.append(f"ETA {duration(p.eta)}" if p.running + p.pending else "finished")
    return ", ".join(parts)


class Every:
    """A progress function that passes ``describe(p)`` to `show` at most every `seconds`.

    A phase's first line and its last (nothing running or pending) are always shown; a
    line equal to the one shown before never is. For logs and pipes, where a redrawn
    line would be a new line each time.
    """

    def __init__(self, show: Callable[[str], None], seconds: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.show, self.seconds, self.clock = show, seconds, clock
        self.last: tuple[str, float, str] | None = None  # (phase, time, line) of the last line shown

    def __call__(self, p: PhaseProgress) -> None:
        line, now = describe(p), self.clock()
        if self.last is not None and line == self.last[2]:
            return
        finished = not (p.running + p.pending)
        if self.last is None or self.last[0] != p.phase or finished or now - self.last[1] >= self.seconds:
            self.show(line)
            self.last = (p.phase, now, line)
