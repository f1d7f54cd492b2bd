"""Issue 19, case 4: a driver runs on a Ray of its own unless told to join a cluster.

Beside it runs a real `ray start --head` cluster, started in the Ray temp directory the
driver sees by default (as another user's cluster on a shared login node), so that a
plain ``ray.init()`` would join it. Its job and node tables are read from its GCS.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import _free_port, cli, wait_for
from helpers import results, write_space

GCS_TABLES = """
import json, sys
from ray._raylet import GcsClient
gcs = GcsClient(address=sys.argv[1])
print(json.dumps({"jobs": [j.driver_pid for j in gcs.get_all_job_info().values()],
                  "nodes": [n.node_id.hex() for n in gcs.get_all_node_info().values()]}))
"""


def gcs_tables(address: str, env: dict) -> dict:
    """The jobs (their driver pids) and node ids a running cluster's GCS knows, read without joining it."""
    out = subprocess.run(
        [sys.executable, "-c", GCS_TABLES, address], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture
def other_cluster():
    """A 1-CPU `ray start --head` cluster; yields (env of a driver on this machine, its address,
    a function that stops it)."""
    temp = tempfile.mkdtemp(prefix="rt")  # short: Ray's socket paths must fit in 107 characters
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": temp}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={_free_port()}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--disable-usage-stats",
            "--block",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address_file = Path(temp, "ray", "ray_current_cluster")  # what `ray start` leaves for ray.init() to join

    def stop():
        if head.poll() is None:
            head.terminate()  # `ray start --block` ends its cluster's processes with it
            try:
                head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of its process group is left
        except ProcessLookupError:
            pass

    try:
        wait_for(lambda: address_file.exists() or head.poll() is not None, 120, "the other cluster")
        assert head.poll() is None, "ray start --head failed"
        yield env, address_file.read_text().strip(), stop
    finally:
        stop()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_driver_runs_on_its_own_ray_beside_another_cluster(other_cluster, tmp_path):
    env, address, stop = other_cluster
    space = write_space(
        tmp_path / "private.yaml",
        name="private",
        scheduler={"type": "none"},
        confirm=None,
        train={"epochs": 1, "subsample": 200},
        search={"density": {"grid": [0.05]}},
    )

    # 1. No --address, no RAY_ADDRESS: the study runs on a private Ray; the other cluster never sees it.
    out = cli("run", str(space), "--storage", str(tmp_path), "--verbose", "0", env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    other = gcs_tables(address, env)
    (records,) = results(tmp_path / "private" / "search").values()
    assert records and records[-1]["node_id"] not in other["nodes"], "the trial ran on the other cluster"
    assert other["jobs"] == [], f"the driver joined the other cluster: {other['jobs']}"
    assert "starting a private Ray for this driver" in out.stderr

    # 2. --address local: a private Ray too (refused trials name its largest node; still no job on the other cluster).
    out = cli(
        "run",
        str(space),
        "--name",
        "local",
        "--storage",
        str(tmp_path),
        "--address",
        "local",
        "--cpus-per-trial",
        "64",
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and "no node can run a trial asking for 64 CPU" in out.stderr, out.stderr[-2000:]
    assert gcs_tables(address, env)["jobs"] == []

    # 3. The other cluster goes away, its address file stays: --address auto fails at once, one line.
    stop()
    for case, message in (
        ("stale", "cannot reach the cluster this machine last started"),
        ("none", "--address auto: no Ray cluster was started on this machine"),
    ):
        if case == "none":
            Path(env["RAY_TMPDIR"], "ray", "ray_current_cluster").unlink()
        start = time.time()
        out = cli(
            "run", str(space), "--name", "auto", "--storage", str(tmp_path), "--address", "auto", env=env, timeout=60
        )
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
        assert out.stderr.count("\n") == 1 and time.time() - start < 30
    assert not (tmp_path / "auto").exists() and not (tmp_path / "local").exists()
