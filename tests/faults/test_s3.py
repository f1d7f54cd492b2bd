"""Studies in object storage: a real S3-protocol server on 127.0.0.1 (moto), a real 2-node Ray cluster.

run, kill -9 of the driver, resume, export and export-model all go straight to and
from s3://; a pause of the server costs no trial a retry; bad storage is one line with exit 2.
"""

import json
import signal
import time

import pyarrow.fs as pafs
import pytest

from conftest import cli, paused, wait_for
from helpers import S4, driver, write_s4


def s3_files(uri: str) -> dict[str, int]:
    """Every object under an s3:// URI with its size."""
    fs, path = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path: i.size for i in infos if i.type == pafs.FileType.File}


def test_study_in_s3_survives_kill_9_and_exports_from_s3(ray_cluster, s3_bucket, tmp_path):
    storage = f"{s3_bucket}/studies"
    space = write_s4(
        tmp_path / "s4.yaml",
        train={**S4["train"], "epochs": 3},
        search={"density": {"grid": [0.05]}},
        scheduler={"type": "none"},
        confirm=None,
    )
    addr = ["--address", ray_cluster.address]
    run = driver(["run", str(space), "--storage", storage, *addr])

    def checkpointed():
        return any("/checkpoint_" in k and k.endswith("history.json") for k in s3_files(f"{storage}/s4/search"))

    wait_for(checkpointed, 180, "a checkpoint in S3")
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    assert not any(k.endswith("confirm_configs.json") for k in s3_files(storage))

    done = cli("resume", "s4", "--storage", storage, *addr)
    assert done.returncode == 0, done.stderr[-3000:]
    fs, path = pafs.FileSystem.from_uri(f"{storage}/s4/manifest.json")
    with fs.open_input_stream(path) as f:
        manifest = json.loads(f.read())
    assert {p: i["status"] for p, i in manifest["phases"].items()} == {"search": "done", "confirm": "skipped"}

    before = s3_files(storage)
    tables = tmp_path / "tables"
    out = cli("export", "s4", "--storage", storage, "--out", str(tables))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tables / "best_configs.csv").stat().st_size > 0 and (tables / "paper_table.tex").exists()
    out = cli("export-model", f"{storage}/s4", "--cell", "colored_digits:1", "--out", str(tmp_path / "m.pt"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert s3_files(storage) == before, "exports read from object storage and write nothing there"

    import rest

    study = rest.load_study("s4", storage=storage)
    assert all(t.status == "TERMINATED" and t.epochs_run == int(t.config["epochs"]) for t in study.all_trials())
    assert [r["epoch"] for t in study.phases["search"] for r in t.history] == [1, 2, 3]


def worker_lines(ray_cluster, start: str) -> list[str]:
    """The lines starting with `start` that Ray's trial workers logged (their stderr, in the cluster's logs)."""
    from pathlib import Path

    logs = Path(ray_cluster.head_node.get_session_dir_path()) / "logs"
    return [
        line
        for f in logs.glob("worker-*.err")
        for line in f.read_text(errors="replace").splitlines()
        if line.startswith(start)
    ]


def test_a_storage_stall_costs_no_trial_retry(ray_cluster, s3_server, s3_bucket, tmp_path):
    """The S3 server paused mid-search until a trial's storage call has failed and been retried, and
    for at least 20 s: the study finishes with exit 0 and no trial failed, even with --max-failures 0."""
    storage = f"{s3_bucket}/stall"
    space = write_s4(
        tmp_path / "s4.yaml",
        train={**S4["train"], "epochs": 2, "subsample": 200},
        search={"density": {"grid": [0.05, 1.0]}},
        scheduler={"type": "none"},
        confirm=None,
    )
    stalled, waiting = "object storage not answering", "test delay: sleeping 3 s before epoch 2"
    stalls_before, waits_before = len(worker_lines(ray_cluster, stalled)), len(worker_lines(ray_cluster, waiting))
    # Each trial waits 3 s before each epoch and says so in its log.
    run = driver(
        [
            "run",
            str(space),
            "--storage",
            storage,
            "--address",
            ray_cluster.address,
            "--max-failures",
            "0",
            "--storage-retry-seconds",
            "60",
            "--verbose",
            "0",
        ],
        env_extra={"REST_TUNE_TEST_DELAY": "epochs=2:3"},
    )
    try:
        # Storage stops while a trial waits before its second epoch, so that the epoch's history and checkpoint
        # writes meet it. (Stopped at the first checkpoint instead, a trial could be waiting for the driver's
        # answer to its report, with no storage call of its own to fail.) It stays stopped until that trial's
        # call has failed and been retried, and at least 20 s; then 5 s more, while its retry still waits.
        wait_for(lambda: len(worker_lines(ray_cluster, waiting)) > waits_before, 180, "a trial before epoch 2")
        with paused(s3_server, 5):
            began = time.monotonic()
            wait_for(lambda: len(worker_lines(ray_cluster, stalled)) > stalls_before, 120, "a trial to meet the stall")
            time.sleep(max(0.0, 15 - (time.monotonic() - began)))
        stdout, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, stderr[-3000:]
    assert "object storage not answering" in stderr and "retrying for up to 60 s" in stderr  # the driver waited

    import rest

    study = rest.load_study("s4", storage=storage)
    assert [(t.status, t.failures, t.epochs_run) for t in study.all_trials()] == [("TERMINATED", 0, 2)] * 2
    assert not [k for k in s3_files(storage) if k.endswith("error.txt")]


@pytest.mark.parametrize(
    "storage, message",
    [
        ("s3://no-such-bucket/studies", "cannot write to storage s3://no-such-bucket/studies"),
        ("s3://rest-tune/x?endpoint_override=127.0.0.1:1&scheme=http", "cannot write to storage"),
    ],
)
def test_bad_object_storage_is_one_line_exit_2(s3_bucket, tmp_path, storage, message):
    out = cli("run", str(write_s4(tmp_path / "s4.yaml")), "--storage", storage, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr and out.stderr.count("\n") == 1
