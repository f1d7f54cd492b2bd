"""The one reader of a study: trials, per-epoch histories and checkpoints, read-only.

Built on Ray Tune's ``ExperimentAnalysis`` (trial status, config, failure count)
plus each trial's history file (``<trial_dir>/history.json``, every epoch record,
rewritten by the trial after each epoch), one read per trial, in parallel on object
storage. Studies written before trials kept that file fall back to Ray's reported
records (``result.json``) merged with the history in the trial's newest checkpoint:
after a driver crash Ray's snapshot can miss the last epochs a trial finished, while
the checkpoint written with those epochs holds them all, so the history there is the
union of the two, one record per epoch.

Nothing here writes: export and export-model read a study through this module and
leave its storage exactly as it was.
"""

from __future__ import annotations

import json
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rest import selection
from rest.errors import UserError
from rest.storage import Location
from rest.study import tune_ext
from rest.study.contract import HISTORY_FILE, STATE_FILE, ConfigRoles, checkpoint_dirs, checkpoint_history, flat_config  # noqa: F401 - read from here too
from rest.study.manifest import PHASES, frozen_spec
from rest.study.space import StudySpec

log = logging.getLogger(__name__)

# A finished trial's checkpoint, compacted by the driver (rest.study.compact): no optimizer state, the
# best-epoch weights in model-file form. Read before STATE_FILE in the same checkpoint directory.
COMPACT_FILE = "compact.pt"
COMPACT_FORMAT = "rest-compact-checkpoint-v1"
READERS = 32  # trials read at once from object storage (each read mostly waits on the network)
CONFIG_KEYS = ("dataset", "conflict_pct", "density", "lambda_upweight", "reweight", "sparse", "seed", "selection")


class ResultsError(UserError):
    pass


def is_compact(state: dict) -> bool:
    """Whether a checkpoint's state is a finished trial's compact one (it cannot be trained on)."""
    return state.get("format") == COMPACT_FORMAT


def read_checkpoint(ckpt: Location) -> dict:
    """The state in one checkpoint directory: its compact file if it has one, else its training state."""
    import io

    import torch

    try:
        f = ckpt.fs.open_input_file(ckpt.join(COMPACT_FILE).path)
    except FileNotFoundError:
        f = ckpt.fs.open_input_file(ckpt.join(STATE_FILE).path)
    with f:
        return torch.load(io.BytesIO(f.read()), weights_only=False, map_location="cpu")


def checkpoint_states(trial: Location):
    """(checkpoint, training state, None) of a trial's checkpoints, newest first; (checkpoint,
    None, reason) where one cannot be read (a crash mid-write, a damaged file)."""
    for ckpt in checkpoint_dirs(trial):
        try:
            state = read_checkpoint(ckpt)
        except Exception as exc:  # incomplete checkpoint (crash mid-write): the previous one
            yield ckpt, None, exc
            continue
        yield ckpt, state, None


def newest_state(trial: Location, min_epoch: int = 0) -> dict | None:
    """The newest readable training state in a trial's checkpoints (None if there is none).

    What a resumed trial continues from. Not what export-model writes: an older state's
    best-so-far weights need not be the epoch the tables report (``rest.api.selected_epoch_state``).
    """
    for ckpt, state, exc in checkpoint_states(trial):
        if state is None:
            log.warning("skipping unreadable checkpoint %s: %s", ckpt, exc)
        elif state["epoch"] >= min_epoch:
            return state
    return None


ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(: |$)")  # 'rest.core.data.base.DataError: ...'
NAMED = re.compile(r"^[A-Za-z_][\w.]*: \S")


def error_line(text: str) -> str:
    """The first line of the last error in a Ray error file, without the module path of its type.

    Ray appends a 'Failure # N' block per failure, each a remote traceback; its last
    line that names an exception type is what the trial raised ('DataError: data root ...').
    """
    block = text.rsplit("Failure # ", 1)[-1]
    lines = [ANSI.sub("", line).rstrip() for line in block.splitlines()[1:]]
    raised = [line for line in lines if RAISED.match(line)] or [line for line in lines if NAMED.match(line)]
    if raised:
        kind, _, message = raised[-1].partition(": ")
        return f"{kind.rsplit('.', 1)[-1]}: {message}".rstrip(": ")
    return next((line.strip() for line in lines if line.strip()), "no error message recorded")


