"""Ray Tune study orchestration: two phases, per-cell ASHA, checkpoints, resume.

A study lives in ``<storage>/<name>/``:

    study.yaml            copy of the study definition (frozen: manifest.json keeps its hash and text)
    manifest.json         options and the status of each phase
    search/               Ray Tune experiment: ASHA over the search space
    search_rungs.json     deterministic ASHA's rung cuts, stored before they are acted on (rest/study/rungs.py)
    confirm_configs.json  top-k configs per cell (+ both baselines) x confirm seeds
    confirm/              Ray Tune experiment: those configs to full epochs, no early stopping

``run_study`` runs whichever phase is not done, restoring a phase's experiment with
``Tuner.restore`` when it has a snapshot, so a fresh run and a resume take the same
path. A phase is done only when every one of its trials, read back from storage,
ended at its planned epochs or was stopped by ASHA; an interrupted phase (Ctrl-C,
SIGTERM, a crash) is resumed, never taken as finished. A phase with a trial that
ended in an error after its retries is ``failed``: ``run_study`` raises
``TrialsFailed`` naming the trials and their errors, the next phase does not start,
and a resume retries those trials (after the user fixed the cause).

The pieces it puts together: rest.study.manifest (the study directory), rest.study.search
(per-cell ASHA and searchers), rest.study.trainable (one trial), rest.study.tracking (trackers,
the stall watch) and rest.study.driver (Ray connection, stop signals, the driver lock).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from rest import selection
from rest.errors import StudyError, TrialsFailed
from rest.storage import Location, writing
from rest.study import contract, tune_ext
from rest.study.callbacks import CompactFinished, ProgressWatch, StallWatch
from rest.study.compact import compact_finished
from rest.study.driver import Interrupted, StopSignals, check_feasible, connect
from rest.study.failures import failed_message
from rest.study.lock import DriverLock, LockLost
from rest.study.manifest import (
    PHASES,
    create_study,
    is_complete,
    phase_complete,
    read_manifest,
    refuse_existing,
    resume_after_full_disk,
    write_manifest,
)
from rest.study.options import RunOptions
from rest.study.progress import Progress
from rest.study.search import fixed_configs, rung_epochs, search_param_space, search_phase
from rest.study.space import Confirm, StudySpec
from rest.study.tracking import make_callbacks
from rest.study.trainable import TEST_DELAY_ENV, rest_trainable
from rest.study.trials import Trial, read_phase

log = logging.getLogger(__name__)

BASELINES: dict[str, dict[str, Any]] = {
    # role -> changes to the cell's selected config: dense ERM, and dense with the
    # same reweighting and lambda (what REST's "dense" runs are), so REST's gain can
    # be split into what sparsity adds and what upweighting adds.
    "erm_baseline": {"density": 1.0, "reweight": "none", "lambda_upweight": 1.0},
    "dense_reweighted_baseline": {"density": 1.0},
}


def begin_study(spec: StudySpec, yaml_text: str, opts: RunOptions, command: str) -> Location:
    """Everything that can fail on bad input, then the study directory: nothing is created before."""
    refuse_existing(opts.storage, opts.name)  # before paying for Ray start-up
    make_callbacks(spec, opts.name, "search")  # a tracker whose package is missing fails now
    connect(
        opts.address,
        opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial,
        quiet=opts.verbose < 2,
    )
    check_feasible(spec, opts)
    prepare_data(with_options(spec, opts))  # bad data fails here, before the study directory exists
    return create_study(spec, yaml_text, opts, command)


# ------------------------------------------------------------------- phases


def with_options(spec: StudySpec, opts: RunOptions) -> StudySpec:
    """The study as this driver runs it: ``--data-root`` (its only route to training) in the fixed settings."""
    if not opts.data_root:
        return spec
    return dataclasses.replace(spec, train=spec.train.replace(data_root=opts.data_root))


def trainable_options(spec: StudySpec) -> dict:
    """``rest_trainable``'s keyword arguments for a study (read in the driver, sent with the trainable)."""
    return {
        "checkpoint_every": spec.checkpoint_every,
        "rung_epochs": rung_epochs(spec),
        "test_delay": os.environ.get(TEST_DELAY_ENV),
    }


def _trainable(spec: StudySpec, opts: RunOptions):
    from ray import tune

    resources = {
        "cpu": opts.cpus_per_trial or spec.resources.cpus_per_trial,
        "gpu": opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial,
    }
    # The data root goes to restored trials too (their configs keep the one they started with).
    fn = tune.with_parameters(rest_trainable, **trainable_options(spec), data_root=opts.data_root)
    return tune.with_resources(fn, resources)


