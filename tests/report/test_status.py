"""`tune_search.py status` and `Study.status()`: a study's progress read from storage, finished, running and on S3."""

import signal
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

import rest
from conftest import ROOT, cli, wait_for
from helpers import FIXTURES, S4, driver, write_s4
from rest.report.status import find, study_status

FIXTURE = FIXTURES / "smoke_study"


def test_status_of_a_finished_study_counts_its_trials_and_picks_export_s_config():
    status = study_status(find(str(FIXTURE)))
    study = rest.load_study(str(FIXTURE))
    assert status.finished and status.eta_seconds == 0.0
    for phase in status.phases:
        trials = study.phases[phase.phase]
        assert phase.total("trials") == phase.total("planned") == len(trials) > 0
        assert phase.total("done") + phase.total("stopped") == len(trials)
        assert phase.total("running") == phase.total("pending") == phase.total("errored") == 0
        assert phase.total("epochs_done") == phase.total("epochs_planned") == sum(t.epochs_run for t in trials)
    assert status.phase("search").total("stopped") == 4  # ASHA stopped half the search trials after epoch 1
    chosen = study.best_configs()
    chosen = chosen[chosen["row"] == "REST (selected)"]
    keys = study.spec.searched_keys()
    expected = {(r["dataset"], r["conflict_pct"]): {k: r[k] for k in keys} for _, r in chosen.iterrows()}
    for phase in status.phases:
        assert {c.cell: {k: c.best[k] for k in keys} for c in phase.cells} == expected
    assert study.status().phases == status.phases  # the API object gives the same answer


def test_status_command_prints_one_table_reads_no_ray_and_refuses_an_unknown_study(tmp_path):
    out = cli("status", str(FIXTURE))
    assert out.returncode == 0, out.stderr
    assert (
        "search   colored_digits, 1       4     3    0     0    0     1     7/7  density 1, lambda_upweight 10"
        in out.stdout
    )
    assert out.stdout.rstrip().endswith("finished") and "driver: none holds the study" in out.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, rest.cli.main; rest.cli.main.main(['status', {str(FIXTURE)!r}]); "
            "print('ray' in sys.modules, 'torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert probe.stdout.splitlines()[-1] == "False False", probe.stderr
    missing = cli("status", "nosuch", "--storage", str(tmp_path))
    assert (
        missing.returncode == 2
        and missing.stderr
        == f"error: no study 'nosuch' in {tmp_path}; known studies: none (pass --storage, or the study's path)\n"
    )
    assert not any(tmp_path.iterdir()), "status wrote to storage"
    assert cli("status", str(FIXTURE), "--watch", "0").returncode == 2
    assert "status" in cli("--help").stdout


def test_status_of_a_study_in_s3(s3_bucket):
    fs, root = pafs.FileSystem.from_uri(f"{s3_bucket}/status-studies")
    pafs.copy_files(str(FIXTURE), f"{root}/smoke", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    out = cli("status", "smoke", "--storage", f"{s3_bucket}/status-studies")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"study smoke ({s3_bucket}/status-studies/smoke): search done, confirm done"
    assert out.stdout == cli("status", str(FIXTURE)).stdout.replace(str(FIXTURE), f"{s3_bucket}/status-studies/smoke")
    s3 = study_status(find("smoke", f"{s3_bucket}/status-studies"))
    assert s3.phases == study_status(find(str(FIXTURE))).phases


@pytest.mark.xdist_group("status_running")
def test_status_of_a_running_study_shows_running_and_pending_trials_and_the_driver(ray_cluster, tmp_path):
    space = write_s4(tmp_path / "s4.yaml", train={**S4["train"], "epochs": 3}, scheduler={"type": "none"}, confirm=None)
    storage = tmp_path / "studies"
    run = driver(
        ["run", str(space), "--storage", str(storage), "--address", ray_cluster.address],
        {"REST_TUNE_TEST_DELAY": "seed=42:4"},
    )  # every trial: 4 s before each epoch
    try:

        def running():
            try:
                status = study_status(find("s4", str(storage)))
            except Exception:  # the study directory or its first snapshot is not there yet
                return None
            search = status.phase("search")
            return status if search.total("running") and search.snapshot else None

        status = wait_for(running, 180, "a snapshot with a running trial")
        search = status.phase("search")
        assert search.status == "running" and not status.finished
        assert (
            search.total("planned") == 4
            and search.total("running") + search.total("pending") + search.total("done") == 4
        )
        assert search.total("pending") >= 2  # a 2-CPU cluster runs two of the four at a time
        assert search.total("epochs_planned") == 12 and search.total("epochs_done") < 12
        assert status.lock.pid == run.pid and status.lock.alive and status.lock.heartbeat_age < 30
        out = cli("status", "s4", "--storage", str(storage))
        assert out.returncode == 0 and f"driver: pid {run.pid} on " in out.stdout and "(alive)" in out.stdout
        assert "search: " in out.stdout and "ETA " in out.stdout
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            run.kill()
    after = study_status(find("s4", str(storage)))
    assert after.lock is None and after.phase("search").status == "interrupted"


def test_watch_refreshes_until_ctrl_c_and_exits_0(tmp_path):
    import json
    import shutil

    study = tmp_path / "smoke"
    shutil.copytree(FIXTURE, study)
    manifest = json.loads((study / "manifest.json").read_text())
    manifest["phases"]["confirm"]["status"] = "running"  # as a driver leaves it mid-phase
    (study / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(ROOT / "tune_search.py"), "status", str(study), "--watch", "0.2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    wait_for(
        lambda: lines.append(proc.stdout.readline()) or sum(line.startswith("study smoke") for line in lines) >= 3,
        60,
        "three refreshes",
    )
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # show where it hangs: faulthandler prints every thread's stack on SIGABRT
        proc.send_signal(signal.SIGABRT)
        raise AssertionError("status --watch hangs after Ctrl-C:\n" + proc.communicate(timeout=30)[1][-5000:]) from None
    assert proc.returncode == 0 and err == "", err


def test_ctrl_c_during_a_refresh_ends_watching_after_it_and_during_the_pause_at_once():
    """The watcher's SIGINT handler never raises inside a refresh (where it could leave a lock held)."""
    import os
    import threading
    import time

    from rest.cli.status import CtrlC

    previous = signal.getsignal(signal.SIGINT)
    try:
        during_refresh = CtrlC()
        signal.signal(signal.SIGINT, during_refresh)
        os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised
        time.sleep(0.1)
        assert during_refresh.pressed
        began = time.monotonic()
        assert during_refresh.pause(30) is False and time.monotonic() - began < 1, "no pause after the refresh"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)

        during_pause = CtrlC()
        signal.signal(signal.SIGINT, during_pause)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        began = time.monotonic()
        assert during_pause.pause(30) is False and time.monotonic() - began < 10, "the pause ends at the Ctrl-C"
    finally:
        signal.signal(signal.SIGINT, previous)
