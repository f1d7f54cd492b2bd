#!/usr/bin/env python3
"""What deterministic early stopping costs: the default study's search phase in both scheduler modes.

One run each, on this machine, of `search_spaces/default.yaml` without its confirm phase:

1. `scheduler.mode: deterministic` and `mode: async`: wall time of the search phase (Tune's
   fit, from the manifest) and trial-epochs, as deterministic / async ratios.
2. The full grid (same space, scheduler none): trial-epochs of each mode as a fraction of
   it, and whether each mode's pick per cell (by rest.selection, as the study confirms it)
   is the full grid's.
3. Deterministic mode's price: pauses (from the study's search_rungs.json), resumes from a
   rung checkpoint, the time trials spent in setup and checkpoint loading after a resume
   (`restore_seconds`), and the time from Ray restarting a paused trial to its first report.
4. Other schedules, without training: deterministic halving is a function of the records at
   its rungs, and training is bit-reproducible, so replaying the rule on the full grid's
   records gives exactly what a run would stop and pick. The replay of the run's own
   schedule must match the run (a check of the scheduler); the others show which
   grace_period / reduction_factor meet the targets.

The machine load (1-minute average) before and after every run goes into the JSON.

Usage: .venv/bin/python benchmarks/determinism_bench.py [--keep DIR] [--full-grid DIR/bench_full]
Writes benchmarks/results/determinism_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from study_bench import run_cli, selected, trials  # noqa: E402

from rest.study.rungs import cut  # noqa: E402
from rest.study.search import TrialGroups, rung_epochs  # noqa: E402
from rest.study.space import parse_space  # noqa: E402

TARGETS = {"wall_ratio": 1.15, "full_grid_fraction": 0.55}


def run(space: dict, name: str, storage: Path) -> dict:
    """Run `space` as study `name`; its search phase's wall, trials and pause figures, and the load around it."""
    file = storage / f"{name}.yaml"
    file.write_text(yaml.safe_dump(dict(space, name=name, confirm=None)))
    load_before = os.getloadavg()[0]
    print(f"running {name} ...", file=sys.stderr, flush=True)
    wall = run_cli("run", str(file), "--storage", str(storage))
    study = storage / name
    manifest = json.loads((study / "manifest.json").read_text())
    rows = trials(study / "search")
    book = study / "search_rungs.json"
    return {
        "driver_wall_seconds": wall,
        "search_wall_seconds": manifest["phases"]["search"]["wall_seconds"],
        "trial_epochs": sum(len(r["records"]) for r in rows),
        "training_seconds": sum(e.get("epoch_seconds", 0.0) for r in rows for e in r["records"].values()),
        "trials": len(rows),
        "stopped_early": sum(len(r["records"]) < space["train"]["epochs"] for r in rows),
        "pauses": json.loads(book.read_text())["pauses"] if book.exists() else 0,
        **resume_costs(study / "search"),
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
        "rows": rows,
    }


def resume_costs(experiment: Path) -> dict:
    """Resumes from a checkpoint and their time, from every record Ray received (result.json)."""
    resumes, restore, restart = 0, 0.0, 0.0
    for trial in experiment.glob("trial_*"):
        raw = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        segments = {r["resumed_from_epoch"] for r in raw if r.get("resumed_from_epoch")}
        resumes += len(segments)
        restore += sum(r.get("restore_seconds") or 0.0 for r in raw)
        seen = 0
        for r in raw:  # a record at an epoch already seen is the one a resumed trial reports again first
            if r["epoch"] <= seen:
                restart += r.get("time_this_iter_s") or 0.0
            seen = max(seen, r["epoch"])
    return {"resumes": resumes, "restore_seconds": restore, "restart_to_first_report_seconds": restart}


def picks(rows: list[dict], full: list[dict], cells: list[str], searched: list[str]) -> dict:
    """Per cell: the mode's pick, the full grid's, and whether they are the same config."""
    mine, theirs = selected(rows, cells), selected(full, cells)
    return {
        str(cell): {
            "pick": {k: row["config"][k] for k in searched},
            "full_grid_pick": {k: theirs[cell]["config"][k] for k in searched},
            "same": all(row["config"][k] == theirs[cell]["config"][k] for k in searched),
        }
        for cell, row in mine.items()
    }


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else f"missed by {value - target:.2f}"


