"""The worker pool of prepare-data: a function over tasks in processes that die with
their parent.

The standard ``multiprocessing.Pool`` does the work; what is added is orphan
handling, because a builder killed with SIGKILL must not leave workers writing
into its temporary tree, and progress counting for the command line.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator

Progress = Callable[[int, int], None]  # (done, total)

_PARENT_PID: int | None = None


def _init_worker(parent_pid: int) -> None:
    """Workers die with the builder: Ctrl-C is the parent's to handle, SIGTERM (how the
    pool stops its workers) must kill quietly whatever handler the parent installed, and a
    parent killed with SIGKILL must not leave orphans writing into its temporary tree."""
    global _PARENT_PID
    _PARENT_PID = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the getppid check in each task still applies
    exit_if_orphaned()


def exit_if_orphaned() -> None:
    """Called by every task: a worker whose parent is gone stops at once."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_tasks(fn: Callable, tasks: Iterator, workers: int, total: int, progress: Progress | None) -> list:
    """fn over tasks, in a process pool when workers > 1; progress counts fn's integer results
    (or their first element). Results come back in completion order."""
    done, results = 0, []

    def tick(result) -> None:
        nonlocal done
        done += result if isinstance(result, int) else result[0]
        results.append(result)
        if progress:
            progress(done, total)

    if workers <= 1:
        for task in tasks:
            tick(fn(task))
        return results
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        for result in pool.imap_unordered(fn, tasks):
            tick(result)
    return results
