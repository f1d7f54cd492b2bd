"""storage.fresh_dir: the one check before a command writes a new directory, on local
paths and on Locations (a real pyarrow local filesystem, and a real S3-protocol server)."""

from __future__ import annotations

import json

import pytest

from rest.errors import UserError
from rest.storage import Location, fresh_dir, local, open_location


def test_an_absent_directory_is_created_with_its_parents(tmp_path):
    target = tmp_path / "a" / "b"
    assert fresh_dir(target) == target.resolve() and target.is_dir()


def test_an_empty_directory_is_accepted(tmp_path):
    assert fresh_dir(tmp_path) == tmp_path.resolve()


def test_a_non_empty_directory_is_refused_in_one_line_and_left_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError) as err:
        fresh_dir(tmp_path, what="--out", fix="choose another --out")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--out {tmp_path.resolve()} already exists and is not empty")
    assert "choose another --out" in message and "nothing was overwritten" in message
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_replace_accepts_a_non_empty_directory_but_never_a_file(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    assert fresh_dir(tmp_path, replace=True) == tmp_path.resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        fresh_dir(tmp_path / "file", replace=True)
    assert (tmp_path / "file").read_text() == "x"


def test_check_only_creates_nothing(tmp_path):
    fresh_dir(tmp_path / "later", create=False)
    assert not (tmp_path / "later").exists()


def test_an_uncreatable_directory_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot use output directory .*; choose another one"):
        fresh_dir(tmp_path / "file" / "sub")


def test_a_location_is_checked_and_returned_as_given(tmp_path):
    target = local(tmp_path / "study")
    assert fresh_dir(target) is target and (tmp_path / "study").is_dir()
    (tmp_path / "study" / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="already exists and is not empty"):
        fresh_dir(target)
    with pytest.raises(UserError, match="is a file"):
        fresh_dir(target.join("manifest.json"))


def test_a_location_in_object_storage(s3_bucket):
    target = open_location(f"{s3_bucket}/fresh")
    assert isinstance(fresh_dir(target), Location)
    target.join("a.json").write_text("{}")
    with pytest.raises(UserError, match=f"{s3_bucket}/fresh already exists and is not empty"):
        fresh_dir(target, what="study")
    assert fresh_dir(target, replace=True) is target


def test_json_rewritten_on_object_storage_while_it_is_read_is_read_whole(s3_bucket):
    """A lock or manifest renewed by one thread while another reads it: each read is one whole version."""
    import threading
    import time

    file = open_location(f"{s3_bucket}/rewritten").join("lock.json")
    versions = [json.dumps({"n": "x" * k}) for k in (1, 40, 3, 90)]  # lengths differ, as a heartbeat's digits do
    file.write_text(versions[0])
    stop, seen = threading.Event(), []

    def rewrite():
        while not stop.is_set():
            for text in versions:
                file.write_text(text)
                time.sleep(0.01)  # a rewrite every 10 ms: a hundred times a heartbeat's pace

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(150):
            seen.append(file.read_json())
    finally:
        stop.set()
        writer.join()
    assert {json.dumps(v) for v in seen} <= set(versions)