def ray_verbose(verbose: int) -> int:
    """Ray Tune's verbosity under ours: 2 is Ray's own output (tables, every result); below, Ray says nothing."""
    return 2 if verbose >= 2 else 0


def _callbacks(phase: str, path: Location, spec: StudySpec, opts: RunOptions, progress: Progress | None) -> list:
    """The callbacks of one phase.

    The trackers, the stall watch, the compaction of ended trials and, given a progress function,
    the progress watch."""
    callbacks = make_callbacks(spec, opts.name, phase) + [
        StallWatch(opts.stall_minutes * 60, path),
        CompactFinished(),
    ]
    if progress is not None:
        planned = (confirm_settings(spec).epochs or spec.train.epochs) if phase == "confirm" else spec.max_epochs
        callbacks.append(ProgressWatch(progress, phase, planned, spec.train.selection))
    return callbacks


def _tuner(
    phase: str,
    path: Location,
    spec: StudySpec,
    opts: RunOptions,
    progress: Progress | None,
    param_space: dict,
    scheduler,
    search_alg=None,
    num_samples: int = 1,
    max_concurrent: int | None = None,
):
    from ray import tune

    storage_path, storage_filesystem = path.ray_storage
    run_config = tune.RunConfig(
        name=phase,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem,  # trial workers get the storage retries through it
        callbacks=_callbacks(phase, path, spec, opts, progress),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        verbose=ray_verbose(opts.verbose),
    )
    tune_config = tune.TuneConfig(
        scheduler=scheduler,
        search_alg=search_alg,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        trial_dirname_creator=contract.trial_dirname,
        reuse_actors=True,  # keeps torch imported between trials: a new worker costs seconds
    )
    return tune.Tuner(_trainable(spec, opts), param_space=param_space, tune_config=tune_config, run_config=run_config)


def confirm_settings(spec: StudySpec) -> Confirm:
    """The confirm settings, for code that runs only in the confirm phase."""
    confirm = spec.confirm
    assert confirm is not None  # a study without them has its confirm phase skipped (manifest.create_study)
    return confirm


def select_confirm_configs(spec: StudySpec, trials: list[Trial]) -> list[dict]:
    """Per cell: the top-k configs by the selection rule, and both baselines, x confirm seeds."""
    from rest.study.trials import aggregate, trial_row

    rows = [trial_row(t, spec) for t in trials if t.history]
    if not rows:
        return []
    import pandas as pd

    confirm = confirm_settings(spec)
    searched = spec.searched_keys()
    configs_by_key: dict[tuple, dict] = {}
    for t in trials:
        cfg = {k: v for k, v in t.config.items() if k not in ("seed", "extra")}
        configs_by_key.setdefault(tuple(str(cfg.get(k)) for k in spec.compare_within + searched), cfg)
    table = aggregate(pd.DataFrame(rows), spec.compare_within + searched)
    primary = spec.train.selection
    epochs = confirm.epochs or spec.train.epochs
    configs = []
    for _cell, members in selection.select_per_cell(
        table.to_dict("records"), spec.compare_within, primary, k=confirm.top_k
    ).items():
        chosen = [configs_by_key[tuple(str(m.get(k)) for k in spec.compare_within + searched)] for m in members]
        runs = [(f"top{rank}", cfg) for rank, cfg in enumerate(chosen, 1)]
        if confirm.baseline:
            runs += [(role, {**chosen[0], **changes}) for role, changes in BASELINES.items()]
        for role, cfg in runs:
            for seed in confirm.seeds:
                configs.append({**cfg, "seed": seed, "epochs": epochs, "extra": {"role": role}})
    return configs


def select_method_configs(spec: StudySpec, trials: list[Trial]) -> list[dict]:
    """A methods study: per cell and method, the method's top-k configs by the selection rule, x confirm seeds."""
    from rest.study.trials import aggregate, trial_row

    rows = [trial_row(t, spec) for t in trials if t.history]
    if not rows:
        return []
    import pandas as pd

    confirm = confirm_settings(spec)
    keys = spec.compare_within + ["method"] + spec.method_keys()
    configs_by_key: dict[tuple, dict] = {}
    for t in trials:
        cfg = {k: v for k, v in t.config.items() if k not in ("seed", "extra")}
        configs_by_key.setdefault(
            tuple(
                _same_value(v)
                for v in (
                    *(cfg.get(k) for k in spec.compare_within),
                    t.method,
                    *(cfg.get(k) for k in spec.method_keys()),
                )
            ),
            cfg,
        )
    table = aggregate(pd.DataFrame(rows), keys)
    primary = spec.train.selection
    own = {m.name: m.train for m in spec.methods}
    configs = []
    for (*_, method), members in selection.select_per_cell(
        table.to_dict("records"), spec.compare_within + ["method"], primary, k=confirm.top_k
    ).items():
        for rank, m in enumerate(members, 1):
            cfg = configs_by_key[tuple(_same_value(m.get(k)) for k in keys)]
            epochs = confirm.epochs or own[method].get("epochs") or spec.train.epochs  # a method may fix its own
            for seed in confirm.seeds:
                configs.append(
                    {**cfg, "seed": seed, "epochs": epochs, "extra": {"role": f"top{rank}", "method": method}}
                )
    return configs


