#!/usr/bin/env python3
"""Cluster-scale figures of issue 20: the smoke model's study at N trials, against bare Ray Tune.

Per size N (--sizes), search (--searches: grid, optuna) and storage (--storage: local, s3, the
latter on moto's S3-protocol server started here on 127.0.0.1), one study of the tiny smoke
trainable (search_spaces/smoke.yaml's training settings, 200 images, 2 epochs, `confirm: null`,
deterministic per-cell halving as in default.yaml, 2 trials at once) runs through the real
command line (`tune_search.py run ... --verbose 0`). Recorded per run:

1. driver overhead: the study's wall / the wall of bare Ray Tune running as many trials right
   after it (local Ray, 2 at once, a function trainable that sleeps each epoch as long as the
   matching trial of the study trained it, and reports as many epochs);
2. Ray's snapshot bytes per trial (the newest experiment_state-*.json of the search phase);
3. `tune_search.py export` and `rest.load_study(...).trials()` seconds, each in a fresh process,
   timed around the call; the growth exponent is the log-log least-squares slope over the sizes;
4. storage bytes per finished trial (every file under the study / trials), the largest trial's,
   and the target: the densest trial's compact sparse model plus its history;
5. the driver process's peak RSS (sampled; Ray's own processes are not counted).

`--export-only-s3 DIR` uploads a kept local study to the S3 server and times export and
load_study there, adding the figures to the existing JSON (so a 1,000-trial S3 export is
measured without training the study again).

Usage: .venv/bin/python benchmarks/scale_bench.py [--sizes 100,300,1000] [--searches grid,optuna]
       [--storage local,s3] [--keep DIR] [--quick] [--out benchmarks/results/scale_bench.json]
Writes scale_bench.{json,md,png} next to --out. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {
    "driver_overhead": 1.2,
    "snapshot_bytes_per_trial": 5000,
    "export_seconds_local": 20.0,
    "export_seconds_s3": 60.0,
    "growth_exponent": 1.0,
    "status_note": "status is measured by its own tests",
}
TARGET_SIZE = 1000  # the size the overhead and export targets are stated at
BUCKET = "scale-bench"
START = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the study definition


def grid_shape(n: int) -> tuple[int, int, int]:
    """(cells, densities, lambdas) multiplying to n: two conflict ratios when n is even, the rest near-square."""
    cells = 2 if n % 2 == 0 else 1
    m = n // cells
    d = max(k for k in range(1, int(math.isqrt(m)) + 1) if m % k == 0)
    return cells, d, m // d


def log_grid(low: float, high: float, k: int) -> list[float]:
    return [float(f"{low * (high / low) ** (i / max(k - 1, 1)):.4g}") for i in range(k)]


def study_space(n: int, search: str, name: str) -> dict:
    """smoke.yaml's trainable at n trials: grid over conflict x density x lambda, or TPE with n in all."""
    smoke = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    default = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    train = dict(smoke["train"], subsample=200)
    scheduler = dict(default["scheduler"], grace_period=min(default["scheduler"]["grace_period"], train["epochs"] - 1))
    cells, d, lam = grid_shape(n)
    conflict = {"grid": [1, 5][:cells]}
    if search == "grid":
        space = {
            "conflict_pct": conflict,
            "density": {"grid": log_grid(0.02, 1.0, d)},
            "lambda_upweight": {"grid": log_grid(1, 100, lam)},
        }
        extra = {}
    else:  # batches of 4 per cell, halved together as default_tpe.yaml does it
        space = {
            "conflict_pct": conflict,
            "density": {"loguniform": [0.02, 1.0]},
            "lambda_upweight": {"loguniform": [1, 100]},
        }
        extra = {
            "num_samples": n // cells,
            "search_alg": {"type": search, "seed": 0, "max_concurrent": 4, "n_initial": 4},
        }
    return {
        "name": name,
        "description": f"scale_bench: {n} trials, {search}",
        "dataset": smoke["dataset"],
        "train": train,
        "search": space,
        **extra,
        "scheduler": scheduler,
        "compare_within": ["dataset", "conflict_pct"],
        "confirm": None,
        "resources": {"cpus_per_trial": 1},
    }


# ---------------------------------------------------------------- processes: RSS, S3 server