def merge_history(reported: list[dict], kept: list[dict]) -> list[dict]:
    """One record per epoch, in epoch order: Ray's reported records over the checkpoint's, key by key
    (so an epoch Ray missed, or a key it was not sent, comes from the checkpoint)."""
    by_epoch: dict[int, dict] = {int(r["epoch"]): dict(r) for r in kept if "epoch" in r}
    for r in reported:
        if "epoch" in r and r.get("epoch") == r.get("epoch"):
            by_epoch.setdefault(int(r["epoch"]), {}).update(r)
    return [by_epoch[e] for e in sorted(by_epoch)]


def trial_history(trial: Location, reported) -> list[dict]:
    """A trial's epoch records: its history file, else (older studies) `reported()`, Ray's records,
    merged with the newest checkpoint's history."""
    try:
        return merge_history(trial.join(HISTORY_FILE).read_json(), [])
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as exc:  # damaged: Ray's records and the checkpoint still hold it
        log.warning("%s/%s is damaged (%s); reading Ray's records and the checkpoint instead", trial, HISTORY_FILE, exc)
    return merge_history(reported(), checkpoint_history(trial))


@dataclass
class Trial(ConfigRoles):
    phase: str
    trial_id: str
    status: str
    config: dict
    failures: int
    history: list[dict] = field(default_factory=list)
    location: Location | None = None

    @property
    def epochs_run(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0

    @property
    def primary(self) -> str:
        return self.config.get("selection") or "worst_group"

    def error(self) -> str:
        """The first line of the error that ended this trial ('' unless it failed), from Ray's error file."""
        if self.status != "ERROR":
            return ""
        if self.location is None:
            return "no error file"
        try:
            return error_line(self.location.join(tune_ext.TRIAL_ERROR_FILE).read_text())
        except (OSError, UnicodeDecodeError) as exc:  # FileNotFoundError among them
            return f"no readable error file in {self.location} ({exc.__class__.__name__})"

    def selected(self) -> dict | None:
        """The epoch record the selection rule picks from this trial's history."""
        return dict(selection.best_epoch(self.history, self.primary) or {}) or None


@dataclass
class StudyResults:
    location: Location
    spec: StudySpec
    manifest: dict
    phases: dict[str, list[Trial]]
    _trials: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.location.name)

    @property
    def path(self) -> Location:
        return self.location

    def all_trials(self) -> list[Trial]:
        return [t for phase in PHASES for t in self.phases.get(phase, [])]

    def trials(self) -> pd.DataFrame:
        """One row per trial of every phase: config, status, epochs, and its selected epoch's metrics."""
        if self._trials is None:  # export's tables and summary all read it: build it once
            self._trials = pd.DataFrame([trial_row(t, self.spec) for t in self.all_trials()])
        return self._trials.copy()

    def history(self) -> pd.DataFrame:
        """One row per (trial, epoch): every record each trial reported, exactly once."""
        rows = [
            {
                "phase": t.phase,
                "trial_id": t.trial_id,
                "role": t.role,
                **{k: t.config.get(k) for k in CONFIG_KEYS},
                **{k: v for k, v in r.items() if k != "config"},
            }
            for t in self.all_trials()
            for r in t.history
        ]
        return pd.DataFrame(rows)


