"""What every command of the command line shares: the program name, the argument
parser class and the progress bars (of a long job, and of a study's phases).

Imported by ``rest.cli.main`` and by each command module, never the other way round,
so the command modules do not import one another. Nothing heavy is imported at
module level (``--help`` must answer at once); tqdm loads with the first bar drawn.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

PROG = "tune_search.py"


def pct(x: float) -> str:
    """An accuracy as a percentage in five characters, 'n/a' for NaN."""
    return "  n/a" if x != x else f"{100 * x:5.1f}"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage dumps."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


class ProgressBar:
    """A ``(done, total)`` callback, as library functions take for progress, drawn with tqdm.

    On a terminal: a tqdm bar on `stream` that is erased when done reaches total; a
    count that starts again (the next epoch) starts a new bar. Elsewhere (logs, CI)
    no bar: a log line every 10 % for jobs of at least `log_from` items, and nothing
    for smaller ones or when `log_from` is None.
    """

    def __init__(self, what: str, stream=None, log_from: int | None = 10_000, logger: str = "rest"):
        self.what, self.stream, self.log_from = what, stream or sys.stderr, log_from
        self.log = logging.getLogger(logger)
        self.tty = self.stream.isatty()
        self.bar: Any = None  # a tqdm bar while a count runs
        self.next_tenth = 1

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            self._draw(done, total)
        elif self.log_from is not None and total >= self.log_from and done * 10 >= self.next_tenth * total:
            self.next_tenth = done * 10 // max(total, 1) + 1
            self.log.info("%d/%d %s (%d%%)", done, total, self.what, 100 * done // max(total, 1))

    def _draw(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is not None and (done < self.bar.n or total != self.bar.total):
            self.close()
        if self.bar is None:
            self.bar = tqdm(total=total, unit=f" {self.what}", file=self.stream, leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StudyProgress:
    """The progress function of ``run`` / ``resume`` (``--verbose 1``): one line per phase on stderr.

    On a terminal, a tqdm bar per phase redrawn in place (trials done of all, running,
    pending, best so far, time left) and kept when the phase ends; elsewhere (logs, CI)
    the same line printed at most every `every` seconds.
    """

    def __init__(self, stream=None, every: float = 10.0):
        from rest.study.progress import Every

        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.bar: Any = None  # a tqdm bar while a phase runs
        self.phase = None
        self.printed = Every(lambda line: print(line, file=self.stream, flush=True), every)

    def __call__(self, p) -> None:
        if not self.tty:
            self.printed(p)
            return
        from tqdm import tqdm

        from rest.study.progress import describe

        if self.bar is not None and self.phase != p.phase:
            self.close()
        if self.bar is None:
            self.bar = tqdm(total=p.total, file=self.stream, dynamic_ncols=True, bar_format="{desc} |{bar:20}|")
            self.phase = p.phase
        self.bar.total, self.bar.n = p.total, p.done
        self.bar.set_description_str(describe(p))  # redraws
        if not (p.running + p.pending):
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
