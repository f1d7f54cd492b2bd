"""The driver's options: one dataclass, checked and resolved by one function, for the command
line (`run`, `resume`) and the Python API (`rest.run_study`) alike.

A new study runs with the options its caller gives. An existing study runs with the options
it last ran with (``manifest["options"]``) unless the caller gives another value: an
override, kept from then on and said in one line. Where the driver runs (the Ray address)
and how it reports (verbose, the stall report, autoscaling) belong to each driver run, not
to the study: they are the caller's every time.

Nothing here imports Ray or torch.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rest.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Settings of the driver: what ``run`` / ``resume`` flags and ``rest.run_study`` keywords give."""

    storage: str
    name: str
    address: str | None = None  # None: a private local Ray; "auto": this machine's running cluster; HOST:PORT
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    data_root: str | None = None
    verbose: int = 1
    autoscaling: bool = False  # the cluster adds nodes on demand: skip the per-node feasibility check
    stall_minutes: float = 10.0  # warn once when trials wait this long for resources with none running
    lease_seconds: float = 60.0  # a driver on another host whose lock is not renewed for this long is taken over
    heartbeat_seconds: float = 10.0  # how often the driver renews its lock and checks that it still holds it
    storage_retry_seconds: float = 300.0  # object storage that does not answer is retried this long before an error

    def __post_init__(self):
        check_lock_timing(self.lease_seconds, self.heartbeat_seconds)


def check_lock_timing(lease: float, heartbeat: float) -> None:
    """The lease must outlast a few heartbeats, or a slow storage write would look like a lost driver."""
    if not (_number(heartbeat) and heartbeat > 0):
        raise UserError(f"--heartbeat-seconds {heartbeat:g} must be a positive number of seconds (default 10)")
    if not (_number(lease) and lease >= 2 * heartbeat):
        raise UserError(
            f"--lease-seconds {lease:g} must be at least twice --heartbeat-seconds {heartbeat:g} (defaults 60 and 10)"
        )


# The study's own options: an existing study keeps them unless the caller gives another value.
KEPT = (
    "data_root",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "max_failures",
    "lease_seconds",
    "heartbeat_seconds",
    "storage_retry_seconds",
)


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# option -> (is the value valid, what it must be; how to fix it)
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "address": (
        lambda v: isinstance(v, str) and bool(v.strip()),
        "auto, local or HOST:PORT; leave it out for a private local Ray",
    ),
    "cpus_per_trial": (lambda v: _number(v) and v > 0, "positive; give the CPUs one trial uses, e.g. 1"),
    "gpus_per_trial": (lambda v: _number(v) and v >= 0, ">= 0; fractions share a GPU, e.g. 0.5"),
    "max_concurrent": (
        lambda v: _whole(v) and v > 0,
        "a positive whole number; leave it out to run as many as resources allow",
    ),
    "max_failures": (
        lambda v: _whole(v) and v >= 0,
        "a whole number >= 0; it counts the retries of a trial whose worker dies",
    ),
    "data_root": (
        lambda v: isinstance(v, (str, os.PathLike)) and os.path.isdir(os.path.expanduser(v)),
        "an existing directory; pass the root of an LfF-layout dataset (docs/datasets.md)",
    ),
    "verbose": (lambda v: _whole(v) and v in (0, 1, 2), "0, 1 or 2"),
    "autoscaling": (lambda v: isinstance(v, bool), "true or false"),
    "stall_minutes": (lambda v: _number(v) and v > 0, "positive; give minutes, e.g. 10"),
    "lease_seconds": (lambda v: _number(v) and v > 0, "a positive number of seconds (default 60)"),
    "heartbeat_seconds": (lambda v: _number(v) and v > 0, "a positive number of seconds (default 10)"),
    "storage_retry_seconds": (lambda v: _number(v) and v >= 0, "a number of seconds >= 0 (default 300; 0: no retries)"),
}


def flag(option: str) -> str:
    return f"--{option.replace('_', '-')}"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if _number(value) and not _whole(value) else str(value)


def check_option(option: str, value: Any, whose: str = "") -> Any:
    """`value` if valid for `option`, else a one-line UserError naming the option and the fix."""
    valid, what = CHECKS[option]
    if not valid(value):
        raise UserError(f"{whose}{flag(option)} {_show(value)} must be {what}")
    return value


def resolve_options(
    storage: str, name: str, given: dict[str, Any], stored: dict[str, Any] | None = None
) -> tuple[RunOptions, list[str]]:
    """The RunOptions of one driver run, and the study options it overrides.

    `given`: the caller's options by RunOptions field, None meaning "not given";
    `stored`: ``manifest["options"]`` of an existing study, None for a new one. Every
    given value is checked, and the study's data root too (it may have moved). Without
    an address, ``$RAY_ADDRESS`` is used, else a private local Ray. Returns the options
    and one line per study option given with another value, e.g.
    ``--max-concurrent 1 (the study's: none)``.
    """
    unknown = set(given) - set(CHECKS)
    if unknown:
        raise TypeError(f"unknown run option(s): {', '.join(sorted(unknown))}")
    values = {k: check_option(k, v) for k, v in given.items() if v is not None}
    if "data_root" in values:
        values["data_root"] = os.path.abspath(os.path.expanduser(values["data_root"]))
    if "address" not in values and os.environ.get("RAY_ADDRESS"):
        values["address"] = os.environ["RAY_ADDRESS"]
    if stored is None:
        return RunOptions(storage=storage, name=name, **values), []
    overrides = [
        f"{flag(k)} {_show(values[k])} (the study's: {_show(stored.get(k))})"
        for k in KEPT
        if k in values and values[k] != stored.get(k)
    ]
    kept = {k: stored[k] for k in KEPT if k not in values and stored.get(k) is not None}
    if kept.get("data_root") and not os.path.isdir(kept["data_root"]):
        raise UserError(
            f"the study's data root {kept['data_root']} is not a directory any more; pass --data-root "
            f"(data_root=) with the dataset's new place"
        )
    return RunOptions(storage=storage, name=name, **values, **kept), overrides


def warn_overrides(name: str, overrides: list[str]) -> None:
    """One warning line per study option this run overrides (kept for later runs)."""
    for line in overrides:
        log.warning("study %s: overriding the study's option %s; later runs keep it", name, line)
