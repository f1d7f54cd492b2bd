"""A study's progress, read from storage alone while it runs (``tune_search.py status``, ``Study.status()``).

Never imports Ray or torch and never writes. Its sources, all in the study directory:

- ``manifest.json``: the phases and their status; the study definition gives the
  trials each cell plans (search: its grid or budget; confirm: ``confirm_configs.json``
  once written, else what the definition asks for);
- each phase's newest Ray experiment snapshot (``<phase>/experiment_state-*.json``),
  parsed as JSON: every trial's status, config and last reported result;
- each trial's history (``history.json`` in its directory, or in its newest checkpoint
  in studies written before that file existed): its selected epoch by ``rest.selection``;
- ``search_rungs.json`` (deterministic halving's cuts), ``stalls.log`` (the stall watch)
  and ``driver.lock`` (the running driver and its heartbeat).

A trial counts as *stopped* when the scheduler ended it before its planned epochs
(search phase under ASHA); trials Ray has not created yet count as pending. Planned
trial-epochs count a stopped trial at the epochs it ran and every other trial at its
planned epochs, so they fall as the scheduler stops trials and equal the epochs done
when the study is finished. The ETA (``rest.study.progress.eta_seconds``) is the epochs left
at the measured seconds per epoch (Ray's ``time_this_iter_s``) over the trials running
now: an upper bound while ASHA may still stop trials.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rest import selection
from rest.errors import StudyError
from rest.storage import Location, existing_storage, open_location
from rest.study.contract import (
    HISTORY_FILE,
    STALL_LOG,
    STATE_PREFIX,
    ConfigRoles,
    checkpoint_history,
    flat_config,
    trial_dirname,
)
from rest.study.lock import DriverLock, pid_alive, this_machine
from rest.study.manifest import PHASES, RUNGS_FILE, frozen_spec, is_complete, read_manifest
from rest.study.progress import eta_seconds
from rest.study.space import StudySpec, method_configs

log = logging.getLogger(__name__)

CONFIRM_FILE = "confirm_configs.json"
BASELINE_ROLE_NAMES = ("erm_baseline", "dense_reweighted_baseline")
READERS = 16  # histories read at once (object storage answers each read in tens of milliseconds)


@dataclass
class TrialState(ConfigRoles):
    """One trial as the snapshot and its history say."""

    trial_id: str
    status: str  # Ray's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    config: dict
    epochs: int  # epochs reported so far
    planned: int  # epochs it is to train
    last: dict = field(default_factory=dict)  # the last result in the snapshot
    selected: dict | None = None  # its selected epoch's record (rest.selection)


@dataclass
class CellStatus:
    cell: tuple  # the compare_within values (and the method, in a methods study)
    planned: int = 0  # trials planned
    done: int = 0
    running: int = 0
    pending: int = 0  # waiting for a slot, paused at a rung, or not created yet
    errored: int = 0
    stopped: int = 0  # ended early by the scheduler
    epochs_done: int = 0
    epochs_planned: int = 0
    rung_cuts: int = 0  # deterministic halving's cuts taken in this cell
    best: dict | None = None  # the best config so far: its searched settings (and role)
    best_metrics: dict = field(default_factory=dict)  # its selected epochs' validation numbers, mean over seeds
    best_seeds: int = 0

    @property
    def trials(self) -> int:
        return self.done + self.running + self.pending + self.errored + self.stopped


@dataclass
class PhaseStatus:
    phase: str
    status: str  # the manifest's: pending, running, interrupted, failed, done, skipped
    cells: list[CellStatus]
    snapshot: str | None = None  # the experiment snapshot read
    seconds_per_epoch: float | None = None
    slots: int = 0  # trials running now
    eta_seconds: float | None = None

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.cells)


@dataclass
class LockStatus:
    host: str | None
    pid: int | None
    started: str | None
    heartbeat_age: float  # seconds since the holder last renewed the lock
    alive: (
        bool | None
    )  # on this machine: whether its process lives; elsewhere: whether the heartbeat is within its lease


@dataclass
class StudyStatus:
    name: str
    location: str
    finished: bool
    phases: list[PhaseStatus]
    lock: LockStatus | None
    stalls: list[str]
    primary: str
    read_seconds: float = 0.0

    @property
    def eta_seconds(self) -> float | None:
        etas = [p.eta_seconds for p in self.phases if p.status not in ("done", "skipped")]
        known = [e for e in etas if e is not None]
        return sum(known) if len(known) == len(etas) else None

    def phase(self, name: str) -> PhaseStatus:
        return next(p for p in self.phases if p.phase == name)


# ------------------------------------------------------------------ finding


def find(name_or_path: str, storage: str | None = None) -> Location:
    """A study's directory from its path or its name under storage.

    An unknown study is an error of one line naming the known ones."""
    direct = open_location(name_or_path)
    if direct.join("manifest.json").is_file():
        return direct
    root = open_location(existing_storage(storage))
    if "/" not in name_or_path and root.join(name_or_path, "manifest.json").is_file():
        return root.join(name_or_path)
    known = sorted(c.name for c in root.children() if c.join("manifest.json").is_file())
    raise StudyError(
        f"no study '{name_or_path}' in {root}; known studies: {', '.join(known) or 'none'} "
        f"(pass --storage, or the study's path)"
    )


# ------------------------------------------------------------------ snapshot


def snapshot_files(experiment: Location) -> list[Location]:
    """The phase's experiment snapshots, newest first (Ray names them by the driver session's start)."""
    found = [c for c in experiment.children() if c.name.startswith(STATE_PREFIX) and c.name.endswith(".json")]
    return sorted(found, key=lambda c: c.name, reverse=True)


def read_snapshot(experiment: Location) -> tuple[str | None, list[dict]]:
    """(file name, [{"meta": ..., "run": ...} per trial]) of the newest readable snapshot.

    (None, []) before the first snapshot."""
    for file in snapshot_files(experiment):
        try:
            data = file.read_json()
        except (ValueError, OSError) as exc:  # caught mid-rewrite: the one before
            log.debug("skipping snapshot %s: %s", file, exc)
            continue
        return file.name, [
            {"meta": _loads(meta), "run": {"last_result": last_result(run)}} for meta, run in data.get("trial_data", [])
        ]
    return None, []


def _loads(part) -> dict:
    return json.loads(part) if isinstance(part, str) else dict(part)


LAST_RESULT = re.compile(r'"last_result"\s*:\s*')
DECODER = json.JSONDecoder()


def last_result(run) -> dict:
    """The last result in a trial's runtime part of the snapshot, parsed alone.

    The rest of that part (Ray's per-metric statistics, ~90 % of the snapshot in studies
    written before the slim records) is not needed: decoding only this object keeps
    status fast on 1,000-trial studies. Any other layout is parsed whole.
    """
    if isinstance(run, str):
        found = LAST_RESULT.search(run)
        if found:
            try:
                value = DECODER.raw_decode(run, found.end())[0]
                return value if isinstance(value, dict) else {}
            except ValueError:
                pass
    return _loads(run).get("last_result") or {}


def trial_state(entry: dict, spec: StudySpec) -> TrialState:
    meta, run = entry["meta"], entry["run"]
    config = flat_config(meta.get("config") or {})
    last = run.get("last_result") or {}
    planned = int(config.get("epochs") or spec.max_epochs)
    return TrialState(str(meta.get("trial_id")), str(meta.get("status")), config, _epoch(last), planned, last)


def _epoch(record: dict) -> int:
    value = record.get("epoch")
    return int(value) if isinstance(value, (int, float)) and value == value else 0


# ------------------------------------------------------------------ histories


def read_history(trial_dir: Location) -> list[dict] | None:
    """The trial's epoch records: its history file, else its newest checkpoint's; None if neither can be read."""
    try:
        return trial_dir.join(HISTORY_FILE).read_json()
    except (FileNotFoundError, ValueError):
        return checkpoint_history(trial_dir) or None


def reported_selection(last: dict, primary: str) -> dict | None:
    """The selected epoch as the trial reported it (``best_val_*``, chosen by the same rule).

    None if its records do not carry it."""
    if f"best_val_{selection.PRIMARY_METRIC_KEYS[primary]}" not in last:
        return None
    return {
        "epoch": last.get("best_epoch"),
        **{k.removeprefix("best_"): v for k, v in last.items() if k.startswith("best_val_")},
    }


def add_selected(trials: list[TrialState], experiment: Location, primary: str) -> None:
    """Each trial that reported an epoch gets its selected epoch: from its report when that carries it
    (no file read), else from its history (which also holds epochs newer than the snapshot)."""
    for t in trials:
        t.selected = reported_selection(t.last, primary)
    reported = [t for t in trials if t.selected is None and (t.epochs > 0 or t.status == "RUNNING")]

    def one(t: TrialState) -> None:
        try:
            history = read_history(experiment.join(trial_dirname(t))) or []
        except OSError as exc:
            log.debug("no history for trial %s: %s", t.trial_id, exc)
            history = []
        history = [r for r in history if isinstance(r, dict)] or ([t.last] if t.epochs else [])
        t.epochs = max(t.epochs, max((_epoch(r) for r in history), default=0))
        best = selection.best_epoch(history, primary)
        t.selected = dict(best) if best else None

    if experiment.is_local:
        for t in reported:
            one(t)
        return
    with ThreadPoolExecutor(READERS) as pool:
        list(pool.map(one, reported))


# ------------------------------------------------------------------ plans


def cell_key(config: dict, spec: StudySpec) -> tuple:
    method = (config.get("extra") or {}).get("method")
    return tuple(config.get(k) for k in spec.compare_within) + ((method,) if spec.methods else ())


def search_plan(spec: StudySpec) -> dict[tuple, list[int]]:
    """Cell -> the planned epochs of each of its search trials (the grouping ``per_cell.TrialGroups`` uses)."""
    if spec.methods:
        plan: dict[tuple, list[int]] = {}
        for config in method_configs(spec):
            plan.setdefault(cell_key(config, spec), []).append(int(config.get("epochs") or spec.max_epochs))
        return plan
    cells = spec.cells()
    per_cell = spec.num_samples if spec.search_alg.model_based else spec.grid_size() // max(len(cells), 1)
    return {cell_key(c, spec): [spec.max_epochs] * per_cell for c in cells}


def confirm_plan(spec: StudySpec, configs: list[dict] | None) -> dict[tuple, list[int]]:
    """Cell -> the planned epochs of each confirm trial: from confirm_configs.json once written, else the definition."""
    if spec.confirm is None:
        return {}
    plan: dict[tuple, list[int]] = {}
    if configs is not None:
        for config in configs:
            config = flat_config(config)
            plan.setdefault(cell_key(config, spec), []).append(int(config.get("epochs") or spec.train.epochs))
        return plan
    runs = spec.confirm.top_k * (1 + len(BASELINE_ROLE_NAMES) * bool(spec.confirm.baseline and not spec.methods))
    epochs = spec.confirm.epochs or spec.train.epochs
    return {cell: [epochs] * runs * len(spec.confirm.seeds) for cell in search_plan(spec)}


def rung_cuts(book: dict | None, width: int) -> Counter:
    """Cell -> cuts taken, from deterministic halving's book (its groups start with the cell's values)."""
    cuts: Counter = Counter()
    for group, rungs in ((book or {}).get("groups") or {}).items():
        cuts[tuple(json.loads(group)[:width])] += len(rungs)
    return cuts


# ------------------------------------------------------------------ counting


def classify(t: TrialState, early_stopping: bool) -> str:
    """done, running, pending, errored or stopped (by the scheduler)."""
    if t.status == "ERROR":
        return "errored"
    if t.status == "RUNNING":
        return "running"
    if t.status == "TERMINATED":
        if t.epochs >= t.planned:
            return "done"
        if early_stopping and t.epochs > 0:
            return "stopped"
    return "pending"  # PENDING, PAUSED (at a rung, or for a slot), or cut short and to be resumed


def count_cell(cell: CellStatus, trials: list[TrialState], planned: list[int], early_stopping: bool) -> None:
    kinds = Counter(classify(t, early_stopping) for t in trials)
    for kind, n in kinds.items():
        setattr(cell, kind, n)
    missing = max(0, len(planned) - len(trials))
    cell.pending += missing
    cell.planned = max(len(planned), len(trials))
    cell.epochs_done = sum(min(t.epochs, t.planned) for t in trials)
    kept = sum(t.epochs if classify(t, early_stopping) == "stopped" else t.planned for t in trials)
    unborn = max(0, sum(planned) - sum(t.planned for t in trials)) if missing else 0  # trials Ray has not created yet
    cell.epochs_planned = kept + unborn


def _config_key(value: Any) -> tuple:
    return (
        (0, float(value), "")
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else (1, 0.0, str(value))
    )


def best_config(trials: list[TrialState], keys: list[str], primary: str) -> tuple[dict | None, dict, int]:
    """(config, mean selected-epoch validation numbers, seeds) of the best config so far, as export ranks configs.

    Each trial's selected epoch, averaged over the config's seeds, ranked by ``selection.rank_key``;
    baselines excluded."""
    groups: dict[tuple, list[TrialState]] = {}
    for t in trials:
        if t.selected and t.role not in BASELINE_ROLE_NAMES:
            groups.setdefault(tuple(t.config.get(k) for k in keys) + (t.role,), []).append(t)
    if not groups:
        return None, {}, 0
    order = sorted(groups, key=lambda g: tuple(_config_key(v) for v in g))
    metrics = ("val_" + selection.PRIMARY_METRIC_KEYS[primary], "val_avg_acc", "val_loss")
    # (every grouped trial has a selected epoch: the test only narrows its type)
    rows = [{f"best_{m}": _mean(t.selected.get(m) for t in groups[g] if t.selected) for m in metrics} for g in order]
    winner = selection.select(rows, primary, prefix="best_val_")[0]
    group = order[winner]
    config = dict(zip(keys, group[:-1])) | ({"role": group[-1]} if group[-1] != "search" else {})
    return config, {m: rows[winner][f"best_{m}"] for m in metrics}, len({t.config.get("seed") for t in groups[group]})


def _mean(values) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and v == v]
    return sum(numbers) / len(numbers) if numbers else None


def seconds_per_epoch(trials: list[TrialState]) -> float | None:
    """Mean wall seconds of the trials' last reported epoch.

    Ray's time_this_iter_s, else the trainer's epoch_seconds."""
    times = [t.last.get("time_this_iter_s", t.last.get("epoch_seconds")) for t in trials if t.epochs > 0]
    return _mean(times)


# ------------------------------------------------------------------ assembling


def phase_status(
    study: Location, spec: StudySpec, phase: str, info: dict, plan: dict[tuple, list[int]], book: dict | None = None
) -> tuple[PhaseStatus, list[TrialState]]:
    """One phase's cells from its newest snapshot and its trials' histories."""
    experiment = study.join(phase)
    snapshot, entries = read_snapshot(experiment)
    trials = [trial_state(e, spec) for e in entries]
    primary = spec.train.selection
    add_selected(trials, experiment, primary)
    by_cell: dict[tuple, list[TrialState]] = {cell: [] for cell in plan}
    for t in trials:
        by_cell.setdefault(cell_key(t.config, spec), []).append(t)
    early = phase == "search" and spec.scheduler.type == "asha"
    cuts = rung_cuts(book, len(spec.compare_within) + bool(spec.methods)) if phase == "search" else Counter()
    keys = [k for k in spec.searched_keys() if k != "seed"]
    cells = []
    for cell, members in by_cell.items():
        status = CellStatus(cell, rung_cuts=cuts.get(cell, 0))
        count_cell(status, members, plan.get(cell, []), early)
        status.best, status.best_metrics, status.best_seeds = best_config(members, keys, primary)
        cells.append(status)
    result = PhaseStatus(
        phase,
        info.get("status", "pending"),
        cells,
        snapshot,
        seconds_per_epoch(trials),
        sum(t.status == "RUNNING" for t in trials),
    )
    return result, trials


def _read_json(file: Location) -> Any:
    try:
        return file.read_json()
    except (FileNotFoundError, ValueError):
        return None


def lock_status(study: Location) -> LockStatus | None:
    """The driver holding the study, from its lock file (None when no driver holds it)."""
    holder = _read_json(study.join(DriverLock.FILE))
    if not isinstance(holder, dict):
        return None
    age = time.time() - float(holder.get("heartbeat") or 0)
    pid = holder.get("pid") if isinstance(holder.get("pid"), int) else None
    here = this_machine()
    if pid and all(holder.get(k) == here[k] for k in ("host", "boot", "pidns")):
        alive = pid_alive(pid, holder.get("pid_started"))
    else:
        alive = age <= float(holder.get("lease") or 60.0)
    return LockStatus(holder.get("host"), pid, holder.get("started"), age, alive)


def stall_lines(study: Location, last: int = 3) -> list[str]:
    try:
        return study.join(STALL_LOG).read_text().splitlines()[-last:]
    except FileNotFoundError:
        return []


def study_status(study: Location, spec: StudySpec | None = None) -> StudyStatus:
    """Everything ``status`` shows, read from the study directory `study`."""
    started = time.perf_counter()
    manifest = read_manifest(study)
    spec = spec or frozen_spec(study, manifest)
    plans = {"search": search_plan(spec), "confirm": confirm_plan(spec, _read_json(study.join(CONFIRM_FILE)))}
    book = _read_json(study.join(RUNGS_FILE))
    phases = [phase_status(study, spec, p, manifest["phases"].get(p, {}), plans[p], book)[0] for p in PHASES]
    add_etas(phases, (manifest.get("options") or {}).get("max_concurrent"))
    return StudyStatus(
        manifest.get("name", study.name),
        study.uri,
        is_complete(manifest),
        phases,
        lock_status(study),
        stall_lines(study),
        spec.train.selection,
        time.perf_counter() - started,
    )


def add_etas(phases: list[PhaseStatus], max_concurrent: int | None) -> None:
    """Each unfinished phase's ETA: its epochs left at the measured epoch time over the trials running now.

    A phase not timed yet (confirm before it starts) takes another phase's epoch time; with
    nothing running, the study's --max-concurrent (or one trial at a time).
    """
    timed = next((p.seconds_per_epoch for p in phases if p.seconds_per_epoch), None)
    slots = max((p.slots for p in phases), default=0) or max_concurrent or 1
    for p in phases:
        if p.status == "skipped":
            continue
        left = max(0, p.total("epochs_planned") - p.total("epochs_done"))
        p.eta_seconds = 0.0 if left == 0 else eta_seconds(left, p.seconds_per_epoch or timed, p.slots or slots)
