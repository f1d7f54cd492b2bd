"""The Python API: run or continue a study, and read one, from a notebook or a script.

    import rest
    study = rest.run_study("search_spaces/smoke.yaml", storage="studies")
    study.best_configs()            # pandas DataFrame, the table `export` writes
    study.trials()                  # one row per trial, selected-epoch metrics
    study.export("results/smoke")   # every table, the plot and the summary
    study.status()                  # progress per phase and cell, read from storage now

    study = rest.load_study("smoke", storage="studies")   # read-only, no Ray needed

The command line is a thin layer over the same calls.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rest.report.results import StudyResults


class Study(StudyResults):
    """A study's results with export's tables at hand (the reader itself knows nothing of export)."""

    def best_configs(self, selection: str = "val"):
        """The selected config of every cell beside both dense baselines (what `export` writes)."""
        from rest.report.export import best_configs

        return best_configs(self, selection)

    def export(self, out, formats=("md", "csv", "tex"), selection: str = "val") -> list[Path]:
        """Write every table, the plot and the summary to directory `out`; returns the paths."""
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
    from rest.report.export import find_study
    from rest.report.results import read_study

    found = read_study(find_study(os.fspath(name_or_path), storage))
    return Study(found.location, found.spec, found.manifest, found.phases)


__all__ = ["run_study", "load_study", "Study"]
