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

import hashlib
import re
import json
import logging
import os
import signal
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from . import selection, tune_ext
from .errors import UserError
from .results import HISTORY_FILE, STATE_FILE, Trial, flat_config, newest_state, read_phase
from .settings import TrainSettings
from .space import StudySpec, method_configs, parse_space, to_tune
from .storage import Location, open_location

log = logging.getLogger(__name__)

PHASES = ("search", "confirm")
STALL_LOG = "stalls.log"
# ASHA wants one number; selection.scalar encodes the project's selection rule in it.
METRIC, MODE, TIME_ATTR = "val_rank", "max", "epoch"
BASELINES = {
    # role -> changes to the cell's selected config: dense ERM, and dense with the
    # same reweighting and lambda (what REST's "dense" runs are), so REST's gain can
    # be split into what sparsity adds and what upweighting adds.
    "erm_baseline": {"density": 1.0, "reweight": "none", "lambda_upweight": 1.0},
    "dense_reweighted_baseline": {"density": 1.0},
}


class StudyError(UserError):
    pass


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


# ------------------------------------------------------------- study files

NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(name: str) -> str:
    """A study name is one path component: letters, digits, '-', '_', '.' (not '.' or '..')."""
    if not NAME_CHARS.fullmatch(name or "") or name in (".", ".."):
        raise StudyError(f"study name {name!r} is not allowed; use letters, digits, '-', '_' and '.' only (one "
                         f"directory name, e.g. --name cmnist_rest)")
    return name


def study_dir(storage: str, name: str) -> Location:
    return open_location(storage).join(check_name(name))


def read_manifest(path: Location) -> dict:
    try:
        return path.join("manifest.json").read_json()
    except json.JSONDecodeError:
        raise StudyError(f"{path.join('manifest.json')} is damaged (not JSON); restore it from a copy") from None


def write_manifest(path: Location, manifest: dict) -> None:
    path.join("manifest.json").write_text(json.dumps(manifest, indent=1))


def _storage_text(storage: str | None) -> str:
    return storage or os.environ.get("REST_TUNE_STORAGE", "studies")


def resolve_storage(storage: str | None) -> str:
    """Where studies go, checked writable: an absolute local path (created if missing) or a URI."""
    text = _storage_text(storage)
    if "://" in text:
        return _check_object_storage(text)
    path = Path(text).expanduser().resolve()  # Ray rejects relative paths
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(f"storage {path} is not writable ({exc.strerror}); pass --storage with a writable directory") from None
    return str(path)


def _check_object_storage(uri: str) -> str:
    """Write and delete a probe object, so a missing bucket or bad credentials fail now, in one line."""
    location = open_location(uri)
    probe = location.join(f".write-test-{os.getpid()}")
    try:
        probe.write_text("ok")
        location.fs.delete_file(probe.path)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise StudyError(f"cannot write to storage {uri} ({reason}); check that the bucket exists and the credentials "
                         f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3-compatible servers)") from None
    return uri.rstrip("/")


def existing_storage(storage: str | None) -> str:
    """The storage to read from, untouched (export must not create anything)."""
    text = _storage_text(storage)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def refuse_existing(storage: str, name: str) -> None:
    if study_dir(storage, name).exists():
        raise StudyError(f"study '{name}' already exists in {storage}; continue it with "
                         f"'tune_search.py resume {name} --storage {storage}' or pick another --name")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def create_study(spec: StudySpec, yaml_text: str, opts: RunOptions, command: str) -> Location:
    refuse_existing(opts.storage, opts.name)
    path = study_dir(opts.storage, opts.name)
    path.mkdir()
    path.join("study.yaml").write_text(yaml_text)
    manifest = {
        "name": opts.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "options": asdict(opts),
        "grid_trials": spec.grid_size(),
        "study_sha256": _digest(yaml_text),
        "study_yaml": yaml_text,
        "phases": {p: {"status": "pending", "wall_seconds": 0.0} for p in PHASES},
    }
    if spec.confirm is None:
        manifest["phases"]["confirm"]["status"] = "skipped"
    write_manifest(path, manifest)
    return path


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def describe_changes(original: str, edited: str) -> str:
    """'train.epochs: 4 -> 6, scheduler.type: asha -> (removed)', for a refusal message."""
    try:
        old, new = _flatten(yaml.safe_load(original) or {}), _flatten(yaml.safe_load(edited) or {})
    except yaml.YAMLError:
        return "the file no longer parses"
    changes = [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(removed)')}"
               for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "") or "comments or layout only"


