"""Ray Tune study orchestration: two phases, per-cell ASHA, checkpoints, resume.

A study lives in ``<storage>/<name>/``:

    study.yaml            copy of the study definition (frozen: manifest.json keeps its hash and text)
    manifest.json         options and the status of each phase
    search/               Ray Tune experiment: ASHA over the search space
    confirm_configs.json  top-k configs per cell (+ both baselines) x confirm seeds
    confirm/              Ray Tune experiment: those configs to full epochs, no early stopping

``run_study`` runs whichever phase is not done, restoring a phase's experiment with
``Tuner.restore`` when it has a snapshot, so a fresh run and a resume take the same
path. A phase is done only when every one of its trials, read back from storage,
ended at its planned epochs, was stopped by ASHA, or failed; an interrupted
phase (Ctrl-C, SIGTERM, a crash) is resumed, never taken as finished.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import selection, tune_ext
from .errors import StudyError
from .manifest import PHASES, create_study, is_complete, read_manifest, refuse_existing, write_manifest
from .results import HISTORY_FILE, STATE_FILE, Trial, flat_config, newest_state, read_phase
from .search import METRIC, SEARCHER_METRIC, make_scheduler, make_search_alg, search_param_space
from .settings import TrainSettings
from .space import StudySpec
from .storage import Location

log = logging.getLogger(__name__)

STALL_LOG = "stalls.log"
BASELINES = {
    # role -> changes to the cell's selected config: dense ERM, and dense with the
    # same reweighting and lambda (what REST's "dense" runs are), so REST's gain can
    # be split into what sparsity adds and what upweighting adds.
    "erm_baseline": {"density": 1.0, "reweight": "none", "lambda_upweight": 1.0},
    "dense_reweighted_baseline": {"density": 1.0},
}


class Interrupted(KeyboardInterrupt):
    """The driver was asked to stop (SIGINT or SIGTERM); exit status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class RunOptions:
    """Settings of the driver, as the command line gives them."""

    storage: str
    name: str
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    data_root: str | None = None
    verbose: int = 1
    autoscaling: bool = False  # the cluster adds nodes on demand: skip the per-node feasibility check
    stall_minutes: float = 10.0  # warn once when trials wait this long for resources with none running


def begin_study(spec: StudySpec, yaml_text: str, opts: RunOptions, command: str) -> Location:
    """Everything that can fail on bad input, then the study directory: nothing is created before."""
    refuse_existing(opts.storage, opts.name)  # before paying for Ray start-up
    _make_callbacks(spec, opts.name, "search")  # a tracker whose package is missing fails now
    connect(opts.address, opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial)
    check_feasible(spec, opts)
    prepare_data(spec, opts.data_root)  # bad data fails here, before the study directory exists
    return create_study(spec, yaml_text, opts, command)


# -------------------------------------------------------------- the trainable

def _resume_state(ray_checkpoint) -> dict | None:
    """The newest training state of this trial: the newest readable checkpoint on storage.

    Ray snapshots its experiment state at most every few seconds, so after a driver
    crash it may hand back an older checkpoint than the newest one on storage (or
    none at all). Looking at the trial directory itself means no finished epoch with
    a checkpoint is ever trained again.
    """
    import torch

    try:
        fs, trial_path = tune_ext.trial_storage()
        return newest_state(Location(fs, trial_path))
    except Exception as exc:  # fall back to what Ray hands back; the tune_ext contract test guards this
        log.warning("could not list this trial's checkpoints (%s); using Ray's", exc)
    if ray_checkpoint is None:
        return None
    with ray_checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, weights_only=False, map_location="cpu")


