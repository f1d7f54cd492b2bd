#!/usr/bin/env python3
"""How many trial-epochs each search needs to find REST's best config, per cell.

Space: density log-uniform [0.01, 1] and lambda log-uniform [1, 100] on colored_digits
at 1 % and 5 % conflicting (two cells, each searched on its own). The reference is a
6 x 6 log-spaced grid per cell trained to the end (no early stopping); its best config
(chosen on validation by rest.selection) is confirmed with CONFIRM_SEEDS, which gives
the reference accuracy of the cell.

Three searches, each with per-cell ASHA and three searcher seeds:
- grid + ASHA: the same 36 grid points per cell, visited in a seed-shuffled order;
- random + ASHA: search_alg random, SAMPLES points per cell;
- TPE + ASHA: search_alg optuna (one TPE per cell, one live trial per cell), SAMPLES points.

Walking each run's epoch records in the order they were reported, the best-so-far
config of a cell is the trial ranked first by the selection rule on validation. The
figure is the number of the cell's trial-epochs spent when the best-so-far config,
confirmed by training it with CONFIRM_SEEDS, first reaches the reference accuracy
minus 1 point (test worst-group accuracy), as a fraction of the full grid's
trial-epochs (36 x epochs). Confirmations are trained only for configs that become
best-so-far, in order, until one is good enough, and cached in the work directory.

Everything runs through the project: rest.run_study for every search (a study with
`confirm: false`), rest.core.train.train in Ray tasks for the confirmations. Re-running
with the same --work reuses finished studies and confirmations.

Usage:
  .venv/bin/python benchmarks/search_bench.py [--work bench-work/search] [--quick]
Outputs: benchmarks/results/search_bench.json, search_bench.md, search_bench.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELLS = [1, 5]
GRID = 6
SAMPLES = 20  # random and TPE trials per cell
SEEDS = [0, 1, 2]  # searcher seeds
CONFIRM_SEEDS = [41, 42]
TOLERANCE = 0.01  # within 1 point of the reference (fractions)
# Small enough for a 2-core machine (1,000 images per split, 4 epochs), with a learning rate
# and batch size that let the CNN learn the digits in that budget (lr 0.01 at batch 128
# stayed near chance, 10 %, in both cells).
TRAIN = {
    "model": "cnn",
    "epochs": 4,
    "batch_size": 64,
    "subsample": 1000,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "schedule": "none",
    "sparse": "rigl",
    "distribution": "erk",
    "update_frequency": 20,
    "reweight": "oracle",
    "seed": 0,
}
ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 3}
METHODS = ("grid+ASHA", "random+ASHA", "TPE+ASHA")


def log_grid(low: float, high: float, n: int) -> list[float]:
    return [float(f"{low * (high / low) ** (i / (n - 1)):.4g}") for i in range(n)]


def study_file(name: str, method: str, seed: int, quick: bool) -> dict:
    densities, lambdas = log_grid(0.01, 1.0, GRID), log_grid(1.0, 100.0, GRID)
    space = {
        "name": name,
        "dataset": "colored_digits",
        "train": dict(TRAIN),
        "confirm": False,
        "scheduler": dict(ASHA),
        "compare_within": ["dataset", "conflict_pct"],
    }
    if quick:
        space["train"].update(epochs=2, subsample=400)
    cells = {"conflict_pct": {"grid": CELLS}}
    if method in ("reference", "grid+ASHA"):
        rng = random.Random(seed)
        if method == "grid+ASHA":  # a searcher seed for a grid is the order it visits the points in
            rng.shuffle(densities), rng.shuffle(lambdas)
        space["search"] = {**cells, "density": {"grid": densities}, "lambda_upweight": {"grid": lambdas}}
        if method == "reference":
            space["scheduler"] = {"type": "none"}
        return space
    space["search"] = {**cells, "density": {"loguniform": [0.01, 1.0]}, "lambda_upweight": {"loguniform": [1, 100]}}
    space["num_samples"] = SAMPLES if not quick else 4
    space["search_alg"] = (
        {"type": "random", "seed": seed}
        if method == "random+ASHA"
        else {"type": "optuna", "seed": seed, "max_concurrent": 1, "n_initial": 4}
    )
    return space


def run(work: Path, name: str, space: dict):
    import rest

    path = work / "spaces" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(yaml.safe_dump(space, sort_keys=False))
    start = time.time()
    study = rest.run_study(path, storage=str(work / "studies"), name=name)
    logging.info("%s: %.0f s", name, time.time() - start)
    return study


def epoch_stream(study, cell: int) -> list[tuple[dict, dict]]:
    """(trial config, epoch record) of one cell's search trials, in the order Ray received them."""
    out = []
    for t in study.phases.get("search", []):
        if t.config["conflict_pct"] == cell:
            out += [(t.config, r) for r in t.history]
    # Ray's report time; an epoch known only from a checkpoint (its driver was interrupted) sorts by its trial's time
    return sorted(out, key=lambda cr: (cr[1].get("timestamp", math.inf), cr[1].get("time_total_s", 0.0)))