def frozen_spec(location, manifest: dict) -> StudySpec:
    """The study definition a study was started with; an edited or missing study.yaml is refused.

    `location` is the storage.Location of the study directory.
    """
    file = location.join("study.yaml")
    original = manifest.get("study_yaml")
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise StudyError(f"{file} is missing; restore it (the original text is kept under 'study_yaml' in "
                         f"manifest.json)" if original else f"{file} is missing; restore it from a copy") from None
    except UnicodeDecodeError:
        raise StudyError(f"{file} is not a text file; restore the study definition") from None
    if manifest.get("study_sha256") and _digest(text) != manifest["study_sha256"]:
        raise StudyError(f"{file} was edited after the study started ({describe_changes(original or '', text)}); "
                         f"a study's definition is frozen: restore the original (kept under 'study_yaml' in manifest.json) "
                         f"or run the edited file as a new study with --name")
    return parse_space(text, str(file))


def begin_study(spec: StudySpec, yaml_text: str, opts: RunOptions, command: str) -> Location:
    """Everything that can fail on bad input, then the study directory: nothing is created before."""
    refuse_existing(opts.storage, opts.name)  # before paying for Ray start-up
    _make_callbacks(spec, opts.name, "search")  # a tracker whose package is missing fails now
    connect(opts.address, opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial)
    check_feasible(spec, opts)
    prepare_data(spec, opts.data_root)  # bad data fails here, before the study directory exists
    return create_study(spec, yaml_text, opts, command)


def open_study(storage: str, name: str) -> tuple[Location, StudySpec, dict]:
    path = study_dir(storage, name)
    if not path.join("manifest.json").is_file():
        known = sorted(c.name for c in open_location(storage).children() if c.join("manifest.json").is_file())
        raise StudyError(f"no study '{name}' in {storage}; known studies: {', '.join(known) or 'none'} "
                         f"(pass --storage if it lives elsewhere)")
    manifest = read_manifest(path)
    return path, frozen_spec(path, manifest), manifest


def is_complete(manifest: dict) -> bool:
    return all(info["status"] in ("done", "skipped") for info in manifest["phases"].values())


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
        history.append(record)
        if trainer.epoch % checkpoint_every == 0 or trainer.epoch == settings.epochs:
            with tempfile.TemporaryDirectory() as d:
                torch.save({**trainer.state_dict(), "history": history}, Path(d) / STATE_FILE)
                (Path(d) / HISTORY_FILE).write_text(json.dumps(history))
                tune.report(record, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(record)


# ------------------------------------------------------------- per-cell ASHA

def _per_cell_scheduler_class():
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    class PerCellASHA(FIFOScheduler):
        """One Ray ASHA scheduler per cell, so trials compete only within their cell.

        Ray's ASHA ranks every trial against every other; trials on another dataset or
        conflict ratio are not comparable (a 5 % cell scores higher than a 0.5 % one
        whatever the config), so each cell gets its own ASHA instance and every
        scheduler callback is routed to the instance of the trial's cell.
        """

        def __init__(self, cell_keys: list[str], **asha: Any):
            super().__init__()
            self.cell_keys = list(cell_keys)
            self.asha = asha
            self._metric = asha["metric"]
            self.cells: dict[tuple, AsyncHyperBandScheduler] = {}

        def set_search_properties(self, metric, mode, **spec) -> bool:
            return (metric in (None, self.asha["metric"])) and (mode in (None, self.asha["mode"]))

        def cell(self, trial) -> AsyncHyperBandScheduler:
            key = trial_cell(trial.config, self.cell_keys)
            if key not in self.cells:
                self.cells[key] = AsyncHyperBandScheduler(**self.asha)
            return self.cells[key]

        def on_trial_add(self, tune_controller, trial):
            self.cell(trial).on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            if not tune_ext.asha_knows(self.cell(trial), trial):  # a trial restored after a driver crash
                self.cell(trial).on_trial_add(tune_controller, trial)
            return self.cell(trial).on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller, trial, result):
            if tune_ext.asha_knows(self.cell(trial), trial):
                self.cell(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial):
            tune_ext.asha_forget(self.cell(trial), trial)

        def debug_string(self) -> str:
            stopped = sum(tune_ext.asha_stopped(s) for s in self.cells.values())
            return f"per-cell ASHA over {self.cell_keys}: {len(self.cells)} cells, {stopped} trials stopped early"

    return PerCellASHA


