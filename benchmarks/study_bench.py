#!/usr/bin/env python3
"""Study figures of the Ray Tune issue, measured in one run on this machine.

1. `run search_spaces/default.yaml` wall time (what `make study` spends after install,
   before export) and Ray efficiency = sum of trial training time / (wall x concurrent
   trials), where trial training time is the sum of the trials' epoch times.
2. ASHA savings: the default study's search phase (per-cell ASHA) against the full
   grid (same study, scheduler none, same seed): trial-epochs run / trial-epochs of
   the full grid, and for each cell the test worst-group accuracy of ASHA's selected
   config (trained to the end in the full grid) against the full grid's selected one.

Usage: .venv/bin/python benchmarks/study_bench.py [--out benchmarks/results/study_bench.json]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_cli(*args: str) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "tune_search.py"), "-q", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"study failed: {out.stderr[-2000:]}")
    return time.perf_counter() - start


def trials(experiment: Path) -> list[dict]:
    """Per trial of a phase, through the project's study reader: config, history, selected epoch."""
    from rest.storage import local
    from rest.study.trials import read_phase

    return [
        {"config": t.config, "records": {r["epoch"]: r for r in t.history}, "last": t.history[-1], "trial": t}
        for t in read_phase(local(experiment), experiment.name)
        if t.history
    ]


def selected(rows: list[dict], cell_keys: list[str]) -> dict[tuple, dict]:
    """Per cell, the trial the project's selection rule ranks first (what the study would confirm)."""
    from rest import selection
    from rest.study.space import parse_space
    from rest.study.trials import trial_row

    spec = parse_space("search: {density: {grid: [1]}}")  # only max_epochs is read, from each trial's config
    table = [dict(trial_row(r["trial"], spec), _row=i) for i, r in enumerate(rows)]
    primary = rows[0]["config"].get("selection", "worst_group") if rows else "worst_group"
    return {cell: rows[top["_row"]] for cell, (top,) in selection.select_per_cell(table, cell_keys, primary).items()}


def key(config: dict, searched: list[str]) -> tuple:
    return tuple(config[k] for k in searched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study_bench.json")
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "default.yaml")
    parser.add_argument(
        "--full-grid",
        type=Path,
        default=None,
        help="reuse the search directory of an earlier full-grid run of the same space",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the studies in this directory")
    parser.add_argument("--name", default="default", help="name of the study run (default: default)")
    parser.add_argument(
        "--no-full-grid", action="store_true", help="time the study only; skip the full-grid comparison"
    )
    args = parser.parse_args()
    space = yaml.safe_load(args.space.read_text())
    searched = list(space["search"])
    cell_keys = space.get("compare_within", ["dataset", "conflict_pct"])
    concurrent = 2 / space.get("resources", {}).get("cpus_per_trial", 1)

    with tempfile.TemporaryDirectory() as tmp:
        storage = args.keep or Path(tmp)
        print("running the default study ...", file=sys.stderr, flush=True)
        wall = run_cli("run", str(args.space), "--storage", str(storage), "--name", args.name)
        manifest = json.loads((storage / args.name / "manifest.json").read_text())
        tune_wall = sum(p["wall_seconds"] for p in manifest["phases"].values())
        phases = {p: trials(storage / args.name / p) for p in ("search", "confirm")}
        train_time = sum(
            r["epoch_seconds"] for rows in phases.values() for row in rows for r in row["records"].values()
        )

        if args.no_full_grid:
            full_wall, full = math.nan, []
        elif args.full_grid:
            full_wall, full = math.nan, trials(args.full_grid)
        else:
            full_space = dict(space, scheduler={"type": "none"}, confirm=None, name="full")
            (storage / "full.yaml").write_text(yaml.safe_dump(full_space))
            print("running the full grid without early stopping ...", file=sys.stderr, flush=True)
            full_wall = run_cli("run", str(storage / "full.yaml"), "--storage", str(storage))
            full = trials(storage / "full" / "search")

    epochs = space["train"]["epochs"]
    asha_epochs = sum(len(row["records"]) for row in phases["search"])
    full_by_key = {key(row["config"], searched): row for row in full}
    cells = {}
    for cell, row in selected(phases["search"], cell_keys).items() if full else []:
        full_best = selected(full, cell_keys)[cell]
        asha_pick = full_by_key[key(row["config"], searched)]
        cells[str(cell)] = {
            "asha_selected": {k: row["config"][k] for k in searched},
            "full_selected": {k: full_best["config"][k] for k in searched},
            "asha_selected_test_wg_full_training": asha_pick["last"]["best_test_worst_group_acc"],
            "full_selected_test_wg": full_best["last"]["best_test_worst_group_acc"],
            "gap_points": 100
            * (full_best["last"]["best_test_worst_group_acc"] - asha_pick["last"]["best_test_worst_group_acc"]),
        }
    result = {
        "default_study_wall_seconds": wall,
        "tune_phases_wall_seconds": tune_wall,
        "trial_training_seconds": train_time,
        "concurrent_trials": concurrent,
        "ray_efficiency": train_time / (wall * concurrent),
        "ray_efficiency_tune_phases_only": train_time / (tune_wall * concurrent),
        "asha_trial_epochs": asha_epochs,
        "full_grid_trial_epochs": len(full) * epochs,
        "asha_fraction": asha_epochs / (len(full) * epochs) if full else math.nan,
        "full_grid_wall_seconds": full_wall,
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
