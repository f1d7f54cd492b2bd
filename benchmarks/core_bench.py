"""Core benchmarks of rest-tune on the embedded colored_digits dataset (CNN, batch 256, CPU).

One process measures, in order:

1. Training-loop overhead: the median time of a real ``Trainer.run_epoch`` (density 1,
   oracle reweighting, lambda 30; the whole epoch as ``train`` runs it, validation and
   test evaluation included) divided by the median time of the same number of
   forward + backward + ``optimizer.step`` calls (same CNN, same batch sizes, SGD with
   momentum 0.9) on float tensors made before timing starts. Also reported without
   evaluation: ``fit_epoch`` time alone over the same baseline. Target <= 1.10.
2. Sparse overhead: median epoch time at density 0.05 (RigL, update_frequency 100)
   over the median dense epoch time, both real ``Trainer.run_epoch``. Target <= 1.10.
3. ERM vs oracle reweighting at 1 % conflicting (density 1), seeds 41, 42, 43: the
   selected-epoch (``best_*``) test conflicting and aligned accuracy, mean and standard
   error over seeds, and ERM's aligned - conflicting gap (expected >= 20 points).

Parts 1 and 2 interleave their variants within every repeat (rotating the order), so
noise from other processes on the machine hits all variants alike; ratios are ratios
of medians over repeats (the median of per-repeat paired ratios is reported too).
The breakdown of the real epoch (fit / evaluation / rest, sparse mask work) is
measured by wrapping ``rest.core.train.fit_epoch``, ``rest.core.train.evaluate`` and the
trainer's ``SparseMask.step`` with timers inside this process; the library is not
modified.

    .venv/bin/python benchmarks/core_bench.py              # everything (~20 min on 2 cores)
    .venv/bin/python benchmarks/core_bench.py --skip-accuracy
    .venv/bin/python benchmarks/core_bench.py --quick      # smoke check, ~1 min

Progress goes to stderr; the table to stdout; JSON to benchmarks/results/core_bench.json
(``--quick`` writes to the temp directory unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rest.core.train as rt  # noqa: E402
from rest.core.data import BiasedData, Split, get_dataset_spec, load_dataset  # noqa: E402
from rest.core.models import build_model  # noqa: E402
from rest.settings import TrainSettings  # noqa: E402

DATASET = "colored_digits"
CONFLICT_PCT = 1.0
BATCH = 256
THREADS = 2
SEEDS = (41, 42, 43)
TARGET = 1.10
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return m, se


def subset(data: BiasedData, n_train: int, n_eval: int) -> BiasedData:
    """First samples of each split (for --quick)."""

    def cut(s: Split, n: int) -> Split:
        return Split(s.images[:n].clone(), s.y[:n].clone(), None if s.b is None else s.b[:n].clone())

    return BiasedData(
        data.name, data.conflict_pct, cut(data.train, n_train), cut(data.valid, n_eval), cut(data.test, n_eval)
    )


# ------------------------------------------------------------ timing hooks


class Timers:
    """Accumulated seconds per label, reset for every measured epoch."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def reset(self) -> None:
        self.t.clear()
        self.n.clear()

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.t[label] = self.t.get(label, 0.0) + time.perf_counter() - start
                self.n[label] = self.n.get(label, 0) + 1

        return timed


@contextmanager
def patched_train_module(timers: Timers):
    """Time fit_epoch and evaluate as Trainer.run_epoch calls them (module globals)."""
    saved = rt.fit_epoch, rt.evaluate
    rt.fit_epoch = timers.wrap("fit", rt.fit_epoch)
    rt.evaluate = timers.wrap("eval", rt.evaluate)
    try:
        yield
    finally:
        rt.fit_epoch, rt.evaluate = saved


def instrument_sparse(trainer: rt.Trainer, timers: Timers) -> None:
    sp = trainer.sparse
    sp.step = timers.wrap("sparse_step", sp.step)  # instance attributes shadow the methods
    sp.update_topology = timers.wrap("topology_update", sp.update_topology)


# ------------------------------------------------------------ the variants


