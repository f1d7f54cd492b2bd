"""Shared fixtures: an isolated dataset cache and tiny in-memory datasets."""

from __future__ import annotations

import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

# Every test run caches generated data in its own place, never in the user's cache.
os.environ.setdefault("REST_TUNE_CACHE", tempfile.mkdtemp(prefix="rest-tune-test-cache-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# One compute thread per process (set before torch is imported; subprocesses and Ray workers inherit it).
# The suite runs two test workers on two cores beside Ray's trial processes: with torch's default of a
# thread per core, the machine ran several times more compute threads than cores, and OpenMP threads
# that wait for each other spin.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3-protocol test server's address and throwaway credentials, set before any Ray
# node starts so that every Ray worker inherits them (they reach object storage too).
S3_PORT = _free_port()
os.environ.update(
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train": 40, "valid": 20, "test": 10}


def pytest_configure(config):
    """Refuse ``--dist loadgroup`` where it would ignore the xdist_group marks.

    The marks keep tests that share an expensive fixture on one worker. pytest-xdist (3.8, the
    newest) marks a test's group in ``Item._nodeid``, which pytest 9 no longer reads: the groups
    were ignored silently, and each worker ran the shared studies again.
    """
    if config.getoption("dist", "no") == "loadgroup" and int(pytest.__version__.split(".")[0]) >= 9:
        import xdist

        if tuple(int(p) for p in xdist.__version__.split(".")[:2]) <= (3, 8):
            raise pytest.UsageError("pytest-xdist <= 3.8 ignores xdist_group under pytest 9: install 'pytest<9'")


@pytest.fixture(scope="session")
def tiny_data():
    """colored_digits with 40 training images per class, 5 % conflicting."""
    from rest.core.data.base import from_arrays
    from rest.core.data.digits import build_colored_digits

    return from_arrays("colored_digits", 5.0, build_colored_digits(5.0, seed=0, per_class=TINY))


@pytest.fixture
def tiny_settings():
    from rest.settings import TrainSettings

    return TrainSettings(epochs=2, batch_size=64, eval_batch_size=256, update_frequency=2, density=0.1, seed=1)


def write_png_tree(
    root: Path, layout: dict[str, int], pct: str = "1pct", size: int = 8, seed: int = 0, classes: int = 10
) -> None:
    """A tiny LfF-layout tree of random PNGs: layout maps split -> images per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    dirs = {
        "align": root / pct / "align",
        "conflict": root / pct / "conflict",
        "valid": root / pct / "valid",
        "test": root / "test",
    }
    k = 0
    for split, per_class in layout.items():
        for y in range(classes):
            for _ in range(per_class):
                b = y if split in ("align", "valid") else (y + 1 + k % (classes - 1)) % classes
                folder = dirs[split] if split == "valid" else dirs[split] / str(y)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{k}_{y}_{b}.png")
                k += 1


@pytest.fixture(scope="session")
def ray_cluster():
    """A real 2-node Ray cluster on this machine (head + one worker node, 1 CPU each).

    Shared by every study test: subprocess drivers join it with --address, and this
    process joins it for in-process Tuner runs.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def smoke_study(ray_cluster, tmp_path_factory):
    """The smoke study run once through the command line on the 2-node cluster."""
    import subprocess
    import sys

    storage = tmp_path_factory.mktemp("studies")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tune_search.py"),
            "run",
            str(ROOT / "search_spaces" / "smoke.yaml"),
            "--storage",
            str(storage),
            "--address",
            ray_cluster.address,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    return storage, out


def cli(*args, timeout=300, **kw):
    """tune_search.py in a real subprocess, as a user runs it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(ROOT / "tune_search.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


def wait_for(predicate, timeout, what):
    """Poll `predicate` (storage state, not time) until it returns something truthy."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto's standalone server) on 127.0.0.1; yields its process.

    Shared by the session: a test that pauses it (SIGSTOP) resumes it (SIGCONT) in a `finally`.
    """
    import socket
    import subprocess
    import sys
    import time

    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", S3_PORT), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.2)
    yield server
    server.send_signal(signal.SIGCONT)
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    """One bucket on the S3-protocol server; returns its URI."""
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="rest-tune")
    return "s3://rest-tune"


@contextmanager
def paused(server, seconds: float):
    """The process `server` stopped (SIGSTOP) for `seconds`, as a storage outage; always continued after."""
    import time

    server.send_signal(signal.SIGSTOP)
    try:
        yield
        time.sleep(seconds)
    finally:
        server.send_signal(signal.SIGCONT)
