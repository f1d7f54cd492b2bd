"""Ray Tune study orchestration: two phases, per-cell ASHA, checkpoints, resume.

A study lives in ``<storage>/<name>/``:

    study.yaml            copy of the study definition
    manifest.json         options and the status of each phase
    search/               Ray Tune experiment: ASHA over the search space
    confirm_configs.json  top-k configs per cell (+ ERM baseline) x confirm seeds
    confirm/              Ray Tune experiment: those configs to full epochs, no early stopping

``run_study`` runs whichever phase is not done, restoring a phase's experiment with
``Tuner.restore`` when it exists, so a fresh run and a resume take the same path.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .settings import TrainSettings
from .space import StudySpec, parse_space, to_tune

log = logging.getLogger(__name__)

PHASES = ("search", "confirm")
# ASHA ranks trials by validation worst-group accuracy. On small validation sets that
# accuracy moves in coarse steps (20 conflicting samples: 5 % steps) and ties let
# almost every trial through a rung, so ties are broken by validation average
# accuracy: val_rank = val_worst_group_acc + 1e-3 * val_avg_acc.
METRIC, MODE, TIME_ATTR = "val_rank", "max", "epoch"
TIE_BREAK = 1e-3
STATE_FILE = "state.pt"


class StudyError(UserError):
    pass


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


# ------------------------------------------------------------- study files

def study_dir(storage: str, name: str) -> Path:
    return Path(storage) / name


def read_manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path: Path, manifest: dict) -> None:
    tmp = path / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path / "manifest.json")


def resolve_storage(storage: str | None) -> str:
    """Absolute local path (Ray rejects relative ones); URIs pass through unchanged."""
    if storage and "://" in storage:
        raise StudyError(f"storage {storage} is a URI; this version keeps studies on a shared filesystem path (NFS) — mount it and pass the path")
    path = Path(storage or os.environ.get("REST_TUNE_STORAGE", "studies")).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(f"storage {path} is not writable ({exc.strerror}); pass --storage with a writable directory") from None
    return str(path)


def refuse_existing(storage: str, name: str) -> None:
    if study_dir(storage, name).exists():
        raise StudyError(f"study '{name}' already exists in {storage}; continue it with "
                         f"'tune_search.py resume {name} --storage {storage}' or pick another --name")


def create_study(spec: StudySpec, yaml_text: str, opts: RunOptions, command: str) -> Path:
    refuse_existing(opts.storage, opts.name)
    path = study_dir(opts.storage, opts.name)
    path.mkdir(parents=True)
    (path / "study.yaml").write_text(yaml_text)
    manifest = {
        "name": opts.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "options": asdict(opts),
        "grid_trials": spec.grid_size(),
        "phases": {p: {"status": "pending", "wall_seconds": 0.0} for p in PHASES},
    }
    if spec.confirm is None:
        manifest["phases"]["confirm"]["status"] = "skipped"
    write_manifest(path, manifest)
    return path


def open_study(storage: str, name: str) -> tuple[Path, StudySpec, dict]:
    path = study_dir(storage, name)
    if not (path / "manifest.json").is_file():
        known = sorted(p.parent.name for p in Path(storage).glob("*/manifest.json"))
        raise StudyError(f"no study '{name}' in {storage}; known studies: {', '.join(known) or 'none'} "
                         f"(pass --storage if it lives elsewhere)")
    spec = parse_space((path / "study.yaml").read_text(), str(path / "study.yaml"))
    return path, spec, read_manifest(path)


# -------------------------------------------------------------- the trainable

def _stored_states(ray_checkpoint) -> list:
    """Candidate checkpoints: the one Ray hands back, plus every one in the trial directory.

    Ray snapshots its experiment state at most every few seconds, so after a driver
    crash it may hand back an older checkpoint than the newest one on storage (or
    none at all). Looking at the trial directory itself means no finished epoch with
    a checkpoint is ever trained again.
    """
    from ray import tune

    candidates = [ray_checkpoint] if ray_checkpoint is not None else []
    try:
        storage = tune.get_context().get_storage()
        fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
        import pyarrow.fs as pafs

        for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and Path(info.path).name.startswith("checkpoint_"):
                candidates.append(tune.Checkpoint(info.path, filesystem=fs))
    except Exception as exc:  # storage introspection is a best effort on top of Ray's own
        log.debug("could not list trial checkpoints: %s", exc)
    return candidates


def _newest_state(ray_checkpoint) -> dict | None:
    import torch

    best = None
    for ckpt in _stored_states(ray_checkpoint):
        try:
            with ckpt.as_directory() as d:
                state = torch.load(Path(d) / STATE_FILE, weights_only=False, map_location="cpu")
        except Exception as exc:  # an incomplete checkpoint (crash mid-write) is skipped
            log.warning("skipping unreadable checkpoint %s: %s", ckpt.path, exc)
            continue
        if best is None or state["epoch"] > best["epoch"]:
            best = state
    return best


def rest_trainable(config: dict, checkpoint_every: int = 1) -> None:
    """Ray Tune function trainable: one REST configuration, checkpointed per epoch."""
    import ray
    import torch
    from ray import tune

    from .train import Trainer

    values = config.get("cfg", config)
    settings = TrainSettings.from_dict({k: v for k, v in values.items() if k != "extra"})
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(round(cpus))))
    trainer = Trainer(settings)
    state = _newest_state(tune.get_checkpoint())
    if state is not None:
        trainer.load_state_dict(state)
        log.info("trial %s resumes after epoch %d", tune.get_context().get_trial_id(), trainer.epoch)
    resumed_from = trainer.epoch
    node = ray.get_runtime_context().get_node_id()
    while trainer.epoch < settings.epochs:
        record = trainer.run_epoch()
        record.update(resumed_from_epoch=resumed_from, node_id=node, pid=os.getpid(),
                      val_rank=record["val_worst_group_acc"] + TIE_BREAK * record["val_avg_acc"])
        if trainer.epoch % checkpoint_every == 0 or trainer.epoch == settings.epochs:
            with tempfile.TemporaryDirectory() as d:
                torch.save(trainer.state_dict(), Path(d) / STATE_FILE)
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
            key = tuple(trial.config[k] for k in self.cell_keys)
            if key not in self.cells:
                self.cells[key] = AsyncHyperBandScheduler(**self.asha)
            return self.cells[key]

        def on_trial_add(self, tune_controller, trial):
            self.cell(trial).on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            return self.cell(trial).on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller, trial, result):
            if trial.trial_id in self.cell(trial)._trial_info:
                self.cell(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial):
            self.cell(trial)._trial_info.pop(trial.trial_id, None)

        def debug_string(self) -> str:
            stopped = sum(s._num_stopped for s in self.cells.values())
            return f"per-cell ASHA over {self.cell_keys}: {len(self.cells)} cells, {stopped} trials stopped early"

    return PerCellASHA


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


def _tuner(phase: str, path: Path, spec: StudySpec, opts: RunOptions, param_space: dict, scheduler):
    from ray import tune

    run_config = tune.RunConfig(
        name=phase,
        storage_path=str(path),
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


def load_trials(experiment: Path) -> list[dict]:
    """Every trial of a phase: config, last metrics and status, read from disk alone."""
    from ray.tune import ExperimentAnalysis

    if not experiment.is_dir():
        return []
    analysis = ExperimentAnalysis(str(experiment))
    trials = []
    for t in analysis.trials:
        config = t.config.get("cfg", t.config)
        trials.append({"trial_id": t.trial_id, "config": config, "status": t.status,
                       "last": dict(t.last_result or {}), "error": bool(t.error_file) or t.status == "ERROR"})
    return trials


def select_confirm_configs(spec: StudySpec, trials: list[dict]) -> list[dict]:
    """Top-k configs of each cell by best validation worst-group accuracy (+ ERM baseline), x seeds."""
    by_cell: dict[tuple, list[dict]] = {}
    for t in trials:
        if "best_val_worst_group_acc" in t["last"]:
            by_cell.setdefault(spec.cell_of(t["config"]), []).append(t)
    epochs = spec.confirm.epochs or spec.train.epochs
    configs = []
    for cell, members in sorted(by_cell.items(), key=lambda kv: str(kv[0])):
        ranked = sorted(members, key=lambda t: (-_nan_low(t["last"]["best_val_worst_group_acc"]),
                                                -_nan_low(t["last"].get("best_val_avg_acc", 0.0))))
        chosen: list[dict] = []
        for t in ranked:
            cfg = {k: t["config"][k] for k in t["config"] if k != "seed"}
            if cfg not in chosen:
                chosen.append(cfg)
            if len(chosen) == spec.confirm.top_k:
                break
        for rank, cfg in enumerate(chosen, 1):
            for seed in spec.confirm.seeds:
                configs.append({**cfg, "seed": seed, "epochs": epochs, "extra": {"role": f"top{rank}"}})
        if spec.confirm.baseline:
            base = {**chosen[0], "density": 1.0, "reweight": "none", "lambda_upweight": 1.0}
            for seed in spec.confirm.seeds:
                configs.append({**base, "seed": seed, "epochs": epochs, "extra": {"role": "erm_baseline"}})
    return configs


def _nan_low(x: float) -> float:
    return -math.inf if x is None or x != x else x


# ------------------------------------------------------------------ running

def connect(address: str | None, gpus_needed: float) -> None:
    """Join the cluster at `address` (or start a local Ray) and check it can run the trials."""
    import ray

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


def prepare_data(spec: StudySpec, data_root: str | None) -> None:
    """Build or decode every dataset cell of the search grid once, here, before trials start.

    Trials on this node then memory-map the cache; other nodes build their own
    cache once (a file lock keeps concurrent trials from doing it twice).
    """
    from .data import load_dataset

    def values(key: str) -> list:
        dist = spec.search.get(key)
        return list(dist["grid"]) if dist and "grid" in dist else [getattr(spec.train, key)]

    root = data_root or spec.train.data_root
    for dataset in values("dataset"):
        for pct in values("conflict_pct"):
            log.info("preparing %s at %g%% conflicting", dataset, pct)
            load_dataset(dataset, pct, root)


def run_study(path: Path, spec: StudySpec, opts: RunOptions) -> dict:
    """Run every phase that is not done. Returns the manifest; phase status 'interrupted' if stopped."""
    from ray import tune

    manifest = read_manifest(path)
    if all(info["status"] in ("done", "skipped") for info in manifest["phases"].values()):
        log.info("study %s is already complete", path.name)
        return manifest
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    connect(opts.address, gpus)
    for phase in PHASES:
        info = manifest["phases"][phase]
        if info["status"] in ("done", "skipped"):
            continue
        experiment = path / phase
        trainable = _trainable(spec, opts)
        if tune.Tuner.can_restore(str(experiment)):
            log.info("restoring phase %s from %s", phase, experiment)
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        elif phase == "search":
            tuner = _tuner(phase, path, spec, opts, search_space(spec, opts.data_root), make_scheduler(spec))
        else:
            configs = _confirm_configs(path, spec, opts)
            from ray.tune.schedulers import FIFOScheduler

            tuner = _tuner(phase, path, spec, opts, {"cfg": tune.grid_search(configs)}, FIFOScheduler())
        info["status"] = "running"
        write_manifest(path, manifest)
        start = time.time()
        results = tuner.fit()
        info["wall_seconds"] += time.time() - start
        unfinished = len(results) - results.num_terminated - results.num_errors
        info.update(trials=len(results), errors=results.num_errors, unfinished=unfinished)
        info["status"] = "interrupted" if unfinished else "done"
        write_manifest(path, manifest)
        if unfinished:
            return manifest
    return manifest


def _confirm_configs(path: Path, spec: StudySpec, opts: RunOptions) -> list[dict]:
    file = path / "confirm_configs.json"
    if file.exists():
        return json.loads(file.read_text())
    configs = select_confirm_configs(spec, load_trials(path / "search"))
    if not configs:
        raise StudyError(f"the search phase of {path.name} has no trial with results to confirm")
    if opts.data_root:
        configs = [{**c, "data_root": opts.data_root} for c in configs]
    file.write_text(json.dumps(configs, indent=1))
    return configs


def summarize(path: Path, spec: StudySpec) -> list[dict]:
    """Best config per cell: the confirm phase's seed mean if it ran, else the search phase's best."""
    confirm = [t for t in load_trials(path / "confirm") if t["last"]]
    rows = []
    if confirm:
        groups: dict[tuple, list[dict]] = {}
        for t in confirm:
            cfg = {k: v for k, v in t["config"].items() if k not in ("seed", "extra")}
            role = t["config"].get("extra", {}).get("role", "")
            groups.setdefault((role, json.dumps(cfg, sort_keys=True)), []).append(t)
        for (role, cfg_json), members in groups.items():
            cfg = json.loads(cfg_json)
            values = [m["last"]["best_test_worst_group_acc"] for m in members]
            rows.append({"cell": spec.cell_of(cfg), "role": role, "density": cfg["density"],
                         "lambda_upweight": cfg["lambda_upweight"], "reweight": cfg["reweight"], "seeds": len(values),
                         "test_worst_group_acc": sum(values) / len(values)})
    else:
        best: dict[tuple, dict] = {}
        for t in load_trials(path / "search"):
            if "best_val_worst_group_acc" not in t["last"]:
                continue
            cell = spec.cell_of(t["config"])
            if cell not in best or _nan_low(t["last"]["best_val_worst_group_acc"]) > _nan_low(best[cell]["last"]["best_val_worst_group_acc"]):
                best[cell] = t
        for cell, t in best.items():
            rows.append({"cell": cell, "role": "search", "density": t["config"]["density"],
                         "lambda_upweight": t["config"]["lambda_upweight"], "reweight": t["config"]["reweight"],
                         "seeds": 1, "test_worst_group_acc": t["last"]["best_test_worst_group_acc"]})
    return sorted(rows, key=lambda r: (str(r["cell"]), r["role"]))