def replay(space: dict, full: list[dict], cells: list[str], searched: list[str]) -> dict:
    """Deterministic halving of `space`'s schedule replayed on the full grid's records: trial-epochs and picks."""
    import dataclasses

    spec = parse_space(yaml.safe_dump(dict(space, confirm=None)))
    groups, total = TrialGroups(spec), spec.max_epochs
    ran = {id(r): total for r in full}
    for group in {groups.group(r["config"]) for r in full}:
        alive = sorted((r for r in full if groups.group(r["config"]) == group), key=lambda r: groups.order(r["config"]))
        for rung in rung_epochs(spec):
            order, keep = cut(
                [r["records"][rung] for r in alive],
                spec.train.selection,
                spec.scheduler.reduction_factor,
            )
            for i in order[keep:]:
                ran[id(alive[i])] = rung
            alive = [alive[i] for i in sorted(order[:keep])]
    stopped = [dict(r, trial=dataclasses.replace(r["trial"], history=r["trial"].history[: ran[id(r)]])) for r in full]
    chosen = picks(stopped, full, cells, searched)
    return {
        "trial_epochs": sum(ran.values()),
        "full_grid_fraction": sum(ran.values()) / (len(full) * total),
        "same_picks": sum(c["same"] for c in chosen.values()),
        "picks": chosen,
    }


