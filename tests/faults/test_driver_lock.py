"""One driver per study, even across a pause: real drivers, real SIGSTOP / SIGCONT, a 2-node cluster,
local and S3 storage.

A driver is never taken over on its own host while its process lives, however old
its heartbeat; on another host it is taken over once its lease ran out, and on
waking it stops at once (exit 2) without writing to the study again. The paused
driver runs under another host name, in its own UTS namespace (`unshare --uts`,
root): a driver started under the same name is on its host, one started as the
tests are is on another host; all share the cluster and the storage. Leases are
3 s here (the default is 60 s).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs
import pytest

import rest
from conftest import ROOT, cli, wait_for
from helpers import S4, write_s4
from rest.errors import StudyError
from rest.storage import local
from rest.study.lock import DriverLock, LockLost, process_start, this_machine

LEASE = ["--lease-seconds", "3", "--heartbeat-seconds", "1"]
HOSTNAME = "rest-other-host"


def _can_rename_host() -> bool:
    return subprocess.run(["unshare", "--uts", "sh", "-c", f"hostname {HOSTNAME}"], capture_output=True).returncode == 0


needs_unshare = pytest.mark.skipif(not _can_rename_host(), reason="needs unshare --uts (root) to play another host")


def start(args, hostname: str | None = None) -> subprocess.Popen:
    """tune_search.py in a real subprocess; with `hostname`, in its own UTS namespace under that host name."""
    command = [sys.executable, str(ROOT / "tune_search.py"), *args]
    if hostname:
        command = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *command]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def files(uri: str) -> dict[str, tuple]:
    """Every file below `uri` (a path or s3://...) -> (size, modification time)."""
    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root) + 1 :]: (i.size, i.mtime) for i in infos if i.type == pafs.FileType.File}


def lock(uri: str) -> dict:
    fs, root = pafs.FileSystem.from_uri(uri)
    try:
        with fs.open_input_stream(f"{root}/driver.lock") as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return {}


def lock_age(uri: str) -> float:
    return time.time() - lock(uri).get("heartbeat", time.time())


def read(uri: str) -> bytes:
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def staged_snapshots(cluster, session: str) -> dict[str, bytes]:
    """The snapshot files a driver of `cluster` staged locally for session `session` (Ray uploads them from there)."""
    staging = Path(cluster.head_node.get_session_dir_path(), "artifacts")
    found = {p.name: p.read_bytes() for p in staging.glob(f"*/search/driver_artifacts/*{session}*")}
    assert found, f"no staged snapshot of session {session} under {staging}"
    return found


def session_files(listing: dict, session: str) -> dict:
    return {k: v for k, v in listing.items() if session in k}


def stop_past_lease(proc: subprocess.Popen, study: str) -> None:
    if proc.poll() is not None:
        raise AssertionError(
            f"the driver ended before its pause (exit {proc.returncode}): {proc.stderr.read()[-3000:]}"
        )
    assert lock(study), "the running driver holds no lock"
    proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: lock_age(study) > 3.5, 30, "the paused driver's lease to run out")


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "studies")
    return f"{request.getfixturevalue('s3_bucket')}/lock-{uuid.uuid4().hex[:8]}"


@needs_unshare
@pytest.mark.xdist_group("driver_lock")
def test_a_paused_driver_keeps_its_study_on_its_host_and_loses_it_past_its_lease_to_another(
    ray_cluster, tmp_path, storage
):
    epochs = 4  # trials still run when the driver is woken and paused again
    space = write_s4(
        tmp_path / "s4.yaml",
        train={**S4["train"], "epochs": epochs},
        search={"density": {"grid": [0.05, 1.0]}},
        scheduler={"type": "none"},
        confirm=None,
    )
    addr = ["--address", ray_cluster.address]
    study = f"{storage}/s4"
    first = start(["run", str(space), "--storage", storage, *addr, *LEASE], hostname=HOSTNAME)
    procs = [first]
    try:
        wait_for(lambda: any("/checkpoint_" in k for k in files(study)), 300, "a first trial checkpoint")
        session = wait_for(
            lambda: re.findall(r"experiment_state-([^ /]+)\.json", " ".join(files(study))), 60, "a snapshot"
        )[0]

        # 1. Paused past its lease, on its own host (same name, same machine): never taken over while its pid lives.
        stop_past_lease(first, study)
        procs.append(refused := start(["resume", "s4", "--storage", storage, *addr], hostname=HOSTNAME))
        _, stderr = refused.communicate(timeout=120)
        assert refused.returncode == 2, stderr[-3000:]
        assert f"pid {first.pid}" in stderr and "probably paused" in stderr and f"kill -CONT {first.pid}" in stderr
        assert stderr.count("\n") == 1, stderr
        first.send_signal(signal.SIGCONT)
        wait_for(lambda: lock_age(study) < 1, 30, "the woken driver to renew its lock")  # it kept its study
        assert first.poll() is None

        # 2. Paused past its lease, seen from another host: taken over. On waking it stops and saves nothing more.
        # (A snapshot upload already under way at the pause may still land on waking: then it holds the
        # snapshot the driver had staged before the pause, and nothing saved after it.)
        stop_past_lease(first, study)
        staged = staged_snapshots(ray_cluster, session)
        before_takeover = files(study)
        procs.append(second := start(["resume", "s4", "--storage", storage, *addr]))
        wait_for(lambda: lock(study).get("pid") == second.pid, 120, "the second driver to take the lock")
        wait_for(lambda: files(study)["manifest.json"] != before_takeover["manifest.json"], 120, "its manifest write")
        before = files(study)
        first.send_signal(signal.SIGCONT)
        _, stderr = first.communicate(timeout=60)
        after = files(study)
        assert first.returncode == 2, stderr[-3000:]
        assert f"error: another driver took over this study (host {os.uname().nodename}, pid {second.pid})" in stderr
        assert "Traceback" not in stderr
        assert after["manifest.json"] == before["manifest.json"], "the stopped driver wrote its manifest"
        assert session_files(before, session)
        for name in session_files(after, session):
            if after[name] != before[name]:
                assert read(f"{study}/{name}") == staged[PurePosixPath(name).name], f"the woken driver saved {name}"

        # 3. The second driver finishes the study: every trial exactly once.
        _, stderr = second.communicate(timeout=240)
    finally:
        for proc in procs:
            proc.kill()
    assert second.returncode == 0, stderr[-3000:]
    assert "taking over the study from a driver that is gone" in stderr and f"pid {first.pid}" in stderr
    trials = rest.load_study("s4", storage=storage).all_trials()
    trial_dirs = {k.split("/")[1] for k in files(study) if k.startswith("search/trial_")}
    assert len(trials) == len(trial_dirs) == 2, "every trial exactly once"
    assert all(
        t.status == "TERMINATED" and [r["epoch"] for r in t.history] == list(range(1, epochs + 1)) for t in trials
    )
    assert not lock(study), "the finishing driver released the lock"


