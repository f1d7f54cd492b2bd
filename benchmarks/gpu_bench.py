"""Trials packed on one GPU: throughput and memory per trial at 1, 2, 4 and 8 trials per device.

What Ray does with ``--gpus-per-trial 0.5 / 0.25 / 0.125``: 2, 4 or 8 trial processes share one
GPU. Here k worker processes (k = 1, 2, 4, 8) each run a real ``rest.core.train.Trainer`` at the
same time on the same device, start together (a barrier), and train the studies' sparse
setting (RigL at density 0.05, batch 256) on synthetic data of the
studies' size (batches in sequence: the sampling scheme does not change the cost; the masks are
re-applied after every step, and no topology update falls in the timed window, as with the
studies' update every 1,000 steps):

- ``cnn-cmnist``: REST's CNN on Colored-MNIST-size data (70,000 images, 28 px);
- ``resnet18-32px``: ResNet-18 (width 64, REST's ImageNet stem) on CIFAR-10-C-size data (60,000 images, 32 px);

each in fp32 and bf16. Per row: images/s of every trial and their sum, the peak device
memory of a trial (``torch.cuda.max_memory_allocated``: tensors only, without the CUDA
context of a few hundred MB per process), the dataset's share of it (the whole dataset sits
on the GPU), and ``rest.study.memory.trial_device_bytes``'s prediction for the same trial.

Without CUDA the same code runs on the CPU at tiny sizes (``cpu-smoke``: 256 / 128 images,
ResNet width 4, batch 16, 1 and 2 trials, one thread each) so that the script cannot rot; its
figures are CPU smoke, not GPU figures, and the outputs say so. Peak memory there is the
process's peak host RSS (torch's libraries included), not device memory.

    .venv/bin/python benchmarks/gpu_bench.py                 # cuda if present, else cpu-smoke
    .venv/bin/python benchmarks/gpu_bench.py --mode cpu-smoke --out /tmp/gpu_bench

Writes gpu_bench.json and gpu_bench.md to --out (default benchmarks/results); progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# mode -> sizes. Each workload: (study dataset, images, model width).
MODES = {
    "cuda": {
        "packs": (1, 2, 4, 8),
        "batch": 256,
        "warmup": 10,
        "steps": 50,
        "threads": None,
        "workloads": {"cnn-cmnist": ("cmnist", 70_000, 64), "resnet18-32px": ("cifar10c", 60_000, 64)},
    },
    "cpu-smoke": {
        "packs": (1, 2),
        "batch": 16,
        "warmup": 1,
        "steps": 3,
        "threads": 1,
        "workloads": {"cnn-cmnist": ("cmnist", 256, 64), "resnet18-32px": ("cifar10c", 128, 4)},
    },
}
PRECISIONS = ("fp32", "bf16")
SMOKE_NOTE = (
    "CPU smoke run (no CUDA on this machine): tiny sizes, CPU processes sharing the cores. "
    "These are not GPU figures; no GPU figure has been measured yet."
)


def settings_for(mode: str, workload: str, precision: str):
    from rest.settings import TrainSettings

    dataset, _, width = MODES[mode]["workloads"][workload]
    return TrainSettings(
        dataset=dataset,
        model="cnn" if workload.startswith("cnn") else "resnet18",
        width=width,
        stem="imagenet",
        density=0.05,
        sparse="rigl",
        reweight="oracle",
        update_frequency=1000,
        batch_size=MODES[mode]["batch"],
        precision=precision,
        schedule="none",
        device="cuda" if mode == "cuda" else "cpu",
        seed=0,
    )


def synthetic_data(dataset: str, n: int, seed: int):
    """Random uint8 images of the dataset's size, 1 % conflicting; tiny valid and test splits."""
    import numpy as np

    from rest.core.data import get_dataset_spec
    from rest.core.data.base import from_arrays

    spec = get_dataset_spec(dataset)
    rng = np.random.default_rng(seed)

    def split(count: int):
        y = rng.integers(0, spec.num_classes, count)
        b = np.where(rng.random(count) < 0.01, (y + 1) % spec.num_classes, y)
        return rng.integers(0, 256, (count, 3, spec.image_size, spec.image_size), dtype=np.uint8), y, b

    return from_arrays(dataset, 1.0, {"train": split(n), "valid": split(16), "test": split(16)})


def _peak_bytes(device) -> int:
    import resource

    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _train_steps(trainer, steps: int, offset: int) -> None:
    import torch

    from rest.core.train import fit_epoch

    s = trainer.settings
    order = (torch.arange(steps * s.batch_size) + offset) % len(trainer.data.train)
    fit_epoch(
        trainer.model,
        trainer.optimizer,
        trainer.data.train,
        order,
        trainer.spec,
        s.batch_size,
        trainer.sparse,
        trainer.aug_gen,
        amp=trainer.amp,
    )
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)


def run_job(mode: str, workload: str, precision: str, rank: int, barrier) -> dict:
    """One trial of a pack: build, warm up, then train `steps` batches timed, in step with the others."""
    import torch

    from rest.core.train import Trainer, data_bytes

    sizes = MODES[mode]
    settings = settings_for(mode, workload, precision)
    dataset, n, _ = sizes["workloads"][workload]
    if mode == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(settings, synthetic_data(dataset, n, seed=rank))
    _train_steps(trainer, sizes["warmup"], 0)
    barrier.wait()
    start = time.perf_counter()
    _train_steps(trainer, sizes["steps"], sizes["warmup"] * settings.batch_size)
    seconds = time.perf_counter() - start
    barrier.wait()  # nobody starts the next job while another still trains this one
    return {
        "images_per_s": sizes["steps"] * settings.batch_size / seconds,
        "seconds": seconds,
        "peak_bytes": _peak_bytes(trainer.device),
        "placement": trainer.placement,
        "data_bytes": data_bytes(trainer.data) if trainer.placement == "device" else 0,
    }


