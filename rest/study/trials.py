"""A phase's trials read back from storage: status, config, every epoch's record, one table row each.

The driver reads its own search phase with it to choose the confirm configs, and
``rest.report.results`` builds the study reader on it: one path for both.

Each trial's status, config and failure count come from Ray's experiment snapshot, read
with Ray's own reader (``ray.tune.ExperimentAnalysis``, imported inside a function: the one
piece of Ray here, a reader of files, never Ray's runtime). Its epoch records come from its
history file (``<trial_dir>/history.json``, rewritten by the trial after each epoch), one
read per trial, in parallel on object storage. Studies written before trials kept that file
fall back to Ray's reported records (``result.json``) merged with the history in the trial's
newest checkpoint: after a driver crash Ray's snapshot can miss the last epochs a trial
finished, while the checkpoint written with those epochs holds them all, so the history
there is the union of the two, one record per epoch. Nothing here writes.
"""

from __future__ import annotations

import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rest import selection
from rest.storage import Location
from rest.study.contract import (
    HISTORY_FILE,
    STATE_PREFIX,
    TRIAL_ERROR_FILE,
    ConfigRoles,
    checkpoint_history,
    flat_config,
    trial_dirname,
)
from rest.study.space import StudySpec

log = logging.getLogger(__name__)

READERS = 32  # trials read at once from object storage (each read mostly waits on the network)
CONFIG_KEYS = ("dataset", "conflict_pct", "density", "lambda_upweight", "reweight", "sparse", "seed", "selection")


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
            return error_line(self.location.join(TRIAL_ERROR_FILE).read_text())
        except (OSError, UnicodeDecodeError) as exc:  # FileNotFoundError among them
            return f"no readable error file in {self.location} ({exc.__class__.__name__})"

    def selected(self) -> dict | None:
        """The epoch record the selection rule picks from this trial's history."""
        return dict(selection.best_epoch(self.history, self.primary) or {}) or None


def read_phase(experiment: Location, phase: str) -> list[Trial]:
    """Every trial of one phase's Ray experiment ([] if the phase has no snapshot yet)."""
    if not any(c.name.startswith(STATE_PREFIX) for c in experiment.children()):
        return []
    analysis = experiment_analysis(experiment.path, experiment.fs)

    def read(t) -> Trial:
        trial_dir = experiment.join(trial_dirname(t))
        history = trial_history(trial_dir, lambda: _records(reported_frame(analysis, t)))
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


def experiment_analysis(path: str, fs):
    """Ray's ``ExperimentAnalysis`` of an experiment (its trials: status, config, failures) without
    reading every trial's reported records.

    Its constructor reads each trial's ``result.json``, one trial after another; the study
    reader reads each trial's own history file instead, in parallel, and asks for Ray's
    records (``reported_frame``) only of trials that have none (studies from before it).
    """
    from ray.tune import ExperimentAnalysis

    class TrialsOnly(ExperimentAnalysis):
        def _fetch_trial_dataframes(self) -> dict:
            return {}

    return TrialsOnly(path, storage_filesystem=fs)


def reported_frame(analysis, trial):
    """Every record `trial` reported to Ray (its ``result.json``) as a DataFrame; empty if there is none."""
    import pandas as pd

    try:
        return analysis._fetch_trial_dataframe(trial)
    except FileNotFoundError:  # it reported nothing yet, or its files are gone
        return pd.DataFrame()
    except Exception as exc:  # noqa: BLE001 - a damaged result.json: its checkpoint's history stands in
        log.warning("cannot read the records trial %s reported (%s)", trial.trial_id, exc)
        return pd.DataFrame()