class RawLoop:
    """forward + backward + SGD step on pre-made float batches: the floor for one epoch."""

    def __init__(self, data: BiasedData, settings: TrainSettings):
        spec = get_dataset_spec(DATASET)
        torch.manual_seed(settings.seed)
        self.model = build_model(spec.default_model, spec.num_classes, spec.image_size, settings.width)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=settings.lr, momentum=settings.momentum)
        n = len(data.train)
        order = torch.randperm(n)
        x_all = rt.to_input(data.train.images[order], spec)
        y_all = data.train.y[order]
        # the same batch sizes as fit_epoch: ceil(n / 256) batches, the last one partial
        self.batches = [
            (x_all[i : i + settings.batch_size].contiguous(), y_all[i : i + settings.batch_size].contiguous())
            for i in range(0, n, settings.batch_size)
        ]

    def run_epoch(self) -> float:
        self.model.train()
        start = time.perf_counter()
        for x, y in self.batches:
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def timed_trainer_epoch(trainer: rt.Trainer, timers: Timers) -> dict[str, float]:
    timers.reset()
    start = time.perf_counter()
    record = trainer.run_epoch()
    total = time.perf_counter() - start
    out = {
        "epoch": total,
        "fit": timers.t.get("fit", 0.0),
        "eval": timers.t.get("eval", 0.0),
        "sparse_step": timers.t.get("sparse_step", 0.0),
        "topology_update": timers.t.get("topology_update", 0.0),
        "topology_updates": timers.n.get("topology_update", 0),
    }
    out["other"] = total - out["fit"] - out["eval"]
    out["density"] = record["density"]
    return out


def bench_speed(data: BiasedData, repeats: int, warmup: int, epochs_setting: int) -> dict:
    base = TrainSettings(
        dataset=DATASET,
        conflict_pct=CONFLICT_PCT,
        batch_size=BATCH,
        device="cpu",
        reweight="oracle",
        lambda_upweight=30.0,
        epochs=epochs_setting,
        seed=42,
    )
    timers = Timers()
    dense = rt.Trainer(base.replace(density=1.0), data)
    sparse = rt.Trainer(base.replace(density=0.05, sparse="rigl", update_frequency=100), data)
    instrument_sparse(sparse, timers)
    raw = RawLoop(data, base)
    n_batches = len(raw.batches)
    say(f"speed: {n_batches} batches/epoch, {warmup} warm-up + {repeats} measured repeats of raw / dense / sparse")

    variants = {
        "raw": lambda: {"epoch": raw.run_epoch()},
        "dense": lambda: timed_trainer_epoch(dense, timers),
        "sparse": lambda: timed_trainer_epoch(sparse, timers),
    }
    names = list(variants)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    loads: list[float] = []  # 1-minute load average after each repeat: > 2 means other work shared the cores
    with patched_train_module(timers):
        for r in range(warmup + repeats):
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate the position of each variant
            row = {}
            for name in order:
                row[name] = variants[name]()
                if r >= warmup:
                    runs[name].append(row[name])
            load = os.getloadavg()[0]
            if r >= warmup:
                loads.append(load)
            tag = "warm-up" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
            say(f"speed {tag}: " + "  ".join(f"{k} {row[k]['epoch']:.2f}s" for k in names) + f"  (load {load:.2f})")

    med = {k: {field: median([run[field] for run in runs[k]]) for field in runs[k][0]} for k in names}
    raw_t, dense_t, sparse_t = med["raw"]["epoch"], med["dense"]["epoch"], med["sparse"]["epoch"]
    paired = {
        "loop_overhead": [d["epoch"] / w["epoch"] for d, w in zip(runs["dense"], runs["raw"])],
        "loop_overhead_fit_only": [d["fit"] / w["epoch"] for d, w in zip(runs["dense"], runs["raw"])],
        "sparse_overhead": [s["epoch"] / d["epoch"] for s, d in zip(runs["sparse"], runs["dense"])],
    }
    return {
        "batches_per_epoch": n_batches,
        "train_samples": len(data.train),
        "repeats": repeats,
        "warmup": warmup,
        "settings_epochs": epochs_setting,
        "median_seconds": med,
        "loop_overhead": dense_t / raw_t,
        "loop_overhead_fit_only": med["dense"]["fit"] / raw_t,
        "eval_share_of_dense_epoch": med["dense"]["eval"] / dense_t,
        "sparse_overhead": sparse_t / dense_t,
        "sparse_overhead_fit_only": med["sparse"]["fit"] / med["dense"]["fit"],
        "paired_ratio_medians": {k: median(v) for k, v in paired.items()},
        "per_repeat": runs,
        "load_after_each_repeat": loads,
        "sparse_realised_density": med["sparse"]["density"],
        "target": TARGET,
    }


