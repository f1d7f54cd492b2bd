"""storage_retry: object storage that stops answering is waited for, up to a deadline (real S3-protocol server).

The server is paused with SIGSTOP, as a real outage looks to a client: connections
are accepted and nothing answers.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time

import pyarrow.fs as pafs
import pytest

from conftest import paused
from rest.storage import open_location
from rest.storage_retry import retrying


def as_ray_workers_get_it(fs):
    """Ray pickles the experiment's filesystem to every trial worker."""
    return pickle.loads(pickle.dumps(fs))


def test_every_operation_goes_through_the_retrying_filesystem(s3_bucket, tmp_path):
    raw = open_location(f"{s3_bucket}/ops")
    fs = as_ray_workers_get_it(retrying(raw.fs, 60))
    base = raw.path
    fs.create_dir(f"{base}/d", recursive=True)
    with fs.open_output_stream(f"{base}/d/a.txt") as f:
        f.write(b"hello")
    with fs.open_input_stream(f"{base}/d/a.txt") as f:
        assert f.read() == b"hello"
    with fs.open_input_file(f"{base}/d/a.txt") as f:
        assert (f.size(), f.read_at(3, 1), f.seek(0), f.read()) == (5, b"ell", 0, b"hello")
    fs.copy_file(f"{base}/d/a.txt", f"{base}/d/b.txt")
    fs.move(f"{base}/d/b.txt", f"{base}/d/c.txt")
    assert [i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{base}/d"))] == ["a.txt", "c.txt"]
    local = tmp_path / "up"
    local.mkdir()
    for i in range(12):  # Ray copies a checkpoint directory with copy_files, several files at once
        (local / f"f{i}").write_bytes(bytes([i]) * 1000)
    pafs.copy_files(str(local), f"{base}/up", destination_filesystem=fs)
    (tmp_path / "down").mkdir()
    pafs.copy_files(f"{base}/up", str(tmp_path / "down"), source_filesystem=fs)
    assert sorted(p.read_bytes() for p in (tmp_path / "down").iterdir()) == sorted(
        p.read_bytes() for p in local.iterdir()
    )
    fs.delete_file(f"{base}/d/c.txt")
    fs.delete_dir_contents(f"{base}/up")
    fs.delete_dir(f"{base}/d")
    assert fs.get_file_info(f"{base}/d").type == pafs.FileType.NotFound
    assert raw.fs.get_file_info(f"{base}/up").type == pafs.FileType.Directory  # the same storage, seen unwrapped


def test_errors_that_will_not_go_away_are_raised_at_once(s3_bucket):
    fs = retrying(open_location(s3_bucket).fs, 60)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        fs.open_input_stream("rest-tune/no/such/file")
    with pytest.raises(OSError, match="NO_SUCH_BUCKET"):
        fs.get_file_info(pafs.FileSelector("no-such-bucket/x"))
    assert time.monotonic() - start < 5
    assert not isinstance(retrying(open_location(s3_bucket).fs, 0), pafs.PyFileSystem)  # 0: no retries, no wrapper


def test_a_paused_server_is_waited_for_until_the_deadline(s3_server, s3_bucket, caplog):
    """During a 15 s pause, the filesystem as Ray's workers had it fails (10 s), the retrying one waits and
    succeeds, and a 3 s window gives up, saying why; one warning for the stall, one line when it ends."""
    location = open_location(f"{s3_bucket}/pause")
    location.join("f").write_text("before")
    outcome: dict[str, tuple[str, float]] = {}

    def attempt(name, fs, op):
        start = time.monotonic()
        try:
            op(fs)
            outcome[name] = ("ok", time.monotonic() - start)
        except OSError as exc:
            outcome[name] = (" ".join([str(exc), *getattr(exc, "__notes__", [])]), time.monotonic() - start)

    def write(fs):
        with fs.open_output_stream(location.join("g").path) as f:
            f.write(b"written during the pause")

    def read(fs):
        with fs.open_input_stream(location.join("f").path) as f:
            assert f.read() == b"before"

    cases = {
        "unwrapped": (as_ray_workers_get_it(location.fs), write),
        "retrying": (as_ray_workers_get_it(retrying(location.fs, 60)), write),
        "retrying read": (as_ray_workers_get_it(retrying(location.fs, 60)), read),
        "short window": (retrying(location.fs, 3), read),
    }
    caplog.set_level(logging.WARNING, logger="rest.storage_retry")
    threads = [threading.Thread(target=attempt, args=(name, fs, op)) for name, (fs, op) in cases.items()]
    with paused(s3_server, 15):
        for t in threads:
            t.start()
    for t in threads:
        t.join(timeout=120)
    assert "NETWORK_CONNECTION" in outcome["unwrapped"][0] and outcome["unwrapped"][1] < 15, outcome
    assert outcome["retrying"][0] == "ok" and outcome["retrying"][1] >= 15, outcome
    assert outcome["retrying read"][0] == "ok" and outcome["retrying read"][1] >= 15, outcome
    message, took = outcome["short window"]
    assert "object storage did not answer for 3 s (storage_retry_seconds)" in message and 3 <= took < 15, outcome
    assert location.join("g").read_text() == "written during the pause"
    stalls = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("object storage not answering") for m in stalls) == 1, stalls
    assert "retrying for up to" in stalls[0] and any(m.startswith("object storage answers again") for m in stalls)
