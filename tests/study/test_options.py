"""The driver's options: one function checks and resolves them for run, resume and rest.run_study."""

import pytest

from rest.errors import UserError
from rest.study.options import resolve_options

STORED = {
    "storage": "old",
    "name": "s",
    "address": "10.0.0.1:6379",
    "cpus_per_trial": 2.0,
    "gpus_per_trial": None,
    "max_concurrent": None,
    "max_failures": 0,
    "data_root": None,
    "verbose": 2,
    "autoscaling": True,
    "stall_minutes": 1.0,
}


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("cpus_per_trial", 0.0, "--cpus-per-trial 0 must be positive"),
        ("cpus_per_trial", float("inf"), "--cpus-per-trial inf must be positive"),
        ("gpus_per_trial", -0.5, "--gpus-per-trial -0.5 must be >= 0"),
        ("max_concurrent", 0, "--max-concurrent 0 must be a positive whole number"),
        ("max_concurrent", 1.5, "--max-concurrent 1.5 must be a positive whole number"),
        ("max_failures", -1, "--max-failures -1 must be a whole number >= 0"),
        ("max_failures", True, "--max-failures True must be a whole number >= 0"),
        ("stall_minutes", float("nan"), "--stall-minutes nan must be positive"),
        ("verbose", 3, "--verbose 3 must be 0, 1 or 2"),
        ("data_root", "/nonexistent/data", "--data-root /nonexistent/data must be an existing directory"),
        ("address", " ", "must be auto, local or HOST:PORT"),
    ],
)
def test_every_option_is_checked_with_a_one_line_error(option, value, message):
    for stored in (None, STORED):  # a new study and an existing one alike
        with pytest.raises(UserError) as err:
            resolve_options("studies", "s", {option: value}, stored)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_a_new_study_takes_what_is_given(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    opts, overrides = resolve_options(
        "studies", "s", {"cpus_per_trial": 1.0, "max_failures": None, "data_root": str(tmp_path)}
    )
    assert (opts.cpus_per_trial, opts.max_failures, opts.data_root, opts.address) == (1.0, 2, str(tmp_path), None)
    assert overrides == []
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert resolve_options("studies", "s", {})[0].address == "10.0.0.2:6379"
    assert resolve_options("studies", "s", {"address": "local"})[0].address == "local"


def test_an_existing_study_keeps_its_options_unless_given(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    stored = {**STORED, "data_root": str(tmp_path)}
    opts, overrides = resolve_options("new", "s", {"verbose": None, "data_root": None, "max_failures": None}, stored)
    assert (opts.cpus_per_trial, opts.max_failures, opts.data_root) == (2.0, 0, str(tmp_path))
    assert (opts.storage, opts.address, opts.verbose, opts.autoscaling) == ("new", None, 1, False), (
        "the driver's own: not kept"
    )
    assert overrides == []
    moved = tmp_path / "moved"
    moved.mkdir()
    opts, overrides = resolve_options(
        "new", "s", {"data_root": str(moved), "max_concurrent": 1, "cpus_per_trial": 2.0}, stored
    )
    assert (opts.data_root, opts.max_concurrent, opts.cpus_per_trial) == (str(moved), 1, 2.0)
    assert overrides == [f"--data-root {moved} (the study's: {tmp_path})", "--max-concurrent 1 (the study's: none)"]


def test_a_study_whose_data_root_moved_is_refused_until_given(tmp_path):
    stored = {**STORED, "data_root": str(tmp_path / "gone")}
    with pytest.raises(UserError, match=r"the study's data root .*gone is not a directory any more; pass --data-root"):
        resolve_options("studies", "s", {}, stored)
    assert resolve_options("studies", "s", {"data_root": str(tmp_path)}, stored)[0].data_root == str(tmp_path)