# ------------------------------------------------------------ accuracy


def bench_accuracy(data: BiasedData, epochs: int, seeds: tuple[int, ...]) -> dict:
    methods = {"erm": {"reweight": "none"}, "oracle": {"reweight": "oracle", "lambda_upweight": 30.0}}
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in seeds:
        for method, extra in methods.items():
            s = TrainSettings(
                dataset=DATASET,
                conflict_pct=CONFLICT_PCT,
                batch_size=BATCH,
                device="cpu",
                density=1.0,
                epochs=epochs,
                seed=seed,
                **extra,
            )
            start = time.perf_counter()
            last = None
            for last in rt.train(s, data):
                say(
                    f"accuracy {method} seed {seed} epoch {last['epoch']}/{epochs}: "
                    f"test conflict {last['test_conflict_acc']:.3f} align {last['test_align_acc']:.3f} "
                    f"val worst {last['val_worst_group_acc']:.3f} ({last['epoch_seconds']:.1f}s)"
                )
            runs[method].append(
                {
                    "seed": seed,
                    "best_epoch": last["best_epoch"],
                    "best_test_conflict_acc": last["best_test_conflict_acc"],
                    "best_test_align_acc": last["best_test_align_acc"],
                    "best_test_unbiased_acc": last["best_test_unbiased_acc"],
                    "best_val_worst_group_acc": last["best_val_worst_group_acc"],
                    "final_test_conflict_acc": last["test_conflict_acc"],
                    "final_test_align_acc": last["test_align_acc"],
                    "seconds": time.perf_counter() - start,
                }
            )
    summary = {}
    for method, rs in runs.items():
        summary[method] = {}
        for key in ("best_test_conflict_acc", "best_test_align_acc", "best_test_unbiased_acc"):
            m, se = mean_se([r[key] for r in rs])
            summary[method][key] = {"mean": m, "se": se}
    gap = [r["best_test_align_acc"] - r["best_test_conflict_acc"] for r in runs["erm"]]
    gm, gse = mean_se(gap)
    return {
        "epochs": epochs,
        "seeds": list(seeds),
        "runs": runs,
        "summary": summary,
        "erm_align_minus_conflict": {"mean": gm, "se": gse, "per_seed": gap, "expected_at_least": 0.20},
        "seconds": sum(r["seconds"] for rs in runs.values() for r in rs),
    }


# ------------------------------------------------------------ report