def best_so_far(stream: list[tuple[dict, dict]]) -> list[tuple[int, dict, float]]:
    """(trial-epochs spent, best config, its search-run test worst-group) after every epoch record."""
    from rest import selection

    latest: dict[tuple, tuple[dict, dict]] = {}
    out = []
    for spent, (config, record) in enumerate(stream, 1):
        key = (config["density"], config["lambda_upweight"], config.get("seed"))
        latest[key] = (config, record)
        best_config, best_record = max(latest.values(), key=lambda cr: selection.rank_key(cr[1], prefix="best_val_"))
        out.append((spent, best_config, best_record["best_test_worst_group_acc"]))
    return out


def config_key(config: dict) -> str:
    return json.dumps({k: config[k] for k in ("conflict_pct", "density", "lambda_upweight")}, sort_keys=True)


class Confirmations:
    """Test worst-group accuracy of a config trained to the end, mean over CONFIRM_SEEDS (cached on disk)."""

    def __init__(self, file: Path, quick: bool):
        self.file = file
        self.cache = json.loads(file.read_text()) if file.exists() else {}
        self.quick = quick

    def get(self, configs: list[dict]) -> list[float]:
        import ray

        todo = {config_key(c): c for c in configs if config_key(c) not in self.cache}
        if todo:
            logging.info("confirming %d config(s) with seeds %s", len(todo), CONFIRM_SEEDS)
            refs = {
                (k, s): _confirm.remote(
                    {**TRAIN, **({"epochs": 2, "subsample": 400} if self.quick else {}), **json.loads(k), "seed": s}
                )
                for k in todo
                for s in CONFIRM_SEEDS
            }
            done = dict(zip(refs, ray.get(list(refs.values()))))
            for k in todo:
                self.cache[k] = sum(done[(k, s)] for s in CONFIRM_SEEDS) / len(CONFIRM_SEEDS)
            self.file.write_text(json.dumps(self.cache, indent=1))
        return [self.cache[config_key(c)] for c in configs]


def _confirm_task():
    import ray

    @ray.remote(num_cpus=1)
    def confirm(values: dict) -> float:
        import torch

        from rest.core.train import train
        from rest.settings import TrainSettings

        torch.set_num_threads(1)
        *_, record = train(TrainSettings.from_dict({**values, "dataset": "colored_digits"}).validate())
        return record["best_test_worst_group_acc"]

    return confirm


def candidates(curve: list[tuple[int, dict, float]]) -> list[tuple[int, dict]]:
    """(trial-epochs spent, config) each time the best-so-far config changes."""
    out, seen = [], set()
    for spent, config, _ in curve:
        if config_key(config) not in seen:
            seen.add(config_key(config))
            out.append((spent, config))
    return out


