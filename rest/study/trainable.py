"""The Ray Tune trainable: one REST training run, reporting every epoch, resumable from its checkpoints.

Each epoch's record gets the selection rule as one number (`val_rank`, ASHA's metric)
and its best value so far (`best_val_rank`, what a model-based searcher learns from).
The whole history of records goes to the trial's history file (``<trial_dir>/history.json``,
rewritten every epoch) and into each checkpoint; Ray gets only the few keys its
schedulers and searchers read (``contract.REPORTED``), which keeps its experiment snapshot small.
File and metric names are ``rest.study.contract``'s, shared with the driver and the study reader.

Test-only: ``REST_TUNE_TEST_DELAY="density=0.05,lambda_upweight=10:20"`` in the driver's
environment makes every trial whose config matches all the given values sleep 20 s
before each epoch, and say so in its log (tests make one trial slow to change arrival order,
or time a storage outage to fall inside an epoch).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rest import selection
from rest.core.model_format import is_compact
from rest.settings import TrainSettings
from rest.storage import on_filesystem
from rest.study import tune_ext
from rest.study.contract import (
    HISTORY_FILE,
    METRIC,
    SEARCHER_METRIC,
    STATE_FILE,
    flat_config,
    newest_state,
    read_checkpoint,
    reported,
)

log = logging.getLogger(__name__)

TEST_DELAY_ENV = "REST_TUNE_TEST_DELAY"


def delay_seconds(rule: str | None, config: dict) -> float:
    """Seconds to sleep before each epoch under a ``TEST_DELAY_ENV`` rule ("key=value,...:seconds"); 0 if no match."""
    if not rule:
        return 0.0
    match, _, seconds = rule.rpartition(":")
    for pair in match.split(","):
        key, _, text = pair.partition("=")
        value: Any = config.get(key.strip())  # whatever it is: compared as a number, else as text
        try:
            same = float(value) == float(text)
        except (TypeError, ValueError):
            same = str(value) == text
        if not same:
            return 0.0
    return float(seconds)


def _resume_state(ray_checkpoint) -> dict | None:
    """The newest training state of this trial: the newest readable checkpoint on storage.

    Ray snapshots its experiment state at most every few seconds, so after a driver
    crash it may hand back an older checkpoint than the newest one on storage (or
    none at all). Looking at the trial directory itself means no finished epoch with
    a checkpoint is ever trained again.
    """
    try:
        return newest_state(on_filesystem(*tune_ext.trial_storage()))
    except Exception as exc:  # fall back to what Ray hands back; the tune_ext contract test guards this
        log.warning("could not list this trial's checkpoints (%s); using Ray's", exc)
    if ray_checkpoint is None:
        return None
    from rest.storage import local

    with ray_checkpoint.as_directory() as d:
        return read_checkpoint(local(d))


def save_history(history: list[dict]) -> None:
    """Rewrite this trial's history file with every epoch record so far (before the epoch is reported)."""
    trial = on_filesystem(*tune_ext.trial_storage())
    if trial.is_local:
        trial.mkdir()  # object stores have no directories to make
    trial.join(HISTORY_FILE).write_text(json.dumps(history))


def rest_trainable(
    config: dict,
    checkpoint_every: int = 1,
    rung_epochs: tuple = (),
    test_delay: str | None = None,
    data_root: str | None = None,
) -> None:
    """Ray Tune function trainable: one REST configuration, checkpointed per epoch.

    Each checkpoint holds the full training state and the trial's whole history of
    epoch records (also as a small JSON file), so a trial resumed from it loses nothing
    Ray's snapshot missed; the trial's history file, rewritten before each report, holds
    every record for the study reader. It also checkpoints at every deterministic-halving
    rung epoch; resumed at one (a paused trial, or a driver restart), it reports that
    epoch's record again before training on, so the scheduler cuts (or replays) the rung
    first. A trial resumed at or past its last epoch reports its final record again and
    ends, and so does one whose checkpoint was compacted when it ended (rest.study.compact:
    it finished, or the scheduler stopped it). The first record after a resume says how
    long the setup and checkpoint load took (``restore_seconds``).
    `data_root`, when given, is where the dataset is now (the driver's, overriding the config's).
    """
    started = time.perf_counter()
    import ray
    import torch
    from ray import tune

    from rest.core.train import Trainer

    settings = TrainSettings.from_dict(flat_config(config))
    if data_root:
        settings = settings.replace(data_root=data_root)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(round(cpus))))
    state = _resume_state(tune.get_checkpoint())
    if state is not None and is_compact(state):  # compacted when it ended (finished, or stopped by the scheduler)
        if state.get("final_record"):
            tune.report(reported(state["final_record"]))
        return
    trainer = Trainer(settings)
    history: list[dict] = []
    if state is not None:
        trainer.load_state_dict(state)
        history = list(state.get("history", []))
        log.info("trial %s resumes after epoch %d", tune.get_context().get_trial_id(), trainer.epoch)
    if trainer.epoch >= settings.epochs and history:
        tune.report(reported(history[-1]))  # finished before the crash: let Ray and the scheduler see the end
        return
    restore_seconds = time.perf_counter() - started if state is not None else None
    if trainer.epoch in rung_epochs and history:
        tune.report(
            reported(history[-1])
        )  # paused at a rung: the scheduler sees it (and may stop us) before we train on
    resumed_from = trainer.epoch
    delay = delay_seconds(test_delay, flat_config(config))
    node = ray.get_runtime_context().get_node_id()
    primary = settings.selection
    while trainer.epoch < settings.epochs:
        if delay:
            log.warning("test delay: sleeping %g s before epoch %d", delay, trainer.epoch + 1)
            time.sleep(delay)
        record: dict[str, Any] = trainer.run_epoch()  # numbers; the fields added below are not all numbers
        record.update(trainer.data_fields)  # what it trained on: the subsample's seed and per-split counts
        record.update(resumed_from_epoch=resumed_from, node_id=node, pid=os.getpid())
        record[METRIC] = selection.scalar(record, primary)
        if restore_seconds is not None:
            record["restore_seconds"], restore_seconds = restore_seconds, None
        record[SEARCHER_METRIC] = max([record[METRIC]] + [r[METRIC] for r in history if METRIC in r])
        history.append(record)
        save_history(history)
        if trainer.epoch % checkpoint_every == 0 or trainer.epoch == settings.epochs or trainer.epoch in rung_epochs:
            with tempfile.TemporaryDirectory() as d:
                torch.save({**trainer.state_dict(), "history": history}, Path(d) / STATE_FILE)
                (Path(d) / HISTORY_FILE).write_text(json.dumps(history))
                tune.report(reported(record), checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(reported(record))