def rest_trainable(config: dict, checkpoint_every: int = 1) -> None:
    """Ray Tune function trainable: one REST configuration, checkpointed per epoch.

    Each checkpoint holds the full training state and the trial's whole history of
    epoch records (also as a small JSON file, for the study reader), so a trial
    resumed from it reports nothing twice and loses nothing Ray's snapshot missed.
    A trial resumed at or past its last epoch reports its final record again and ends.
    """
    import ray
    import torch
    from ray import tune

    from .train import Trainer

    settings = TrainSettings.from_dict({k: v for k, v in flat_config(config).items() if k != "extra"})
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(round(cpus))))
    trainer = Trainer(settings)
    state = _resume_state(tune.get_checkpoint())
    history: list[dict] = []
    if state is not None:
        trainer.load_state_dict(state)
        history = list(state.get("history", []))
        log.info("trial %s resumes after epoch %d", tune.get_context().get_trial_id(), trainer.epoch)
    if trainer.epoch >= settings.epochs and history:
        tune.report(history[-1])  # finished before the crash: let Ray and the scheduler see the end
        return
    resumed_from = trainer.epoch
    node = ray.get_runtime_context().get_node_id()
    primary = getattr(settings, "selection", "worst_group")
    while trainer.epoch < settings.epochs:
        record = trainer.run_epoch()
        record.update(resumed_from_epoch=resumed_from, node_id=node, pid=os.getpid(),
                      val_rank=selection.scalar(record, primary))
        record[SEARCHER_METRIC] = max([record[METRIC]] + [r[METRIC] for r in history if METRIC in r])
        history.append(record)
        if trainer.epoch % checkpoint_every == 0 or trainer.epoch == settings.epochs:
            with tempfile.TemporaryDirectory() as d:
                torch.save({**trainer.state_dict(), "history": history}, Path(d) / STATE_FILE)
                (Path(d) / HISTORY_FILE).write_text(json.dumps(history))
                tune.report(record, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(record)


# ------------------------------------------------------------------- phases

def search_space(spec: StudySpec, data_root: str | None) -> dict:
    fixed = spec.train.replace(epochs=spec.max_epochs, data_root=data_root or spec.train.data_root).to_dict()
    fixed.pop("extra")
    return search_param_space(spec, fixed)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trainable(spec: StudySpec, opts: RunOptions):
    from ray import tune

    resources = {"cpu": opts.cpus_per_trial or spec.resources.cpus_per_trial,
                 "gpu": opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial}
    fn = tune.with_parameters(rest_trainable, checkpoint_every=spec.checkpoint_every)
    return tune.with_resources(fn, resources)


def _tensorboard(study: str, phase: str):
    from ray.tune.logger import TBXLoggerCallback

    return TBXLoggerCallback()  # Ray adds it anyway when tensorboardX is installed; listed, it is required


def _mlflow(study: str, phase: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    # MLflow reads MLFLOW_TRACKING_URI itself: a local file or SQLite store works offline.
    return MLflowLoggerCallback(experiment_name=study, tags={"phase": phase}, save_artifact=False)


def _wandb(study: str, phase: str):
    from ray.air.integrations.wandb import WandbLoggerCallback

    # W&B reads WANDB_MODE (offline works without a network) and WANDB_API_KEY itself.
    return WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", study), group=phase)


CALLBACKS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def _stall_watch_class():
    from ray.tune import Callback

    class StallWatch(Callback):
        """Says once when trials wait for resources and none has run for `seconds` (no silent hangs).

        Trials that no node can ever run are refused before fitting (check_feasible);
        this catches the rest: resources held by other jobs, nodes gone, an autoscaler
        that never delivers.
        """

        def __init__(self, seconds: float, study: Location):
            self.seconds = seconds
            self.log_file = study.join(STALL_LOG)  # summary.md reports what is written here
            self.last_progress = time.time()
            self.warned = False

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last_progress = time.time()

        def on_step_end(self, iteration, trials, **info):
            running = any(t.status == "RUNNING" for t in trials)
            pending = sum(t.status == "PENDING" for t in trials)
            if running or not pending:
                self.last_progress = time.time()
                return
            waited = time.time() - self.last_progress
            if waited > self.seconds and not self.warned:
                self.warned = True
                message = (f"{pending} trial(s) have waited {waited / 60:.1f} min for resources with none running; "
                           f"check 'ray status' (other jobs, lost nodes) or lower --cpus-per-trial / --gpus-per-trial")
                log.warning(message)
                earlier = self.log_file.read_text() if self.log_file.exists() else ""
                self.log_file.write_text(earlier + f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    return StallWatch


def _make_callbacks(spec: StudySpec, study: str, phase: str) -> list:
    try:
        return [CALLBACKS[name](study, phase) for name in spec.callbacks]
    except ImportError as exc:
        raise StudyError(f"the study file asks for a tracker whose package is missing ({exc.name}); "
                         f"pip install {exc.name} or remove it from 'callbacks'") from None


def _tuner(phase: str, path: Location, spec: StudySpec, opts: RunOptions, param_space: dict, scheduler,
           search_alg=None, num_samples: int = 1):
    from ray import tune

    run_config = tune.RunConfig(
        name=phase,
        storage_path=path.uri,
        callbacks=_make_callbacks(spec, opts.name, phase) + [_stall_watch_class()(opts.stall_minutes * 60, path)],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        verbose=opts.verbose,
    )
    tune_config = tune.TuneConfig(
        scheduler=scheduler,
        search_alg=search_alg,
        num_samples=num_samples,
        max_concurrent_trials=opts.max_concurrent,
        trial_dirname_creator=trial_dirname,
        reuse_actors=True,  # keeps torch imported between trials: a new worker costs seconds
    )
    return tune.Tuner(_trainable(spec, opts), param_space=param_space, tune_config=tune_config, run_config=run_config)


def select_confirm_configs(spec: StudySpec, trials: list[Trial]) -> list[dict]:
    """Per cell: the top-k configs by the selection rule, and both baselines, x confirm seeds."""
    from .results import aggregate, trial_row

    rows = [trial_row(t, spec) for t in trials if t.history]
    if not rows:
        return []
    import pandas as pd

    searched = [k for k in spec.search if k not in ("seed", *spec.compare_within)]
    configs_by_key = {}
    for t in trials:
        cfg = {k: v for k, v in t.config.items() if k not in ("seed", "extra")}
        configs_by_key.setdefault(tuple(str(cfg.get(k)) for k in spec.compare_within + searched), cfg)
    table = aggregate(pd.DataFrame(rows), spec.compare_within + searched)
    primary = getattr(spec.train, "selection", "worst_group")
    epochs = spec.confirm.epochs or spec.train.epochs
    configs = []
    for cell, members in selection.select_per_cell(table.to_dict("records"), spec.compare_within, primary,
                                                   k=spec.confirm.top_k).items():
        chosen = [configs_by_key[tuple(str(m.get(k)) for k in spec.compare_within + searched)] for m in members]
        runs = [(f"top{rank}", cfg) for rank, cfg in enumerate(chosen, 1)]
        if spec.confirm.baseline:
            runs += [(role, {**chosen[0], **changes}) for role, changes in BASELINES.items()]
        for role, cfg in runs:
            for seed in spec.confirm.seeds:
                configs.append({**cfg, "seed": seed, "epochs": epochs, "extra": {"role": role}})
    return configs


# ------------------------------------------------------------------ running

def connect(address: str | None, gpus_needed: float) -> None:
    """Join the cluster at `address` (or start a local Ray) and check it can run the trials."""
    import ray

    if address and address.startswith("ray://"):
        raise StudyError(f"--address {address} is a Ray Client address; run the driver on the cluster instead: "
                         f"'ray job submit -- python tune_search.py run ... --address auto' (docs/cluster.md)")
    if address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except (OSError, ValueError) as exc:
            raise StudyError(f"cannot reach a Ray cluster at {address} ({exc}); check the head node's address and port "
                             f"('ray status' on the head prints it)") from None
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            raise StudyError(f"cannot connect to Ray at {address}: {str(exc).splitlines()[0]}; start one with 'ray start --head'") from None
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if gpus_needed > 0 and gpus < gpus_needed:
        raise StudyError(f"trials ask for {gpus_needed:g} GPU each but the cluster has {gpus:g}; "
                         f"pass --gpus-per-trial 0 or join a cluster with GPUs")


def check_feasible(spec: StudySpec, opts: RunOptions) -> None:
    """Refuse trials that no node of the cluster can ever run (Ray would wait for them forever).

    Compared per node, not with the cluster's sum: 2 nodes of 4 CPUs cannot run a 6-CPU trial.
    Clusters that autoscale (they add nodes on demand) pass ``opts.autoscaling`` to skip this.
    """
    import ray

    if opts.autoscaling:
        return
    cpus = opts.cpus_per_trial or spec.resources.cpus_per_trial
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise StudyError(f"no node can run a trial asking for {cpus:g} CPU and {gpus:g} GPU (largest node: "
                         f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower --cpus-per-trial / "
                         f"--gpus-per-trial, or pass --autoscaling on a cluster that adds nodes")


def prepare_data(spec: StudySpec, data_root: str | None) -> None:
    """Build or decode every dataset cell of the search grid once, here, before trials start.

    Trials on this node then memory-map the cache; other nodes build their own
    cache once (a file lock keeps concurrent trials from doing it twice).
    """
    from .data import load_dataset

    def values(key: str) -> list:
        dist = spec.search.get(key) or {}
        return list(dist.get("grid") or dist.get("choice") or [getattr(spec.train, key)])

    root = data_root or spec.train.data_root
    for dataset in values("dataset"):
        for pct in values("conflict_pct"):
            log.info("preparing %s at %g%% conflicting", dataset, pct)
            load_dataset(dataset, pct, root)


class StopSignals:
    """SIGINT and SIGTERM for the driver: stop the study cleanly, never "finish" it.

    The first signal during ``Tuner.fit`` asks Tune to stop after one last forced
    snapshot (trials stay resumable); outside ``fit``, or on a second signal, the
    driver stops at once by raising ``Interrupted``. Either way the phase is marked
    interrupted and ``resume`` continues it.
    """

    def __init__(self):
        self.received: int | None = None
        self._fitting = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        return self.install()

    def install(self) -> "StopSignals":
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's with its own, so call again after it."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._saved.setdefault(sig, previous)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        tune_listens = callable(signal.getsignal(signal.SIGUSR1))  # Tune installs its handler inside fit()
        if first and self._fitting and tune_listens:
            log.warning("stopping: saving the study state first (signal again to stop at once)")
            tune_ext.request_graceful_stop()
            return
        raise Interrupted(self.received)

    @contextmanager
    def fitting(self):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # no stale Tune handler from an earlier fit()
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class DriverLock:
    """One driver per study: a lease file in the study directory, renewed by a heartbeat.

    Works on local paths, NFS and object storage alike (a plain file rewritten every
    ``HEARTBEAT`` seconds). A lease is stale when its heartbeat is older than
    ``LEASE`` seconds, or when its holder ran on this host and its process is gone
    (after a kill -9); a stale lease is taken over with a warning. Object stores have
    no create-if-absent, so two drivers started within the same second could both
    win; the re-read after writing narrows that window to a few milliseconds.
    """

    FILE, HEARTBEAT, LEASE = "driver.lock", 10.0, 60.0

    def __init__(self, study: Location):
        self.file = study.join(self.FILE)
        self.name = study.name
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": os.urandom(8).hex(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._stop = None

    def _holder(self) -> dict | None:
        try:
            return self.file.read_json()
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, holder: dict) -> bool:
        if time.time() - float(holder.get("heartbeat", 0)) > self.LEASE:
            return False
        if holder.get("host") == self.me["host"]:
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True

    def _write(self) -> None:
        self.file.write_text(json.dumps({**self.me, "heartbeat": time.time()}))

    def __enter__(self) -> "DriverLock":
        import threading

        holder = self._holder()
        if holder and holder.get("token") != self.me["token"]:
            if self._alive(holder):
                raise StudyError(f"study {self.name} is being run by another driver (host {holder.get('host')}, pid "
                                 f"{holder.get('pid')}, since {holder.get('started')}); wait for it to finish or stop it "
                                 f"(Ctrl-C) before resuming")
            log.warning("taking over the study from a driver that is gone (host %s, pid %s)", holder.get("host"), holder.get("pid"))
        self._write()
        time.sleep(0.05)
        if (self._holder() or {}).get("token") != self.me["token"]:
            raise StudyError("another driver started this study at the same moment; run resume again in a minute")
        self._stop = threading.Event()
        threading.Thread(target=self._beat, daemon=True, name="study-lock-heartbeat").start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT):
            if (self._holder() or {}).get("token") == self.me["token"]:
                self._write()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if (self._holder() or {}).get("token") == self.me["token"]:
            self.file.fs.delete_file(self.file.path)


def _phase_tuner(phase: str, path: Location, spec: StudySpec, opts: RunOptions):
    """Restore the phase's experiment if Ray snapshotted it; else start it afresh."""
    from ray import tune

    experiment = path.join(phase)
    if tune_ext.experiment_restorable(experiment.fs, experiment.path):
        log.info("restoring phase %s from %s", phase, experiment)
        return tune.Tuner.restore(experiment.uri, _trainable(spec, opts), resume_unfinished=True, resume_errored=True)
    if experiment.exists():
        # A driver stopped before Ray's first snapshot: nothing there can be restored.
        aside = path.join(f".{phase}-abandoned-{time.strftime('%Y%m%d-%H%M%S')}")
        experiment.move_to(aside)
        log.warning("phase %s had no Ray snapshot to restore; starting it afresh (old files moved to %s)", phase, aside)
    if phase == "search":
        search_alg, num_samples = make_search_alg(spec)
        return _tuner(phase, path, spec, opts, search_space(spec, opts.data_root), make_scheduler(spec),
                      search_alg, num_samples)
    from ray.tune.schedulers import FIFOScheduler

    configs = _confirm_configs(path, spec, opts)
    return _tuner(phase, path, spec, opts, {"cfg": tune.grid_search(configs)}, FIFOScheduler())


def unfinished_trials(trials: list[Trial], spec: StudySpec, phase: str) -> list[Trial]:
    """Trials of a phase that neither ended at their planned epochs, nor were stopped by ASHA, nor failed."""
    asha = phase == "search" and spec.scheduler.type == "asha"
    out = []
    for t in trials:
        planned = int(t.config.get("epochs", spec.max_epochs))
        if t.status == "ERROR":
            continue
        if t.status == "TERMINATED" and (t.epochs_run >= planned or (asha and t.epochs_run >= spec.scheduler.grace_period)):
            continue
        out.append(t)
    return out


def run_study(path: Location, spec: StudySpec, opts: RunOptions, stop: StopSignals | None = None) -> dict:
    """Run every phase that is not done. Returns the manifest.

    Raises ``Interrupted`` (phase marked interrupted) when a stop signal arrives.
    """
    stop = stop or StopSignals()
    manifest = read_manifest(path)
    if is_complete(manifest):
        return manifest
    with DriverLock(path):
        manifest = read_manifest(path)  # as the previous driver left it
        return _run_phases(path, spec, opts, stop, manifest)


def _run_phases(path: Location, spec: StudySpec, opts: RunOptions, stop: StopSignals, manifest: dict) -> dict:
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    connect(opts.address, gpus)
    check_feasible(spec, opts)
    stop.install()
    for phase in PHASES:
        info = manifest["phases"][phase]
        if info["status"] in ("done", "skipped"):
            continue
        tuner = _phase_tuner(phase, path, spec, opts)
        info["status"] = "running"
        write_manifest(path, manifest)
        start = time.time()
        try:
            with stop.fitting():
                tuner.fit()
        except KeyboardInterrupt:
            info["wall_seconds"] += time.time() - start
            info["status"] = "interrupted"
            write_manifest(path, manifest)
            raise
        info["wall_seconds"] += time.time() - start
        trials = read_phase(path.join(phase), phase)
        unfinished = unfinished_trials(trials, spec, phase)
        info.update(trials=len(trials), errors=sum(t.status == "ERROR" for t in trials), unfinished=len(unfinished))
        info["status"] = "interrupted" if (unfinished or stop.received) else "done"
        write_manifest(path, manifest)
        if stop.received:
            raise Interrupted(stop.received)
        if unfinished:
            log.warning("phase %s: %d trial(s) ended before their planned epochs: %s", phase, len(unfinished),
                        ", ".join(f"{t.trial_id} at epoch {t.epochs_run}" for t in unfinished[:5]))
            return manifest
    return manifest


def _confirm_configs(path: Location, spec: StudySpec, opts: RunOptions) -> list[dict]:
    file = path.join("confirm_configs.json")
    if file.exists():
        return file.read_json()
    configs = select_confirm_configs(spec, read_phase(path.join("search"), "search"))
    if not configs:
        raise StudyError(f"the search phase of {path.name} has no trial with results to confirm")
    if opts.data_root:
        configs = [{**c, "data_root": opts.data_root} for c in configs]
    file.write_text(json.dumps(configs, indent=1))
    return configs