def rss_bytes(pid: int) -> int:
    """Resident bytes of one process (psutil if installed, else /proc's high-water mark)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def watched(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """Run `cmd`; its wall, exit status, stderr tail and the peak RSS sampled every 0.2 s; progress every 30 s."""
    start, peak, last = time.perf_counter(), 0, time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env)
        while proc.poll() is None:
            try:
                peak = max(peak, rss_bytes(proc.pid))
            except (OSError, StopIteration, Exception):  # the process ended between poll and read
                pass
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                say(f"{what}: {last - start:.0f} s elapsed")
            time.sleep(0.2)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
    return {
        "wall_seconds": time.perf_counter() - start,
        "returncode": proc.returncode,
        "stderr_tail": tail,
        "peak_rss_bytes": peak,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server():
    """moto's standalone S3 server on 127.0.0.1 with one bucket; its address and credentials in os.environ."""
    import boto3

    port = free_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}/studies"
    finally:
        server.terminate()
        server.wait(timeout=10)


# ---------------------------------------------------------------- fresh-process timings (hidden modes)


def _timed(kind: str, name: str, storage: str, result: str) -> None:
    """Inside a fresh process: time export or load_study(...).trials() around the call alone."""
    import rest
    from rest.cli.main import main

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if kind == "export":
            rc = main(["-q", "export", name, "--storage", storage, "--out", str(Path(tmp) / "out")])
            rows = None
        else:
            rc, rows = 0, len(rest.load_study(name, storage=storage).trials())
        seconds = time.perf_counter() - start
    Path(result).write_text(json.dumps({"seconds": seconds, "returncode": rc, "rows": rows}))


