"""The ``run`` and ``resume`` commands: a study on Ray Tune, driven under stop signals.

Ray and the study's Ray modules are imported inside the handlers, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rest.cli.common import PROG, StudyProgress, pct

log = logging.getLogger("rest")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run a study (search, then confirm) on Ray Tune")
    p.add_argument("space", type=Path, help="study definition, e.g. search_spaces/default.yaml")
    p.add_argument("--name", default=None, help="study name (default: the file's name)")
    _add_cluster_flags(p)
    p.set_defaults(handler=cmd_run)

    p = subparsers.add_parser(
        "resume", help="continue an interrupted study where it stopped, with the options it ran with"
    )
    p.add_argument("name", help="study name (a directory under --storage)")
    _add_cluster_flags(p)
    p.set_defaults(handler=cmd_resume)


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """The run options of `run` and `resume` (rest.study.options.RunOptions); resume keeps the study's unless given."""
    p.add_argument(
        "--storage",
        default=None,
        help="directory or s3:// / gs:// URI holding studies "
        "(default $REST_TUNE_STORAGE or ./studies); "
        "shared by all nodes on a multi-node cluster",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray to run on: local (a private Ray started for this driver alone), "
        "auto (the cluster 'ray start' started on this machine) or HOST:PORT (default $RAY_ADDRESS, else local)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="dataset root for folder datasets (overrides the study file; resume: the study's, unless given)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=None,
        help="CPUs per trial (default: the study file's; resume: the study's)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial, fractions allowed (default: the study file's; resume: the study's)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="at most this many trials at once (default: as resources allow; resume: the study's)",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: do not refuse trials that no current node can run",
    )
    p.add_argument(
        "--stall-minutes",
        type=float,
        default=10.0,
        help="say so when trials wait this long for resources with none running (default 10)",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="console output: 0 none from Ray (only warnings, errors and the summary), 1 one progress "
        "line per phase: trials done/running/pending, best so far, ETA (default), 2 Ray Tune's own "
        "tables and every result",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=None,
        help="retries of a failing trial, from its last checkpoint (default 2; resume: the study's); "
        "a trial still failing fails its phase: exit 3, and resume runs it again",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="a driver on another host whose lock goes unrenewed this long is taken over; one on this host "
        "only once its process is gone (default 60; resume: the study's)",
    )
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=None,
        help="how often the driver renews its lock and checks that it still holds it (default 10; resume: the study's)",
    )
    p.add_argument(
        "--storage-retry-seconds",
        type=float,
        default=None,
        help="how long reads and writes to object storage (s3://, gs://) are retried while it does not "
        "answer, before a trial or the driver fails (default 300; resume: the study's; 0: no retries)",
    )


def _given_options(args: argparse.Namespace) -> dict:
    """The run options the flags give (None: not given), for rest.study.options.resolve_options."""
    from rest.study.options import CHECKS  # every run option, by RunOptions field; run and resume have a flag for each

    return {key: getattr(args, key) for key in CHECKS}


def _finish(path, spec, manifest: dict, storage: str) -> int:
    name = manifest["name"]
    stopped = [p for p, info in manifest["phases"].items() if info["status"] == "interrupted"]
    if stopped:
        print(
            f"study {name}: the {stopped[0]} phase has trials that ended before their planned epochs; "
            f"continue with: {PROG} resume {name} --storage {storage}"
        )
        return 1
    print(f"\nstudy {name} finished: {path}")
    _print_best(path, spec)
    return 0


def _print_best(path, spec) -> None:
    """The selected config of every cell, as the tables say it; a cell with failed configs says how many."""
    from rest.report.export import format_value
    from rest.report.results import read_study
    from rest.report.tables import best_configs

    best = best_configs(read_study(path, spec))
    print(
        f"best config per cell ({best['selection'].iloc[0] if not best.empty else 'no results'}; "
        f"test numbers of the selected epochs, mean over seeds):"
    )
    searched = spec.searched_keys()
    own = {m.name: ["density", *m.train, *m.search] for m in spec.methods}  # a methods study: each method's settings
    for _, row in best.iterrows():
        cell = ", ".join(format_value(row[k]) for k in spec.compare_within)
        flag = "  [small deciding group]" if row.get("small_deciding_group") else ""
        flag += f"  [{row['failed']}]" if row.get("failed") else ""
        if str(row["status"]).startswith(("failed", "no results")):  # a cell without a selected config
            print(f"  [{cell}] {row['row']:>17}: {row['status']}{flag}")
            continue
        keys = dict.fromkeys(searched + own.get(row["row"], []))
        config = ", ".join(f"{k} {format_value(row[k])}" for k in keys if k in row)
        print(
            f"  [{cell}] {row['row']:>17}: {config} -> test worst-group {pct(row['best_test_worst_group_acc'])}%, "
            f"unbiased {pct(row['best_test_unbiased_acc'])}% "
            f"({row['seeds']} seed{'s' if row['seeds'] > 1 else ''}){flag}"
        )


def _drive(path, spec, opts, storage: str) -> int:
    """Run the study's pending phases under the driver's stop signals; exit status for the user."""
    from rest.errors import TrialsFailed
    from rest.study.driver import Interrupted, StopSignals
    from rest.study.runner import run_study

    progress = StudyProgress() if opts.verbose == 1 else None
    with StopSignals() as stop:
        try:
            try:
                manifest = run_study(path, spec, opts, stop, progress)
            finally:
                if progress is not None:
                    progress.close()  # a bar cut short by a stop or a failure ends its line before the messages
        except Interrupted as exc:
            print(f"interrupted; continue with: {PROG} resume {opts.name} --storage {storage}", flush=True)
            return 128 + exc.signum
        except TrialsFailed:
            print(f"\nstudy {opts.name} FAILED (incomplete results so far): {path}")
            try:
                _print_best(path, spec)
            except Exception as exc:  # what ran is a courtesy; the failure below is the message that matters
                log.warning("cannot summarise the partial results (%s)", exc)
            raise  # main prints the trials, their errors and the fix; exit status 3
    return _finish(path, spec, manifest, storage)


def _command_text(args: argparse.Namespace, name: str | None) -> str:
    """The command as a user can paste it: the study file relative to here when it is below here."""
    import os

    space = Path(args.space)
    if space.resolve().is_relative_to(Path.cwd()):
        space = Path(os.path.relpath(space.resolve()))
    parts = [PROG, "run", space.as_posix()] + (["--name", name] if name else [])
    if args.storage:
        parts += ["--storage", args.storage]
    return " ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    from rest.storage import resolve_storage
    from rest.study.manifest import check_name
    from rest.study.options import resolve_options
    from rest.study.runner import begin_study
    from rest.study.space import load_space

    spec, text = load_space(args.space)
    name = check_name(args.name or spec.name)
    storage = resolve_storage(args.storage)
    opts, _ = resolve_options(storage, name, _given_options(args))
    path = begin_study(spec, text, opts, _command_text(args, args.name))
    print(f"study {opts.name}: {spec.grid_size()} configurations in the search grid; writing {path}", flush=True)
    return _drive(path, spec, opts, storage)


def cmd_resume(args: argparse.Namespace) -> int:
    from rest.storage import resolve_storage
    from rest.study.manifest import check_name, is_complete, open_study
    from rest.study.options import resolve_options, warn_overrides

    check_name(args.name)
    storage = resolve_storage(args.storage)
    path, spec, manifest = open_study(storage, args.name)
    if is_complete(manifest):
        print(f"study {args.name} is already finished; export it with: {PROG} export {args.name} --storage {storage}")
        return 0
    opts, overrides = resolve_options(storage, args.name, _given_options(args), manifest["options"])
    warn_overrides(args.name, overrides)
    print(f"resuming study {args.name} from {path}", flush=True)
    return _drive(path, spec, opts, storage)