def jobs(mode: str) -> list[tuple[int, str, str]]:
    return [(k, w, p) for w in MODES[mode]["workloads"] for p in PRECISIONS for k in MODES[mode]["packs"]]


def worker(mode: str, rank: int, barriers: dict, results) -> None:
    import torch

    if MODES[mode]["threads"]:
        torch.set_num_threads(MODES[mode]["threads"])
    for k, workload, precision in jobs(mode):
        if rank < k:
            results.put((k, workload, precision, rank, run_job(mode, workload, precision, rank, barriers[k])))


def run(mode: str) -> list[dict]:
    """Every (workload, precision, pack) row, trials of a pack running at once in separate processes."""
    ctx = mp.get_context("spawn")  # each trial its own process (and CUDA context), as under Ray
    packs = MODES[mode]["packs"]
    barriers = {k: ctx.Barrier(k) for k in packs}
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(mode, rank, barriers, results)) for rank in range(max(packs))]
    for p in procs:
        p.start()
    # rest.study.memory's prediction for each row, computed while the workers start
    predicted = {(w, p): predicted_bytes(mode, w, p) for _, w, p in jobs(mode)}
    expected = sum(k for k, _, _ in jobs(mode))
    raw, start = [], time.perf_counter()
    while len(raw) < expected:
        raw.append(results.get(timeout=1800))
        k, workload, precision, rank, result = raw[-1]
        print(
            f"  {time.perf_counter() - start:6.1f} s  {workload} {precision} pack {k} trial {rank}: "
            f"{result['images_per_s']:.0f} img/s",
            file=sys.stderr,
            flush=True,
        )
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a benchmark worker exited with status {p.exitcode}")
    return [
        _row(k, w, p, [r for kk, ww, pp, _, r in raw if (kk, ww, pp) == (k, w, p)], predicted[w, p])
        for k, w, p in jobs(mode)
    ]


def predicted_bytes(mode: str, workload: str, precision: str) -> int:
    """rest.study.memory's bytes for the trial on a GPU (no first-epoch stage: the benchmark has none)."""
    from rest.core.data import get_dataset_spec
    from rest.study.memory import trial_device_bytes

    dataset, n, _ = MODES[mode]["workloads"][workload]
    size = get_dataset_spec(dataset).image_size
    parts = trial_device_bytes(settings_for(mode, workload, precision), (n + 32, 3, size, size), device="cuda")
    return parts["total"] - parts["stage"]


def _row(k: int, workload: str, precision: str, trials: list[dict], predicted: int) -> dict:
    speeds = [t["images_per_s"] for t in trials]
    peak = max(t["peak_bytes"] for t in trials)
    data = max(t["data_bytes"] for t in trials)
    return {
        "workload": workload,
        "precision": precision,
        "trials": k,
        "gpus_per_trial": 1 / k,
        "images_per_s_per_trial": sum(speeds) / k,
        "images_per_s_slowest_trial": min(speeds),
        "images_per_s_total": sum(speeds),
        "peak_bytes_per_trial": peak,
        "data_bytes": data,
        "data_share_of_peak": data / peak if peak else 0.0,
        "predicted_bytes": predicted,
        "placement": trials[0]["placement"],
    }


def markdown(report: dict) -> str:
    mib = 2**20
    memory = (
        "peak device memory / trial (MiB)"
        if report["mode"] == "cuda"
        else "peak host RSS / trial (MiB, not device memory)"
    )
    lines = [f"# GPU packing benchmark ({report['mode']})", ""]
    if report["mode"] != "cuda":
        lines += [f"**{SMOKE_NOTE}**", ""]
    lines += [
        f"Device: {report['device']}; torch {report['torch']}; {report['date']}. "
        f"Batch {report['batch']}, {report['steps']} timed steps per trial after {report['warmup']} warm-up steps; "
        "RigL at density 0.05. Data share: the dataset's bytes over the trial's peak.",
        "",
        f"| workload | precision | trials | gpus_per_trial | img/s per trial | img/s total | {memory} "
        "| data (MiB) | data share | predicted by rest.study.memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['workload']} | {r['precision']} | {r['trials']} | {r['gpus_per_trial']:g} "
            f"| {r['images_per_s_per_trial']:.0f} | {r['images_per_s_total']:.0f} "
            f"| {r['peak_bytes_per_trial'] / mib:.0f} | {r['data_bytes'] / mib:.1f} "
            f"| {100 * r['data_share_of_peak']:.0f} % | {r['predicted_bytes'] / mib:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mode", choices=("auto", *MODES), default="auto", help="auto: cuda if a GPU is present, else cpu-smoke"
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="directory for gpu_bench.{json,md}"
    )
    args = ap.parse_args(argv)
    import torch

    mode = ("cuda" if torch.cuda.is_available() else "cpu-smoke") if args.mode == "auto" else args.mode
    if mode == "cuda" and not torch.cuda.is_available():
        print("error: --mode cuda needs a CUDA GPU; use --mode cpu-smoke", file=sys.stderr)
        return 2
    print(f"gpu_bench: mode {mode}" + ("" if mode == "cuda" else f" - {SMOKE_NOTE}"), file=sys.stderr, flush=True)
    sizes = MODES[mode]
    report = {
        "mode": mode,
        "note": "" if mode == "cuda" else SMOKE_NOTE,
        "device": torch.cuda.get_device_name(0)
        if mode == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "batch": sizes["batch"],
        "steps": sizes["steps"],
        "warmup": sizes["warmup"],
        "rows": run(mode),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