def another_driver(**changes) -> dict:
    """The lock file another driver on this machine would write (a live process's pid, a fresh heartbeat)."""
    return {
        **this_machine(),
        "token": "another",
        "started": "2026-01-01 00:00:00",
        "heartbeat": time.time(),
        "lease": 3.0,
        **changes,
    }


def test_who_may_be_taken_over(tmp_path):
    """Only a holder surely gone: its process ended (or its pid was reused, or its host rebooted) on this machine,
    or its heartbeat is older than its own lease on another host."""
    live = subprocess.Popen(["sleep", "60"])
    ended = subprocess.Popen(["true"])
    ended.wait()
    alive = {"pid": live.pid, "pid_started": process_start(live.pid)}
    cases = [
        ({**alive, "heartbeat": time.time() - 1000}, "probably paused"),  # old heartbeat, live process: refused
        ({**alive, "pid_started": "1"}, None),  # the pid now belongs to another process
        ({"pid": ended.pid, "pid_started": None}, None),
        ({"pid": 0}, None),  # a damaged lock names no process (pid 0 would be this process group)
        ({**alive, "boot": "an-earlier-boot"}, None),  # this host has restarted since
        ({**alive, "host": "elsewhere"}, "on elsewhere"),  # another host within its lease
        ({**alive, "host": "elsewhere", "heartbeat": time.time() - 4}, None),  # ... past its 3 s lease
        (
            {**alive, "host": "elsewhere", "heartbeat": time.time() - 100, "lease": 600.0},
            "on elsewhere",
        ),  # its own lease
    ]
    study = local(tmp_path)
    try:
        for changes, refusal in cases:
            study.join("driver.lock").write_text(json.dumps(another_driver(**changes)))
            if refusal:
                with pytest.raises(StudyError, match=refusal):
                    DriverLock(study, lease=3, heartbeat=1).__enter__()
                assert lock(str(tmp_path))["token"] == "another", "a refused driver leaves the lock alone"
            else:
                with DriverLock(study, lease=3, heartbeat=1):
                    assert lock(str(tmp_path))["pid"] == os.getpid(), changes
    finally:
        live.kill()


def test_a_driver_whose_lock_is_taken_stops_at_once_and_leaves_the_lock(tmp_path):
    study = local(tmp_path)
    for take in (
        lambda: study.join("driver.lock").write_text(json.dumps(another_driver(host="elsewhere", pid=7))),
        lambda: os.remove(tmp_path / "driver.lock"),
    ):
        (tmp_path / "driver.lock").unlink(missing_ok=True)
        begun = time.time()
        with pytest.raises(LockLost, match="another driver took over this study"), DriverLock(study, 2, 0.2) as held:
            take()
            time.sleep(30)  # the heartbeat thread interrupts this
        assert time.time() - begun < 2, "stopped within a heartbeat or two"
        with pytest.raises(LockLost):
            held.check()  # every later write is refused too
    assert lock(str(tmp_path)) == {}, "the last take removed the lock; nobody recreated it"
    with pytest.raises(LockLost, match=r"\(host elsewhere, pid 7\)"), DriverLock(study, 2, 1) as held:
        study.join("driver.lock").write_text(json.dumps(another_driver(host="elsewhere", pid=7)))
        held.check()
    assert lock(str(tmp_path))["pid"] == 7, "the stopped driver does not delete the other driver's lock"


def test_bad_lock_timings_are_one_line_exit_2(tmp_path):
    space = write_s4(tmp_path / "s4.yaml")
    for flags, message in (
        (["--heartbeat-seconds", "0"], "--heartbeat-seconds 0 must be a positive number"),
        (["--lease-seconds", "5", "--heartbeat-seconds", "10"], "--lease-seconds 5 must be at least twice"),
        (["--lease-seconds", "nan"], "--lease-seconds nan must be a positive number"),
    ):
        out = cli("run", str(space), "--storage", str(tmp_path / "studies"), *flags)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "studies" / "s4").exists()