def print_report(result: dict) -> None:
    speed = result.get("speed")
    if speed:
        med = speed["median_seconds"]
        print(
            f"\nSpeed ({speed['batches_per_epoch']} batches of {BATCH}, {THREADS} threads, "
            f"medians of {speed['repeats']} repeats)"
        )
        print(f"  {'variant':<34}{'epoch s':>9}{'fit s':>8}{'eval s':>8}{'other s':>9}{'mask s':>8}")
        print(f"  {'raw fwd+bwd+step (pre-made)':<34}{med['raw']['epoch']:>9.3f}")
        for key, label in (("dense", "Trainer.run_epoch density 1"), ("sparse", "Trainer.run_epoch density 0.05")):
            m = med[key]
            print(
                f"  {label:<34}{m['epoch']:>9.3f}{m['fit']:>8.3f}{m['eval']:>8.3f}"
                f"{m['other']:>9.3f}{m['sparse_step']:>8.3f}"
            )
        paired = speed["paired_ratio_medians"]
        rows = (
            ("loop overhead (full epoch / raw)", speed["loop_overhead"], paired["loop_overhead"], True),
            (
                "loop overhead (fit_epoch / raw)",
                speed["loop_overhead_fit_only"],
                paired["loop_overhead_fit_only"],
                False,
            ),
            ("sparse overhead (0.05 / dense)", speed["sparse_overhead"], paired["sparse_overhead"], True),
            ("sparse overhead, fit only", speed["sparse_overhead_fit_only"], math.nan, False),
        )
        print(f"\n  {'ratio':<36}{'medians':>9}{'paired':>9}  target")
        for label, ratio, pr, has_target in rows:
            verdict = ("ok" if ratio <= TARGET else "MISSED") if has_target else ""
            print(f"  {label:<36}{ratio:>9.3f}{pr:>9.3f}  {f'<= {TARGET:.2f} {verdict}' if has_target else ''}")
        print(
            f"  evaluation share of dense epoch: {100 * speed['eval_share_of_dense_epoch']:.1f} %;"
            f" sparse realised density {speed['sparse_realised_density']:.4f}"
        )
    acc = result.get("accuracy")
    if acc:
        print(
            f"\nAccuracy at {CONFLICT_PCT:g} % conflicting, density 1, {acc['epochs']} epochs, seeds {acc['seeds']}"
            " (selected epoch, test; mean +- s.e.)"
        )
        print(f"  {'method':<22}{'conflicting':>18}{'aligned':>18}{'unbiased':>18}")
        for method, label in (("erm", "ERM (reweight none)"), ("oracle", "oracle, lambda 30")):
            sm = acc["summary"][method]
            cells = [
                f"{100 * sm[k]['mean']:6.2f} +- {100 * sm[k]['se']:4.2f}"
                for k in ("best_test_conflict_acc", "best_test_align_acc", "best_test_unbiased_acc")
            ]
            print(f"  {label:<22}" + "".join(f"{c:>18}" for c in cells))
        gap = acc["erm_align_minus_conflict"]
        verdict = "biased as expected" if gap["mean"] >= gap["expected_at_least"] else "NOT biased enough"
        print(
            f"  ERM aligned - conflicting: {100 * gap['mean']:.1f} +- {100 * gap['se']:.1f} points "
            f"({verdict}, expect >= 20)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke check: subset of data, 1 repeat, 1 epoch, 1 seed")
    p.add_argument("--skip-accuracy", action="store_true", help="only the speed ratios (parts 1 and 2)")
    p.add_argument("--skip-speed", action="store_true", help="only the accuracy comparison (part 3)")
    p.add_argument("--repeats", type=int, default=None, help="measured repeats per speed variant (default 9)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per accuracy run (default 10)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/core_bench.json)")
    args = p.parse_args()

    torch.set_num_threads(THREADS)
    if args.quick:
        repeats, warmup, epochs, seeds = args.repeats or 1, 1, args.epochs or 1, SEEDS[:1]
        out = args.out or Path(tempfile.gettempdir()) / "core_bench.quick.json"
    else:
        repeats, warmup, epochs, seeds = args.repeats or 9, 1, args.epochs or 10, SEEDS
        out = args.out or ROOT / "benchmarks" / "results" / "core_bench.json"

    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, load {os.getloadavg()}")
    data = load_dataset(DATASET, CONFLICT_PCT)
    if args.quick:
        data = subset(data, 1024, 512)
    say(f"{DATASET} {CONFLICT_PCT:g}%: train {len(data.train)}, valid {len(data.valid)}, test {len(data.test)}")

    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_before": os.getloadavg(),
        },
        "dataset": {
            "name": DATASET,
            "conflict_pct": CONFLICT_PCT,
            "train": len(data.train),
            "valid": len(data.valid),
            "test": len(data.test),
        },
    }
    if not args.skip_speed:
        result["speed"] = bench_speed(data, repeats, warmup, epochs_setting=10)
    if not args.skip_accuracy:
        result["accuracy"] = bench_accuracy(data, epochs, seeds)
    result["environment"]["load_after"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - T0

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print_report(result)
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