def _same_value(v) -> str:
    """One text per value whatever pandas made of it (5 and 5.0 alike)."""
    try:
        return repr(float(v))
    except (TypeError, ValueError):
        return str(v)


# ------------------------------------------------------------------ running


def prepare_data(spec: StudySpec) -> None:
    """Build or decode every dataset cell of the search grid once, here, before trials start.

    Trials on this node then memory-map the cache; other nodes build their own
    cache once (a file lock keeps concurrent trials from doing it twice).
    """
    from rest.core.data import load_dataset

    def values(key: str) -> list:
        dist = spec.search.get(key) or {}
        return list(dist.get("grid") or dist.get("choice") or [getattr(spec.train, key)])

    root = spec.train.data_root
    for dataset in values("dataset"):
        for pct in values("conflict_pct"):
            log.info("preparing %s at %g%% conflicting", dataset, pct)
            load_dataset(dataset, pct, root)


def _phase_tuner(phase: str, path: Location, spec: StudySpec, opts: RunOptions, progress: Progress | None = None):
    """Restore the phase's experiment if Ray snapshotted it, else start it afresh.

    A restored experiment gets this run's verbosity and callbacks."""
    from ray import tune

    experiment = path.join(phase)
    if tune_ext.experiment_restorable(experiment.fs, experiment.path):
        log.info("restoring phase %s from %s", phase, experiment)
        where, fs = experiment.ray_storage
        tuner = tune.Tuner.restore(
            where, _trainable(spec, opts), resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
        tune_ext.use_run_config(tuner, ray_verbose(opts.verbose), _callbacks(phase, path, spec, opts, progress))
        return tuner
    if experiment.exists():
        # A driver stopped before Ray's first snapshot: nothing there can be restored.
        aside = path.join(f".{phase}-abandoned-{time.strftime('%Y%m%d-%H%M%S')}")
        experiment.move_to(aside)
        log.warning("phase %s had no Ray snapshot to restore; starting it afresh (old files moved to %s)", phase, aside)
    if phase == "search":
        scheduler, search_alg, num_samples, limit = search_phase(spec, path, opts.max_concurrent)
        return _tuner(
            phase, path, spec, opts, progress, search_param_space(spec), scheduler, search_alg, num_samples, limit
        )
    from ray.tune.schedulers import FIFOScheduler

    search_alg, num_samples = fixed_configs(_confirm_configs(path, spec))
    return _tuner(phase, path, spec, opts, progress, {}, FIFOScheduler(), search_alg, num_samples, opts.max_concurrent)


def unfinished_trials(trials: list[Trial], spec: StudySpec, phase: str) -> list[Trial]:
    """Trials of a phase that neither ended at their planned epochs nor were stopped by ASHA.

    Failed trials are among them."""
    asha = phase == "search" and spec.scheduler.type == "asha"
    out = []
    for t in trials:
        planned = int(t.config.get("epochs", spec.max_epochs))
        if t.status == "TERMINATED" and (
            t.epochs_run >= planned or (asha and t.epochs_run >= spec.scheduler.grace_period)
        ):
            continue
        out.append(t)
    return out


def phase_status(trials: list[Trial], unfinished: list[Trial], stopped: bool) -> str:
    """interrupted (a stop signal, or trials cut short), failed (a trial errored after its retries) or done."""
    if stopped:
        return "interrupted"
    if any(t.status == "ERROR" for t in trials):
        return "failed"
    return "interrupted" if unfinished else "done"


def run_study(
    path: Location, spec: StudySpec, opts: RunOptions, stop: StopSignals | None = None, progress: Progress | None = None
) -> dict:
    """Run every phase that is not done. Returns the manifest.

    `progress`, if given, is called with a ``rest.study.progress.PhaseProgress`` as trials
    start, report and end (the caller shows it); below ``opts.verbose`` 2 Ray itself
    prints nothing in this process.

    Raises ``Interrupted`` (phase marked interrupted) when a stop signal arrives, and
    ``TrialsFailed`` (phase marked failed, later phases not started) when a trial
    ended in an error after its retries.
    """
    stop = stop or StopSignals()
    spec = with_options(spec, opts)
    path = path.retrying(opts.storage_retry_seconds)  # the driver's reads and writes, Ray's and the trials'
    manifest = read_manifest(path)
    if is_complete(manifest):
        return manifest
    with DriverLock(path, opts.lease_seconds, opts.heartbeat_seconds, stop_fit=tune_ext.stop_fit) as lock:
        manifest = read_manifest(path)  # as the previous driver left it
        try:
            if manifest.get("options") != dataclasses.asdict(opts):
                manifest["options"] = dataclasses.asdict(opts)  # what the study last ran with: the next run keeps it
                lock.check()
                write_manifest(path, manifest)
            with tune_ext.guard_snapshots(lock.check), tune_ext.quiet_ray(opts.verbose < 2):
                return _run_phases(path, spec, opts, stop, manifest, lock.check, progress)
        except LockLost as lost:
            _stop_trials()
            raise StudyError(str(lost)) from None


def _stop_trials() -> None:
    """End this driver's trials without a word to storage: they belong to the driver that took over."""
    import ray

    ray.shutdown()  # Ray ends the actors this driver owns


def _run_phases(
    path: Location,
    spec: StudySpec,
    opts: RunOptions,
    stop: StopSignals,
    manifest: dict,
    check,
    progress: Progress | None = None,
) -> dict:
    """The phases that are not done; `check()` raises LockLost before any write once another driver holds the study."""

    def save(manifest: dict) -> None:
        check()
        write_manifest(path, manifest)

    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    connect(opts.address, gpus, quiet=opts.verbose < 2)
    check_feasible(spec, opts)
    stop.install()
    for phase in PHASES:
        info = manifest["phases"][phase]
        if phase_complete(info):
            continue
        check()  # before the phase's own writes (abandoned files moved aside, confirm configs, tuner.pkl)
        experiment, fix = path.join(phase), resume_after_full_disk(path)  # where Ray writes the phase
        tune_ext.keep_statistics_only_of(contract.STATISTICS)  # a small snapshot (contract.REPORTED)
        with writing(experiment, fix):
            tuner = _phase_tuner(phase, path, spec, opts, progress)
        info["status"] = "running"
        save(manifest)
        start = time.time()
        try:
            with stop.fitting(), writing(experiment, fix):
                tuner.fit()
        except KeyboardInterrupt:
            info["wall_seconds"] += time.time() - start
            info["status"] = "interrupted"
            save(manifest)
            raise
        info["wall_seconds"] += time.time() - start
        trials = read_phase(path.join(phase), phase)
        unfinished = unfinished_trials(trials, spec, phase)
        info.update(trials=len(trials), errors=sum(t.status == "ERROR" for t in trials), unfinished=len(unfinished))
        info["status"] = phase_status(trials, unfinished, bool(stop.received))
        if not stop.received:  # what a crash left uncompacted (the callback compacts trials as they end)
            check()
            cut = {t.trial_id for t in unfinished}
            compact_finished(
                experiment,
                [contract.trial_dirname(t) for t in trials if t.status == "TERMINATED" and t.trial_id not in cut],
            )
        save(manifest)
        if stop.received:
            raise Interrupted(stop.received)
        if info["status"] == "failed":  # the next phase would build on incomplete results
            raise TrialsFailed(failed_message(opts.name, opts.storage, spec, phase, trials))
        if unfinished:
            log.warning(
                "phase %s: %d trial(s) ended before their planned epochs: %s",
                phase,
                len(unfinished),
                ", ".join(f"{t.trial_id} at epoch {t.epochs_run}" for t in unfinished[:5]),
            )
            return manifest
    return manifest


def _confirm_configs(path: Location, spec: StudySpec) -> list[dict]:
    file = path.join("confirm_configs.json")
    if file.exists():
        return file.read_json()
    select = select_method_configs if spec.methods else select_confirm_configs
    configs = select(spec, read_phase(path.join("search"), "search"))
    if not configs:
        raise StudyError(f"the search phase of {path.name} has no trial with results to confirm")
    configs = [{**c, "data_root": spec.train.data_root} for c in configs]  # where the data is now
    with writing(file, resume_after_full_disk(path)):
        file.write_text(json.dumps(configs, indent=1))
    return configs