def trial_cell(config: dict, cell_keys: list[str]) -> tuple:
    """The comparison group of a trial: its cell, and its method in a methods study
    (each method's own search competes only with itself)."""
    flat = flat_config(config)
    method = (flat.get("extra") or {}).get("method")
    return tuple(flat[k] for k in cell_keys) + ((method,) if method is not None else ())


def make_scheduler(spec: StudySpec):
    from ray.tune.schedulers import FIFOScheduler

    if spec.scheduler.type == "none":
        return FIFOScheduler()
    return _per_cell_scheduler_class()(
        spec.compare_within, time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=spec.max_epochs,
        grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor,
    )  # fmt: skip


# ------------------------------------------------------------------- phases

def search_space(spec: StudySpec, data_root: str | None) -> dict:
    if spec.methods:  # every method's own grid, expanded here into whole configs
        from ray import tune

        return {"cfg": tune.grid_search(method_configs(spec, spec.max_epochs, data_root))}
    fixed = spec.train.replace(epochs=spec.max_epochs, data_root=data_root or spec.train.data_root).to_dict()
    fixed.pop("extra")
    return {**fixed, **{k: to_tune(d) for k, d in spec.search.items()}}


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


def _tuner(phase: str, path: Location, spec: StudySpec, opts: RunOptions, param_space: dict, scheduler):
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
        num_samples=spec.num_samples if phase == "search" else 1,
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


def select_method_configs(spec: StudySpec, trials: list[Trial]) -> list[dict]:
    """A methods study: per cell and method, the method's top-k configs by the selection rule, x confirm seeds."""
    from .results import aggregate, trial_row

    rows = [trial_row(t, spec) for t in trials if t.history]
    if not rows:
        return []
    import pandas as pd

    keys = spec.compare_within + ["method"] + spec.method_keys()
    configs_by_key = {}
    for t in trials:
        cfg = {k: v for k, v in t.config.items() if k not in ("seed", "extra")}
        configs_by_key.setdefault(tuple(_same_value(v) for v in (*(cfg.get(k) for k in spec.compare_within), t.method,
                                                                  *(cfg.get(k) for k in spec.method_keys()))), cfg)
    table = aggregate(pd.DataFrame(rows), keys)
    primary = getattr(spec.train, "selection", "worst_group")
    own = {m.name: m.train for m in spec.methods}
    configs = []
    for (*_, method), members in selection.select_per_cell(table.to_dict("records"), spec.compare_within + ["method"],
                                                           primary, k=spec.confirm.top_k).items():
        for rank, m in enumerate(members, 1):
            cfg = configs_by_key[tuple(_same_value(m.get(k)) for k in keys)]
            epochs = spec.confirm.epochs or own[method].get("epochs") or spec.train.epochs  # a method may fix its own
            for seed in spec.confirm.seeds:
                configs.append({**cfg, "seed": seed, "epochs": epochs, "extra": {"role": f"top{rank}", "method": method}})
    return configs


def _same_value(v: Any) -> str:
    """One text per value whatever pandas made of it (5 and 5.0 alike)."""
    try:
        return repr(float(v))
    except (TypeError, ValueError):
        return str(v)


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
        return _tuner(phase, path, spec, opts, search_space(spec, opts.data_root), make_scheduler(spec))
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
    select = select_method_configs if spec.methods else select_confirm_configs
    configs = select(spec, read_phase(path.join("search"), "search"))
    if not configs:
        raise StudyError(f"the search phase of {path.name} has no trial with results to confirm")
    if opts.data_root:
        configs = [{**c, "data_root": opts.data_root} for c in configs]
    file.write_text(json.dumps(configs, indent=1))
    return configs
