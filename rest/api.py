"""The Python API: run or continue a study, and read one, from a notebook or a script.

    import rest
    study = rest.run_study("search_spaces/smoke.yaml", storage="studies")
    study.best_configs()            # pandas DataFrame, the table `export` writes
    study.trials()                  # one row per trial, selected-epoch metrics
    study.export("results/smoke")   # every table, the plot and the summary
    study.status()                  # progress per phase and cell, read from storage now

    study = rest.load_study("smoke", storage="studies")   # read-only, no Ray needed
    rest.api.export_model("smoke", "colored_digits:1", storage="studies", out="m.pt")  # then rest.load_model("m.pt")

The command line is a thin layer over the same calls. This module sits above the report
layer (which trial a cell selected) and the deploy layer (model files): ``export_model``
joins the two, so neither imports the other.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rest.report.results import StudyResults

PROG = "tune_search.py"  # the command a message tells the user to run


class Study(StudyResults):
    """A study's results with export's tables at hand (the reader itself knows nothing of export)."""

    def best_configs(self, selection: str = "val"):
        """The selected config of every cell beside both dense baselines (what `export` writes).

        `selection` is the ranking, as export's ``--selection``: ``val`` or ``oracle``.
        """
        from rest.report.export import best_configs

        return best_configs(self, selection)

    def export(self, out, formats=("md", "csv", "tex"), selection: str = "val") -> list[Path]:
        """Write every table, the plot and the summary to directory `out`; returns the paths.

        `selection` is the ranking, as export's ``--selection``: ``val`` or ``oracle``.
        """
        from rest.report.export import export

        return export([self], Path(out), list(formats), selection)

    def status(self):
        """Progress per phase and cell, read from storage now (``rest.report.status.StudyStatus``; no Ray needed).

        Trials done / running / pending / errored / stopped by the scheduler, trial-epochs
        done of planned, the best config so far, an ETA, stalls and the driver's heartbeat:
        what ``tune_search.py status`` shows. Call it again for fresh numbers while the study runs.
        """
        from rest.report.status import study_status

        return study_status(self.location, self.spec)


def run_study(
    space: str | os.PathLike,
    *,
    storage: str | None = None,
    name: str | None = None,
    address: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    max_failures: int | None = None,
    data_root: str | None = None,
    verbose: int = 0,
    autoscaling: bool = False,
    stall_minutes: float = 10.0,
    lease_seconds: float | None = None,
    heartbeat_seconds: float | None = None,
    storage_retry_seconds: float | None = None,
) -> Study:
    """Run the study defined in `space` (a study file), or continue it if `name` exists in storage.

    Options are those of ``tune_search.py run``; None means not given. A study that
    exists is continued as ``resume`` does: with the options it last ran with (data
    root, resources, retries) except those given here, each override logged as a
    warning; a `space` file that differs from the study's definition is refused.
    ``address``: None (or "local") starts a private Ray, "auto" joins this machine's
    running cluster, "HOST:PORT" that cluster; ``$RAY_ADDRESS`` stands in for None.

    Returns the finished study's results. Raises ``rest.study.driver.Interrupted`` on Ctrl-C
    (the study stays resumable: call again with the same arguments),
    ``rest.errors.TrialsFailed`` when trials ended in errors after their retries (the
    phase is failed; the message names each trial, its error and the fix: call again,
    or resume, once the cause is fixed, and the failed trials run again) and
    ``rest.errors.UserError`` on bad input, with a message naming the fix.

    storage_retry_seconds: how long reads and writes to object storage are retried
    while it does not answer, before a trial or the driver counts them as failed.

    verbose: 0 (default) nothing from Ray; 1 a progress line per phase (trials done,
    running, pending, best so far, ETA) logged at INFO by the ``rest.study.progress`` logger
    at most every 10 s; 2 Ray Tune's own tables and every result.
    """
    from rest.storage import resolve_storage
    from rest.study.driver import StopSignals
    from rest.study.manifest import check_name, is_complete, open_study, refuse_edited, study_dir
    from rest.study.options import resolve_options, warn_overrides
    from rest.study.progress import Every
    from rest.study.runner import begin_study
    from rest.study.runner import run_study as run_phases
    from rest.study.space import load_space

    spec, text = load_space(space)
    storage, name = resolve_storage(storage), check_name(name or spec.name)
    given = dict(
        address=address,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        max_concurrent=max_concurrent,
        max_failures=max_failures,
        data_root=data_root,
        verbose=verbose,
        autoscaling=autoscaling,
        stall_minutes=stall_minutes,
        lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds,
        storage_retry_seconds=storage_retry_seconds,
    )
    if study_dir(storage, name).join("manifest.json").is_file():
        path, spec, manifest = open_study(storage, name)  # refuses an edited study.yaml in storage
        refuse_edited(os.fspath(space), text, manifest)  # and a `space` that is not the study's definition
        if is_complete(manifest):
            return load_study(path.uri)
        opts, overrides = resolve_options(storage, name, given, manifest["options"])
        warn_overrides(name, overrides)
    else:
        opts, _ = resolve_options(storage, name, given)
        path = begin_study(spec, text, opts, f"rest.run_study({os.fspath(space)!r}, name={name!r})")
    progress = (
        Every(logging.getLogger("rest.study.progress").info) if opts.verbose == 1 else None
    )  # 0: silent, 2: Ray's own
    with StopSignals() as stop:
        run_phases(path, spec, opts, stop, progress)
    return load_study(path.uri)


def load_study(name_or_path: str | os.PathLike, storage: str | None = None) -> Study:
    """A study's results (finished or not), read without writing anything."""
    from rest.report.results import read_study
    from rest.study.manifest import find_study

    found = read_study(find_study(os.fspath(name_or_path), storage))
    return Study(found.location, found.spec, found.manifest, found.phases)