def read_study(location: Location, spec: StudySpec | None = None) -> StudyResults:
    """Read a study directory (manifest, definition, both phases) without writing anything."""
    try:
        manifest = location.join("manifest.json").read_json()
    except FileNotFoundError:
        raise ResultsError(
            f"{location} is not a study directory (no manifest.json); pass a study's path or name"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResultsError(f"{location}/manifest.json is damaged (not JSON); restore it from a copy") from None
    spec = spec or frozen_spec(location, manifest)
    phases = {phase: read_phase(location.join(phase), phase) for phase in PHASES}
    return StudyResults(location, spec, manifest, phases)


def read_phase(experiment: Location, phase: str) -> list[Trial]:
    """Every trial of one phase's Ray experiment ([] if the phase has no snapshot yet)."""
    if not any(c.name.startswith(tune_ext.STATE_PREFIX) for c in experiment.children()):
        return []
    analysis = tune_ext.experiment_analysis(experiment.path, experiment.fs)

    def read(t) -> Trial:
        trial_dir = experiment.join(f"trial_{t.trial_id}")
        history = trial_history(trial_dir, lambda: _records(tune_ext.reported_frame(analysis, t)))
        return Trial(phase, t.trial_id, t.status, flat_config(t.config), int(t.num_failures), history, trial_dir)

    with ThreadPoolExecutor(1 if experiment.is_local else READERS) as pool:
        trials = list(pool.map(read, analysis.trials))
    return sorted(trials, key=lambda tr: tr.trial_id)


def _records(frame: pd.DataFrame) -> list[dict]:
    """Records of a result.json frame, without Ray's flattened config columns."""
    keep = [c for c in frame.columns if not c.startswith("config/")]
    return [
        {k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v) and k not in ("epoch",))}
        for r in frame[keep].to_dict("records")
    ]


def trial_row(t: Trial, spec: StudySpec) -> dict:
    """A trial as one table row; `best_*` are the metrics of its selected epoch."""
    planned = int(t.config.get("epochs", spec.max_epochs))
    finished = t.status == "TERMINATED" and t.epochs_run >= planned
    row: dict[str, Any] = {
        "phase": t.phase, "trial_id": t.trial_id, "status": t.status, "role": t.role,
        "epochs_run": t.epochs_run, "epochs_planned": planned,
        "stopped_early": t.status == "TERMINATED" and 0 < t.epochs_run < planned,
        "finished": finished, "retries": t.failures, "error": t.error(),
    }  # fmt: skip
    for key in dict.fromkeys((*CONFIG_KEYS, *spec.search, *spec.method_keys())):
        row[key] = t.config.get(key)
    if spec.methods:
        row["method"] = t.method
    best = t.selected() or {}
    row["best_epoch"] = best.get("epoch", math.nan)
    for key, value in best.items():
        if key.startswith(("val_", "test_")) and isinstance(value, (int, float)):
            row[f"best_{key}"] = value
    row["deciding_group_size"] = selection.deciding_group_size(best, t.primary) if best else math.nan
    last = t.history[-1] if t.history else {}
    for key in ("nonzero_params", "dense_params", "inference_flops", "dense_inference_flops"):
        row[key] = last.get(key, math.nan)
    row["train_seconds"] = sum(float(r.get("epoch_seconds", 0.0)) for r in t.history)
    return row


def mean_se(values: pd.Series) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)) of the non-missing values; se is nan for n < 2."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)  # numpy: export calls this per config and metric
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def aggregate(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per config (`keys`): every ``best_*`` metric as mean over its trials (seeds), plus ``*_se``.

    Rows keep the trial-level column names (``best_val_worst_group_acc`` is the mean
    over seeds), so the selection rule ranks configs exactly as it ranks trials.
    """
    metrics = [c for c in trials.columns if c.startswith("best_") and c != "best_epoch"]
    rows = []
    for values, group in trials.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        row.update(seeds=int(group["seed"].nunique()), trials=len(group), trials_finished=int(group["finished"].sum()))
        for col in metrics:
            row[col], row[f"{col}_se"] = mean_se(group[col])
        row["deciding_group_size"] = float(group["deciding_group_size"].min())
        row["nonzero_rel"] = float((group["nonzero_params"] / group["dense_params"]).mean())
        row["flops_rel"] = float((group["inference_flops"] / group["dense_inference_flops"]).mean())
        row["epochs_run"] = ",".join(str(e) for e in group["epochs_run"])
        row["stopped_early"] = int(group["stopped_early"].sum())
        row["seed_list"] = ",".join(str(s) for s in group["seed"])
        rows.append(row)
    return pd.DataFrame(rows)


def search_configs(study: StudyResults) -> pd.DataFrame:
    """The search phase's configs that ran an epoch, aggregated over seeds."""
    spec = study.spec
    trials = study.trials()
    search = trials[(trials["phase"] == "search") & (trials["epochs_run"] > 0)]
    return aggregate(search, spec.compare_within + ["density"] + [k for k in spec.searched_keys() if k != "density"])