def reach_all(runs: list[dict], targets: dict[str, float], confirm: Confirmations) -> None:
    """Set each run's trial-epochs to target: its first best-so-far config whose confirmation reaches it.

    Confirms in rounds, one candidate per unsettled run at a time, all runs' candidates
    of a round in parallel; later candidates of a run that already reached are never trained.
    """
    pending = {i: 0 for i in range(len(runs))}
    for r in runs:
        r["trial_epochs_to_target"] = None
    while pending:
        batch = {i: runs[i]["_candidates"][k] for i, k in pending.items()}
        values = confirm.get([config for _, config in batch.values()])
        for (i, (spent, _)), value in zip(batch.items(), values):
            if value >= targets[str(runs[i]["cell"])]:
                runs[i]["trial_epochs_to_target"] = spent
                del pending[i]
            elif pending[i] + 1 < len(runs[i]["_candidates"]):
                pending[i] += 1
            else:
                del pending[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--work", type=Path, default=ROOT / "bench-work" / "search", help="studies and cached confirmations"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help=f"searcher seeds (default {SEEDS})")
    ap.add_argument(
        "--quick", action="store_true", help="tiny runs (3 x 3 grid, 2 epochs, 400 images, 4 samples): a smoke check"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("ray", "rest"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import ray

    global _confirm, GRID
    if args.quick:
        GRID = 3
    start = time.time()
    ray.init(include_dashboard=False, log_to_driver=False)
    _confirm = _confirm_task()
    epochs = 2 if args.quick else TRAIN["epochs"]
    full = GRID * GRID * epochs  # trial-epochs of the full grid, per cell
    confirm = Confirmations(args.work / "confirmations.json", args.quick)

    reference = run(args.work, "reference", study_file("reference", "reference", 0, args.quick))
    ref = {}
    for cell in CELLS:
        curve = best_so_far(epoch_stream(reference, cell))
        config = curve[-1][1]
        ref[str(cell)] = {
            "config": {k: config[k] for k in ("density", "lambda_upweight")},
            "search_test_wg": curve[-1][2],
            "confirmed_test_wg": confirm.get([config])[0],
            "trial_epochs": len(curve),
        }
        logging.info(
            "reference %s%%: %s -> confirmed %.3f", cell, ref[str(cell)]["config"], ref[str(cell)]["confirmed_test_wg"]
        )

    runs = []
    for seed in args.seeds:  # seed-major: every method gets its first seed before any gets a second
        for method in METHODS:
            name = f"{method.split('+')[0].lower()}_s{seed}"
            study = run(args.work, name, study_file(name, method, seed, args.quick))
            for cell in CELLS:
                curve = best_so_far(epoch_stream(study, cell))
                changes = candidates(curve)
                runs.append(
                    {
                        "method": method,
                        "seed": seed,
                        "cell": cell,
                        "trial_epochs_total": len(curve),
                        "final_config": {k: curve[-1][1][k] for k in ("density", "lambda_upweight")},
                        "curve": [(s, v) for s, _, v in curve],
                        "_candidates": changes,
                        "best_so_far_changes": [
                            (s, {k: c[k] for k in ("density", "lambda_upweight")}) for s, c in changes
                        ],
                    }
                )
    reach_all(runs, {c: ref[c]["confirmed_test_wg"] - TOLERANCE for c in ref}, confirm)
    for r in runs:
        del r["_candidates"]
        spent = r["trial_epochs_to_target"]
        r["fraction_of_grid"] = None if spent is None else spent / full
        logging.info(
            "%s seed %d cell %s%%: %s of %d trial-epochs",
            r["method"],
            r["seed"],
            r["cell"],
            spent,
            r["trial_epochs_total"],
        )

    result = {
        "settings": {
            "train": TRAIN if not args.quick else {**TRAIN, "epochs": 2, "subsample": 400},
            "asha": ASHA,
            "grid": GRID,
            "samples_per_cell": SAMPLES,
            "seeds": args.seeds,
            "confirm_seeds": CONFIRM_SEEDS,
            "tolerance": TOLERANCE,
            "quick": args.quick,
        },
        "full_grid_trial_epochs_per_cell": full,
        "reference": ref,
        "runs": runs,
        "wall_seconds": time.time() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"search_bench{suffix}.json").write_text(json.dumps(result, indent=1))
    table = summary_table(result)
    (args.out / f"search_bench{suffix}.md").write_text(table)
    plot(result, args.out / f"search_bench{suffix}.png")
    print(table)


def summary_table(result: dict) -> str:
    full = result["full_grid_trial_epochs_per_cell"]
    lines = [
        f"Trial-epochs until the best-so-far config, confirmed over seeds {result['settings']['confirm_seeds']}, "
        f"is within {100 * result['settings']['tolerance']:g} point of the reference grid's confirmed test "
        f"worst-group accuracy; fraction of the full grid ({full} trial-epochs per cell). "
        f"Searcher seeds {result['settings']['seeds']}; '-' = not reached within the run.",
        "",
        "| method | cell | reference (%) | per seed | mean fraction of grid | runs reaching | trial-epochs run |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        for cell in CELLS:
            rows = [r for r in result["runs"] if r["method"] == method and r["cell"] == cell]
            if not rows:
                continue
            per_seed = ", ".join("-" if r["fraction_of_grid"] is None else f"{r['fraction_of_grid']:.0%}" for r in rows)
            reached = [r["fraction_of_grid"] for r in rows if r["fraction_of_grid"] is not None]
            # a run that never reached counts with the trial-epochs it ran: a lower bound on its need
            bound = [
                r["fraction_of_grid"] if r["fraction_of_grid"] is not None else r["trial_epochs_total"] / full
                for r in rows
            ]
            mean = f"{sum(bound) / len(bound):.0%}" + ("" if len(reached) == len(rows) else " (lower bound)")
            lines.append(
                f"| {method} | {cell}% | {100 * result['reference'][str(cell)]['confirmed_test_wg']:.1f} "
                f"| {per_seed} | {mean} | {len(reached)}/{len(rows)} | "
                f"{', '.join(str(r['trial_epochs_total']) for r in rows)} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    full = result["full_grid_trial_epochs_per_cell"]
    fig, axes = plt.subplots(1, len(CELLS), figsize=(5 * len(CELLS), 4))
    for ax, cell in zip(np.atleast_1d(axes), CELLS):
        for method in METHODS:
            rows = [r for r in result["runs"] if r["method"] == method and r["cell"] == cell]
            if not rows:
                continue
            xs = np.linspace(0, max(r["trial_epochs_total"] for r in rows), 200)
            ys = []
            for r in rows:  # best-so-far (search run's own test number) as a step function of trial-epochs
                s, v = zip(*r["curve"])
                idx = np.searchsorted(s, xs, side="right") - 1
                ys.append(np.where(idx >= 0, np.asarray(v)[np.clip(idx, 0, None)], np.nan))
            with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")  # past a run's end its curve is nan
                ax.plot(xs / full, 100 * np.nanmean(ys, axis=0), label=method)
            for r in rows:
                if r["trial_epochs_to_target"] is not None:
                    ax.axvline(
                        r["trial_epochs_to_target"] / full, color=ax.lines[-1].get_color(), alpha=0.3, linewidth=1
                    )
        ref = result["reference"][str(cell)]["confirmed_test_wg"]
        ax.axhline(
            100 * (ref - result["settings"]["tolerance"]),
            color="black",
            linestyle="--",
            linewidth=1,
            label="reference - 1 point (confirmed)",
        )
        ax.axvline(0.25, color="grey", linestyle=":", linewidth=1, label="25% of the grid")
        ax.set_title(f"colored_digits, {cell}% conflicting")
        ax.set_xlabel("trial-epochs / full grid's")
        ax.set_ylabel("best-so-far test worst-group (%), mean over seeds")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8, title="faint lines: a seed reached the target", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