@dataclass(frozen=True)
class ExportedModel:
    """A model file ``export_model`` wrote: where, from what (a trial or a run), its density and epoch."""

    path: Path
    source: str
    density: float
    epoch: int | None  # the best epoch of the run, whose weights the file holds


def export_model(
    study_or_run: str | os.PathLike,
    cell: str | None = None,
    *,
    storage: str | None = None,
    out: str | os.PathLike | None = None,
) -> ExportedModel:
    """Write the model file (``rest.load_model`` reads it) of a cell's selected trial, or of a `train --out` run.

    ``cell`` ("DATASET:CONFLICT_PCT") is needed for a study: its selected config's
    trial, at the epoch the tables report (``selected_epoch_state``). ``out`` defaults to
    ``results/<study>/model-<cell>.pt`` (``<run>/model.pt`` for a run); an existing file is refused.
    """
    from rest.deploy.model_file import is_train_run, run_state, save_sparse_model
    from rest.errors import UserError
    from rest.report.export import read_for_export
    from rest.study.manifest import find_study

    source = os.fspath(study_or_run)
    if is_train_run(source):  # a `train --out` directory: its selected epoch
        state, what, default = run_state(Path(source)), f"run {source}", Path(source) / "model.pt"
    elif cell is None:
        raise UserError(
            f"export-model of study {source} needs --cell DATASET:CONFLICT_PCT, e.g. --cell colored_digits:1"
        )
    else:
        study = read_for_export(find_study(source, storage))
        trial = selected_trial(study, cell)
        state, what = selected_epoch_state(trial), f"trial {trial.trial_id}"
        default = Path("results") / study.name / f"model-{cell.replace(':', '-')}.pt"
    path = save_sparse_model(state, Path(out) if out is not None else default)
    return ExportedModel(path, what, float(state["settings"]["density"]), state["best"].get("best_epoch"))


def selected_trial(study: StudyResults, cell: str):
    """The trial behind a cell's selected config: of its seeds, the one the selection rule ranks first."""
    from rest import selection
    from rest.report.export import ExportError, format_value
    from rest.report.tables import BASELINE_ROLES, best_configs, ranked_by, selection_pool

    spec = study.spec
    keys = spec.compare_within
    parts = cell.split(":")
    if len(parts) != len(keys):
        raise ExportError(f"--cell {cell} must give {':'.join(k.upper() for k in keys)}, e.g. colored_digits:1")
    best = best_configs(study)
    chosen = best[best["status"] != "baseline"] if not best.empty else best
    match = chosen[[all(_same(r[k], text) for k, text in zip(keys, parts)) for _, r in chosen.iterrows()]]
    if match.empty:
        cells = sorted({":".join(format_value(r[k]) for k in keys) for _, r in chosen.iterrows()})
        raise ExportError(f"unknown cell {cell}; cells with results: {', '.join(cells) or 'none'}")
    row = match.iloc[0]
    pool = selection_pool(study.trials())
    pool = pool[~pool["role"].isin(list(BASELINE_ROLES))]
    for key in keys + spec.searched_keys():
        pool = pool[[_same(v, format_value(row[key])) for v in pool[key]]]
    primary, prefix = ranked_by(spec, "val")
    (index,) = selection.select(pool.to_dict("records"), primary, prefix)
    trial_id = pool.iloc[index]["trial_id"]
    return next(t for t in study.all_trials() if t.trial_id == trial_id)


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def selected_epoch_state(trial) -> dict:
    """The training state that holds the weights of the trial's selected epoch, the one its
    table rows report; refused, naming the trial and the epoch, when no readable one does.

    The newest checkpoint holds them; an older one does too if it was written at or after
    that epoch and chose the same one. An older state's best-so-far weights from an
    earlier epoch are never taken in their place.
    """
    from rest.core.model_format import weights_epoch
    from rest.report.export import ExportError
    from rest.study.contract import checkpoint_states

    selected = trial.selected()
    if not selected:
        raise ExportError(f"trial {trial.trial_id} has no finished epoch; resume the study first")
    epoch, unreadable = int(selected["epoch"]), []
    for ckpt, state, _ in checkpoint_states(trial.location):
        if state is None:
            unreadable.append(ckpt.name)
        elif weights_epoch(state) == epoch:
            return state
        elif int(state["epoch"]) < epoch:
            break  # written before the selected epoch: neither it nor older ones hold its weights
    why = f"checkpoint {', '.join(unreadable)} is unreadable" if unreadable else "no checkpoint holds them"
    out = f"runs/retrain-{trial.trial_id}"
    raise ExportError(
        f"the weights of trial {trial.trial_id}'s selected epoch {epoch}, the one the tables report, cannot be "
        f"read ({why}); no model file was written. Retrain that config with its stored settings: "
        f"{retrain_command(trial.config, out)} ; then: {PROG} export-model {out}"
    )


def retrain_command(config: dict, out: str) -> str:
    """The `train` command that trains a trial's config again: every setting that differs from the default."""
    import dataclasses
    import shlex

    from rest.settings import TrainSettings

    settings = TrainSettings.from_dict(config)
    default = TrainSettings()
    flags = [
        f"--{f.name.replace('_', '-')}={shlex.quote(str(getattr(settings, f.name)))}"
        for f in dataclasses.fields(settings)
        if "help" in f.metadata and getattr(settings, f.name) != getattr(default, f.name)
    ]
    return " ".join([PROG, "train", *flags, "--out", shlex.quote(out)])


__all__ = ["run_study", "load_study", "export_model", "Study", "ExportedModel"]