def report(result: dict) -> str:
    det, asy = result["deterministic"], result["async"]
    lines = [
        "# Deterministic vs async ASHA: the default study's search phase",
        "",
        f"One run each, {result['date']}, `search_spaces/{result['space']}` without its confirm phase, local Ray, "
        f"2 trials at once; 1-minute load {result['load_range'][0]:.1f}-{result['load_range'][1]:.1f} (2 cores).",
        "",
        "| figure | deterministic | async | full grid |",
        "|---|---:|---:|---:|",
        f"| search wall (s) | {det['search_wall_seconds']:.0f} | {asy['search_wall_seconds']:.0f} | "
        f"{result['full_grid']['search_wall_seconds']:.0f} |",
        f"| trial-epochs | {det['trial_epochs']} | {asy['trial_epochs']} | {result['full_grid']['trial_epochs']} |",
        f"| mean epoch (s; the machine's load shows here) | {det['training_seconds'] / det['trial_epochs']:.1f} | "
        f"{asy['training_seconds'] / asy['trial_epochs']:.1f} | "
        f"{result['full_grid']['training_seconds'] / result['full_grid']['trial_epochs']:.1f} |",
        f"| slot use = training time / (wall x 2) | {result['slot_use']['deterministic']:.2f} | "
        f"{result['slot_use']['async']:.2f} | {result['slot_use']['full_grid']:.2f} |",
        f"| fraction of the full grid | {result['det_full_grid_fraction']:.2f} | "
        f"{result['async_full_grid_fraction']:.2f} | 1 |",
        f"| picks equal the full grid's (cells) | {result['det_same_picks']} | {result['async_same_picks']} | |",
        f"| pauses / resumes from a rung checkpoint | {det['pauses']} / {det['resumes']} | 0 / {asy['resumes']} | |",
        f"| setup + checkpoint load after resumes (s) | {det['restore_seconds']:.1f} | "
        f"{asy['restore_seconds']:.1f} | |",
        f"| Ray restart to first report, resumed trials (s) | {det['restart_to_first_report_seconds']:.1f} | "
        f"{asy['restart_to_first_report_seconds']:.1f} | |",
        "",
        f"- wall ratio deterministic / async: **{result['wall_ratio']:.2f}** (target <= {TARGETS['wall_ratio']}: "
        f"{verdict(result['wall_ratio'], TARGETS['wall_ratio'])})",
        f"- trial-epoch ratio deterministic / async: {result['trial_epoch_ratio']:.2f}",
        f"- deterministic trial-epochs / full grid: **{result['det_full_grid_fraction']:.2f}** "
        f"({verdict(result['det_full_grid_fraction'], TARGETS['full_grid_fraction'])}), picks equal to the full "
        f"grid's in {result['det_same_picks']} of {result['cells']} cells (target: all)",
        "",
        "Other schedules, replayed on the full grid's records (exact for deterministic halving; "
        f"the replay of the run's schedule matches the run: {result['replay_matches_run']}):",
        "",
        "| grace_period | reduction_factor | trial-epochs / full grid | picks equal the full grid's |",
        "|---:|---:|---:|---:|",
        *(
            f"| {s['grace_period']} | {s['reduction_factor']} | {s['full_grid_fraction']:.2f} | "
            f"{s['same_picks']} of {result['cells']} |"
            for s in result["schedules"]
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "determinism_bench.json")
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "default.yaml")
    parser.add_argument("--keep", type=Path, default=None, help="keep the studies in this directory")
    parser.add_argument(
        "--full-grid",
        type=Path,
        default=None,
        help="reuse a kept full-grid study of the same space (a bench_full directory)",
    )
    args = parser.parse_args()
    space = yaml.safe_load(args.space.read_text())
    cells = space.get("compare_within", ["dataset", "conflict_pct"])
    searched = [k for k in space["search"] if k not in cells]
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.keep or Path(tmp)
        storage.mkdir(parents=True, exist_ok=True)
        runs = {
            mode: run(dict(space, scheduler={**space["scheduler"], "mode": mode}), f"bench_{mode}", storage)
            for mode in ("deterministic", "async")
        }
        if args.full_grid:  # its figures (wall, load) are those of its own run
            runs["full_grid"] = json.loads((args.full_grid / "figures.json").read_text())
            runs["full_grid"]["rows"] = trials(args.full_grid / "search")
        else:
            runs["full_grid"] = run(dict(space, scheduler={"type": "none"}), "bench_full", storage)
            (storage / "bench_full" / "figures.json").write_text(
                json.dumps({k: v for k, v in runs["full_grid"].items() if k != "rows"})
            )
    full = runs["full_grid"]["rows"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "space": args.space.name,
        "cells": 0,
        "uptime_before": uptime_before,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    for mode in ("deterministic", "async"):
        short = "det" if mode == "deterministic" else "async"
        chosen = picks(runs[mode]["rows"], full, cells, searched)
        result[f"{short}_picks"] = chosen
        result[f"{short}_same_picks"] = sum(c["same"] for c in chosen.values())
        result[f"{short}_full_grid_fraction"] = runs[mode]["trial_epochs"] / runs["full_grid"]["trial_epochs"]
        result["cells"] = len(chosen)
    for mode, figures in runs.items():
        result[mode] = {k: v for k, v in figures.items() if k != "rows"}
    result["wall_ratio"] = runs["deterministic"]["search_wall_seconds"] / runs["async"]["search_wall_seconds"]
    result["trial_epoch_ratio"] = runs["deterministic"]["trial_epochs"] / runs["async"]["trial_epochs"]
    result["slot_use"] = {m: r["training_seconds"] / (2 * r["search_wall_seconds"]) for m, r in runs.items()}
    loads = [v for r in runs.values() for v in (r["load_1min_before"], r["load_1min_after"])]
    result["load_range"] = [min(loads), max(loads)]
    result["targets"] = TARGETS
    own = replay(space, full, cells, searched)
    result["replay_matches_run"] = (
        own["trial_epochs"] == runs["deterministic"]["trial_epochs"] and own["picks"] == result["det_picks"]
    )
    result["schedules"] = [
        {
            "grace_period": g,
            "reduction_factor": rf,
            **replay(
                dict(space, scheduler={**space["scheduler"], "grace_period": g, "reduction_factor": rf}),
                full,
                cells,
                searched,
            ),
        }
        for g in (1, 2, 3)
        for rf in (2, 3, 4)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