def timed(kind: str, name: str, storage: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "t.json"
        run = watched([sys.executable, __file__, "_timed", kind, name, storage, str(out)], f"{kind} {name}")
        if not out.exists():
            return {"seconds": math.nan, "error": run["stderr_tail"][-500:]}
        return {**json.loads(out.read_text()), "process_seconds": run["wall_seconds"]}


def _bare(spec_file: str, result: str) -> None:
    """Inside a fresh process: bare Ray Tune, 2 trials at once, each sleeping its given epoch times."""
    import ray
    from ray import tune

    epochs = json.loads(Path(spec_file).read_text())

    def sleeper(config, times):
        for epoch, seconds in enumerate(times[config["i"]], 1):
            time.sleep(seconds)
            tune.report({"epoch": epoch})

    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)  # as the study's driver starts Ray
        tuner = tune.Tuner(
            tune.with_parameters(sleeper, times=epochs),
            param_space={"i": tune.grid_search(list(range(len(epochs))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),  # as the study does
            run_config=tune.RunConfig(storage_path=tmp, name="bare", verbose=0),
        )
        start = time.perf_counter()
        tuner.fit()
        fit = time.perf_counter() - start
        ray.shutdown()
    Path(result).write_text(json.dumps({"fit_seconds": fit}))


def bare_tune(epochs: list[list[float]], attempts: int = 2) -> dict:
    """Bare Tune's wall and fit seconds; tried again once if its Ray fails to start (a shared machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "epochs.json", Path(tmp) / "bare.json"
        spec.write_text(json.dumps(epochs))
        for attempt in range(1, attempts + 1):
            run = watched(
                [sys.executable, __file__, "_bare", str(spec), str(out)], f"bare Ray Tune, {len(epochs)} trials"
            )
            if out.exists():
                return {
                    "wall_seconds": run["wall_seconds"],
                    "fit_seconds": json.loads(out.read_text())["fit_seconds"],
                    "attempts": attempt,
                }
            say(f"bare Ray Tune failed (exit {run['returncode']}): {run['stderr_tail'][-300:]}")
        return {"wall_seconds": math.nan, "fit_seconds": math.nan, "attempts": attempts, "error": run["stderr_tail"]}


# ---------------------------------------------------------------- what the study left on storage


def files(storage: str, name: str) -> list[tuple[str, int, float]]:
    """(path relative to the study, bytes, mtime) of every file under the study."""
    import pyarrow.fs as pafs

    from rest.storage import open_location

    study = open_location(storage).join(name)
    infos = study.fs.get_file_info(pafs.FileSelector(study.path, recursive=True))
    return [
        (i.path[len(study.path) :].lstrip("/"), i.size, i.mtime.timestamp() if i.mtime else 0.0)
        for i in infos
        if i.type == pafs.FileType.File
    ]


def storage_figures(listing: list[tuple[str, int, float]], finished: int) -> dict:
    """Bytes per finished trial, the largest trial, the search snapshot, and where the bytes are."""
    per_trial: dict[str, int] = {}
    kinds = {"checkpoints": 0, "history": 0, "ray_trial_files": 0, "other": 0}
    for path, size, _ in listing:
        parts = path.split("/")
        trial = next((p for p in parts if p.startswith("trial_")), None)
        if trial:
            per_trial[trial] = per_trial.get(trial, 0) + size
        kind = (
            "checkpoints"
            if any(p.startswith("checkpoint_") for p in parts)
            else "history"
            if parts[-1] == "history.json"
            else "ray_trial_files"
            if trial
            else "other"
        )
        kinds[kind] += size
    states = sorted(
        (mtime, path, size)
        for path, size, mtime in listing
        if path.startswith("search/") and path.split("/")[-1].startswith("experiment_state-")
    )
    total = sum(size for _, size, _ in listing)
    return {
        "study_bytes": total,
        "finished_trials": finished,
        "bytes_per_finished_trial": total / max(finished, 1),
        "largest_trial_bytes": max(per_trial.values(), default=0),
        "bytes_by_kind": kinds,
        "snapshot_bytes": states[-1][2] if states else 0,
        "snapshot_bytes_per_trial": (states[-1][2] if states else 0) / max(finished, 1),
    }


def compact_target(storage: str, name: str) -> dict:
    """The issue's storage bound for a finished trial: the densest trial's compact sparse model plus its history."""
    import io

    import torch

    import rest
    from rest.api import selected_epoch_state
    from rest.core.model_format import sparse_model_state

    study = rest.load_study(name, storage=storage)
    trials = [t for t in study.phases.get("search", []) if t.history]
    densest = max(trials, key=lambda t: t.config.get("density", 1.0))
    buffer = io.BytesIO()
    torch.save(sparse_model_state(selected_epoch_state(densest)), buffer)
    history = max(len(json.dumps(t.history, default=str)) for t in trials)
    return {
        "compact_model_bytes": buffer.tell(),
        "history_bytes": history,
        "target_bytes_per_trial": buffer.tell() + history,
        "density": densest.config.get("density"),
        "finished": sum(t.status in ("TERMINATED",) for t in study.phases.get("search", [])),
        "epochs": [
            [
                float(r.get("epoch_seconds") or 0.0)
                for r in sorted({r["epoch"]: r for r in t.history}.values(), key=lambda r: r["epoch"])
            ]
            for t in study.phases.get("search", [])
        ],
    }


# ---------------------------------------------------------------- one run


def run_one(n: int, search: str, storage: str, store: str, work: Path) -> dict:
    name = f"scale_{search}_{n}"
    space = work / f"{name}.yaml"
    space.write_text(yaml.safe_dump(study_space(n, search, name), sort_keys=False))
    what = f"run {search}/{store}/{n} trials"
    say(f"{what} ...")
    load = os.getloadavg()[0]
    study = watched(
        [
            sys.executable,
            str(ROOT / "tune_search.py"),
            "run",
            str(space),
            "--storage",
            storage,
            "--max-concurrent",
            "2",
            "--verbose",
            "0",
        ],
        what,
    )
    entry = {
        "trials": n,
        "search": search,
        "storage": store,
        "name": name,
        "load_1min_before": load,
        "driver_wall_seconds": study["wall_seconds"],
        "driver_peak_rss_bytes": study["peak_rss_bytes"],
    }
    if study["returncode"] != 0:
        say(f"{what} failed (exit {study['returncode']})")
        return {**entry, "error": study["stderr_tail"]}
    target = compact_target(storage, name)
    epochs = target.pop("epochs")
    manifest = json.loads(open_text(storage, f"{name}/manifest.json"))
    say(f"{what}: done in {study['wall_seconds']:.0f} s; bare Ray Tune with the same epoch times ...")
    bare = bare_tune(epochs)
    say(f"{what}: export and load_study ...")
    figures = storage_figures(files(storage, name), target["finished"] or n)
    entry.update(
        {
            "search_phase_wall_seconds": manifest["phases"]["search"]["wall_seconds"],
            "trial_epochs": sum(len(e) for e in epochs),
            "training_seconds": sum(map(sum, epochs)),
            "bare_tune_wall_seconds": bare["wall_seconds"],
            "bare_tune_fit_seconds": bare["fit_seconds"],
            "bare_tune": bare,
            "driver_overhead": study["wall_seconds"] / bare["wall_seconds"],
            "driver_overhead_fit_only": manifest["phases"]["search"]["wall_seconds"] / bare["fit_seconds"],
            **figures,
            "storage_target": target,
            "export": timed("export", name, storage),
            "load_study": timed("load", name, storage),
            "load_1min_after": os.getloadavg()[0],
        }
    )
    entry["export_seconds"], entry["load_study_seconds"] = entry["export"]["seconds"], entry["load_study"]["seconds"]
    say(
        f"{what}: overhead {entry['driver_overhead']:.2f}x, export {entry['export_seconds']:.1f} s, "
        f"load_study {entry['load_study_seconds']:.1f} s"
    )
    return entry


def open_text(storage: str, path: str) -> str:
    from rest.storage import open_location

    return open_location(storage).join(path).read_text()


# ---------------------------------------------------------------- fits, verdicts, report


def growth_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) on log(trials); None below two sizes."""
    import numpy as np

    points = [(n, s) for n, s in points if s and s > 0 and not math.isnan(s)]
    if len({n for n, _ in points}) < 2:
        return None
    x, y = np.log([n for n, _ in points]), np.log([s for _, s in points])
    return float(np.polyfit(x, y, 1)[0])


def verdict(value: float | None, target: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    return "met" if value <= target else f"missed by {value - target:.4g} ({value / target:.2f}x the target)"


def summarise(runs: list[dict]) -> dict:
    """Per (search, storage): growth exponents over the sizes run, and every figure against its target."""
    series: dict[str, dict] = {}
    for r in (r for r in runs if "error" not in r):
        key = f"{r['search']}/{r['storage']}"
        s = series.setdefault(key, {"sizes": [], "export": [], "load_study": []})
        s["sizes"].append(r["trials"])
        s["export"].append((r["trials"], r["export_seconds"]))
        s["load_study"].append((r["trials"], r["load_study_seconds"]))
    for s in series.values():
        s["export_growth_exponent"] = growth_exponent(s.pop("export"))
        s["load_study_growth_exponent"] = growth_exponent(s.pop("load_study"))
        s["export_growth_verdict"] = verdict(s["export_growth_exponent"], TARGETS["growth_exponent"])
        s["load_study_growth_verdict"] = verdict(s["load_study_growth_exponent"], TARGETS["growth_exponent"])
    for r in (r for r in runs if "error" not in r):
        export_target = TARGETS["export_seconds_s3" if r["storage"] == "s3" else "export_seconds_local"]
        target_bytes = r["storage_target"]["target_bytes_per_trial"]
        r["verdicts"] = {
            "driver_overhead": verdict(r["driver_overhead"], TARGETS["driver_overhead"]),
            "snapshot_bytes_per_trial": verdict(r["snapshot_bytes_per_trial"], TARGETS["snapshot_bytes_per_trial"]),
            "export_seconds": verdict(r["export_seconds"], export_target),
            "bytes_per_finished_trial": verdict(r["bytes_per_finished_trial"], target_bytes),
            "largest_trial_bytes": verdict(r["largest_trial_bytes"], target_bytes),
            "note": ""
            if r["trials"] >= TARGET_SIZE
            else f"overhead and export targets are stated at {TARGET_SIZE} trials",
        }
    return series


def mb(value: float) -> str:
    return f"{value / 1e6:.2f} MB"


def report(result: dict) -> str:
    lines = [
        "# Scale benchmark: the smoke model's study at N trials",
        "",
        f"{result['date']}, `benchmarks/scale_bench.py {' '.join(result['argv'])}`; smoke.yaml's trainable "
        f"(CNN, 200 images, 2 epochs, `confirm: null`), deterministic per-cell halving, 2 trials at once. "
        f"{os.cpu_count()} cores; 1-minute load per run in the JSON.",
        "",
        "| search/storage | trials | driver wall (s) | bare Tune (s) | overhead (<= 1.2x) | snapshot / trial (<= 5 KB) "
        "| export (s) | load_study (s) | storage / trial | largest trial | target / trial | driver peak RSS |",
        "|---|---:|---:|---:|---|---|---|---:|---|---:|---:|---:|",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['search']}/{r['storage']} | {r['trials']} | failed: see the JSON |" + " |" * 9)
            continue
        v = r["verdicts"]
        lines.append(
            f"| {r['search']}/{r['storage']} | {r['trials']} | {r['driver_wall_seconds']:.0f} | "
            f"{r['bare_tune_wall_seconds']:.0f} | {r['driver_overhead']:.2f}x: {v['driver_overhead']} | "
            f"{r['snapshot_bytes_per_trial'] / 1e3:.1f} KB: {v['snapshot_bytes_per_trial']} | "
            f"{r['export_seconds']:.1f}: {v['export_seconds']} | {r['load_study_seconds']:.1f} | "
            f"{mb(r['bytes_per_finished_trial'])}: {v['bytes_per_finished_trial']} | {mb(r['largest_trial_bytes'])} | "
            f"{mb(r['storage_target']['target_bytes_per_trial'])} | {mb(r['driver_peak_rss_bytes'])} |"
        )
    lines += [
        "",
        "Growth exponents (log-log least squares over the sizes run; target <= 1, linear):",
        "",
        "| search/storage | sizes | export | load_study |",
        "|---|---|---|---|",
    ]
    for key, s in result["series"].items():
        e, l_ = s["export_growth_exponent"], s["load_study_growth_exponent"]
        lines.append(
            f"| {key} | {', '.join(map(str, s['sizes']))} | {'-' if e is None else f'{e:.2f}'}: "
            f"{s['export_growth_verdict']} | {'-' if l_ is None else f'{l_:.2f}'}: {s['load_study_growth_verdict']} |"
        )
    for r in result.get("export_only_s3", []):
        lines += [
            "",
            f"Export-only on S3 of the kept study `{r['study']}` ({r['trials']} trials): export "
            f"{r['export_seconds']:.1f} s ({verdict(r['export_seconds'], TARGETS['export_seconds_s3'])} "
            f"against <= {TARGETS['export_seconds_s3']:.0f} s), load_study {r['load_study_seconds']:.1f} s.",
        ]
    lines += [
        "",
        "Overhead and export targets are stated at 1,000 trials; at smaller sizes the verdicts only show the "
        "trend. Storage target: the densest trial's compact sparse model plus the longest history.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (times, snap, over) = plt.subplots(1, 3, figsize=(15, 4.5))
    ok = [r for r in result["runs"] if "error" not in r]
    for key in result["series"]:
        rows = sorted((r for r in ok if f"{r['search']}/{r['storage']}" == key), key=lambda r: r["trials"])
        sizes = [r["trials"] for r in rows]
        times.plot(sizes, [r["export_seconds"] for r in rows], "o-", label=f"export {key}")
        times.plot(sizes, [r["load_study_seconds"] for r in rows], "s--", label=f"load_study {key}")
        snap.plot(sizes, [r["snapshot_bytes_per_trial"] / 1e3 for r in rows], "o-", label=key)
        over.plot(sizes, [r["driver_overhead"] for r in rows], "o-", label=key)
    for r in result.get("export_only_s3", []):
        times.plot([r["trials"]], [r["export_seconds"]], "k^", label="export s3 (uploaded study)")
    times.plot([TARGET_SIZE], [TARGETS["export_seconds_local"]], "g*", ms=12, label="target local (1,000 trials)")
    times.plot([TARGET_SIZE], [TARGETS["export_seconds_s3"]], "r*", ms=12, label="target S3 (1,000 trials)")
    times.set(xscale="log", yscale="log", xlabel="trials", ylabel="seconds", title="export / load_study")
    snap.axhline(TARGETS["snapshot_bytes_per_trial"] / 1e3, color="r", ls=":", label="target 5 KB")
    snap.set(xscale="log", xlabel="trials", ylabel="KB per trial", title="Ray snapshot per trial")
    over.axhline(TARGETS["driver_overhead"], color="r", ls=":", label="target 1.2x")
    over.set(xscale="log", xlabel="trials", ylabel="study wall / bare Tune wall", title="driver overhead")
    for ax in (times, snap, over):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(report(result))
    plot(result, out.with_suffix(".png"))


# ---------------------------------------------------------------- main


def export_only_s3(local_study: Path, out: Path) -> dict:
    """Upload a kept local study to the S3 server; time export and load_study there."""
    import pyarrow.fs as pafs

    with s3_server() as storage:
        say(f"uploading {local_study} to {storage} ...")
        fs, path = pafs.FileSystem.from_uri(storage)
        pafs.copy_files(str(local_study.resolve()), f"{path}/{local_study.name}", destination_filesystem=fs)
        export, load = timed("export", local_study.name, storage), timed("load", local_study.name, storage)
    return {
        "study": local_study.name,
        "trials": load.get("rows"),
        "export_seconds": export["seconds"],
        "load_study_seconds": load["seconds"],
        "export": export,
        "load_study": load,
        "date": time.strftime("%Y-%m-%d"),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000", help="comma-separated trial counts (default 100,300,1000)")
    parser.add_argument("--searches", default="grid,optuna", help="comma-separated: grid, optuna")
    parser.add_argument("--storage", default="local,s3", help="comma-separated: local, s3")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/scale_bench.json)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the local studies in this directory")
    parser.add_argument("--quick", action="store_true", help="CI smoke check: sizes 4 and 8, grid, local; temp --out")
    parser.add_argument(
        "--export-only-s3",
        type=Path,
        default=None,
        metavar="STUDY_DIR",
        help="upload this kept local study to the S3 server, time export and load_study there, "
        "and add the figures to --out's JSON",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.searches, args.storage = "4,8", "grid", "local"
        args.out = args.out or Path(tempfile.mkdtemp(prefix="scale_bench-")) / "scale_bench.json"
    args.out = args.out or ROOT / "benchmarks" / "results" / "scale_bench.json"
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.searches, args.storage = args.searches.split(","), args.storage.split(",")
    for values, allowed, flag in (
        (args.searches, ("grid", "optuna"), "--searches"),
        (args.storage, ("local", "s3"), "--storage"),
    ):
        if set(values) - set(allowed):
            parser.error(f"{flag} takes {', '.join(allowed)}; got {','.join(values)}")
    return args


def _no_machine_path(arg: str) -> str:
    """An absolute path as relative to the project, so that the committed results name no machine's paths."""
    return os.path.relpath(arg, ROOT) if os.path.isabs(arg) else arg


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.export_only_s3:
        if not (args.export_only_s3 / "manifest.json").is_file():
            sys.stderr.write(
                f"error: {args.export_only_s3} is not a study directory (no manifest.json); "
                f"pass a study kept with --keep, e.g. DIR/local/scale_grid_1000\n"
            )
            return 2
        result = json.loads(args.out.read_text()) if args.out.exists() else {"runs": [], "series": {}}
        entry = export_only_s3(args.export_only_s3, args.out)
        result["export_only_s3"] = [e for e in result.get("export_only_s3", []) if e["study"] != entry["study"]] + [
            entry
        ]
        write(result, args.out)
        say(f"export on S3: {entry['export_seconds']:.1f} s; wrote {args.out}")
        return 0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "local" in args.storage:
            runs += [
                run_one(n, s, str((work / "local").resolve()), "local", work) for n in args.sizes for s in args.searches
            ]
        if "s3" in args.storage:
            with s3_server() as storage:
                runs += [run_one(n, s, storage, "s3", work) for n in args.sizes for s in args.searches]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "argv": [_no_machine_path(a) for a in (sys.argv[1:] if argv is None else argv)],
        "targets": TARGETS,
        "runs": runs,
        "series": summarise(runs),
        "total_seconds": time.perf_counter() - START,
    }
    write(result, args.out)
    say(f"wrote {args.out} (and .md, .png)")
    print(report(result))
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_timed":
        _timed(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "_bare":
        _bare(*sys.argv[2:4])
    else:
        sys.exit(main())
