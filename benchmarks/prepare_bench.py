#!/usr/bin/env python3
"""Time `prepare-data cmnist` on a full-size fake MNIST (60,000 training images).

The issue's budget: a 60,000-image MNIST build in under 2 minutes on 2 cores. No
download: the raw IDX files are generated in a temporary directory from the embedded
dataset's pen-stroke digits (a few thousand drawings, each reused with a random shift
and speckle so that no two images are identical and PNG sizes stay realistic). The
build runs as a real command (a subprocess, imports included) pinned to 2 cores, then
`prepare-data check` runs on its output.

    .venv/bin/python benchmarks/prepare_bench.py [--n-train 60000] [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rest.core.data.digits import render_digit  # noqa: E402

RUN_PREPARE = "import sys; from rest.cli.main import main; sys.exit(main(sys.argv[1:]))"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fake_digits(n: int, rng: np.random.Generator, distinct: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """n grey 28 x 28 digits and their labels, from `distinct` drawings varied per image."""
    base_y = np.arange(distinct) % 10
    base = np.stack([render_digit(int(d), rng) for d in base_y])
    pick = rng.integers(0, distinct, n)
    images = base[pick].copy()
    for k, (dy, dx) in enumerate(rng.integers(-2, 3, (n, 2))):
        images[k] = np.roll(images[k], (dy, dx), axis=(0, 1))
    speckle = rng.random(images.shape) < 0.01
    images[speckle] = rng.integers(0, 256, int(speckle.sum()), dtype=np.uint8)
    return images, base_y[pick].astype(np.uint8)


def make_raw(raw: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    folder = raw / "MNIST" / "raw"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = fake_digits(n, rng)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)


def run(args: list[str], cores: list[int]) -> tuple[float, subprocess.CompletedProcess]:
    def pin() -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)

    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", RUN_PREPARE, *args], capture_output=True, text=True, cwd=ROOT, preexec_fn=pin
    )
    return time.perf_counter() - start, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=60_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--cores", type=int, default=2, help="cores the build may use (pinned), also its --workers")
    p.add_argument("--ratios", default="0.5,1,2,5")
    p.add_argument("--keep", type=Path, default=None, help="keep the built tree here instead of deleting it")
    args = p.parse_args()

    available = (
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    )
    cores = available[: args.cores]
    work = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    try:
        t = time.perf_counter()
        make_raw(work / "raw", args.n_train, args.n_test)
        print(
            f"fake raw MNIST ({args.n_train} + {args.n_test} images) generated in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
        out = args.keep or work / "cmnist"
        build_s, res = run(
            [
                "-q",
                "prepare-data",
                "cmnist",
                "--raw",
                str(work / "raw"),
                "--out",
                str(out),
                "--ratios",
                args.ratios,
                "--workers",
                str(len(cores)),
                "--force",
            ],
            cores,
        )
        if res.returncode:
            sys.stderr.write(res.stdout + res.stderr)
            return 1
        files = sum(1 for _ in out.rglob("*.png"))
        print(f"build: {build_s:.1f} s for {files} files", file=sys.stderr)
        check_s, chk = run(
            ["-q", "prepare-data", "check", str(out), "--dataset", "cmnist", "--workers", str(len(cores))], cores
        )
        result = {
            "benchmark": "prepare-data cmnist",
            "train_images": args.n_train,
            "test_images": args.n_test,
            "ratios": args.ratios,
            "cores": len(cores),
            "files_written": files,
            "build_seconds": round(build_s, 1),
            "files_per_second": round(files / build_s),
            "check_seconds": round(check_s, 1),
            "check_exit": chk.returncode,
            "budget_seconds": 120,
            "within_budget": build_s < 120,
        }
        print(json.dumps(result))
        return 0 if result["within_budget"] and chk.returncode == 0 else 1
    finally:
        t = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)
        print(f"temporary files removed in {time.perf_counter() - t:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
