"""The command line as a user runs it: real subprocesses, exit codes, files."""

import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT, write_png_tree
from helpers import file_size_limit, tensorboard_scalars


def run_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, str(ROOT / "tune_search.py"), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_help_is_fast_and_imports_no_torch():
    start = time.perf_counter()
    out = run_cli("train", "--help")
    assert out.returncode == 0 and "--lambda-upweight" in out.stdout
    assert time.perf_counter() - start < 5  # generous: shared CI machines; the benchmark measures it
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, rest.cli.main; print('torch' in sys.modules, 'ray' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert probe.stdout.strip() == "False False"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "unknown dataset 'mnist'; choose from colored_digits, cmnist, cifar10c, bffhq"),
        (["--model", "vgg"], "unknown model 'vgg'; choose from cnn, resnet18"),
        (["--sparse", "snip"], "unknown sparse 'snip'; choose from rigl, set, static"),
        (["--reweight", "dro"], "unknown reweight 'dro'; choose from none, oracle, jtt"),
        (["--density", "0"], "density 0.0 is outside (0, 1]"),
        (["--density", "1.5"], "density 1.5 is outside (0, 1]"),
        (["--lambda-upweight", "0.5"], "lambda_upweight 0.5 is below 1"),
        (["--epochs", "0"], "epochs 0 is below 1"),
        (["--density", "abc"], "invalid float value: 'abc'"),
        (["--dataset", "cmnist"], "pass --data-root"),
        (["--dataset", "cmnist", "--data-root", "/nonexistent/x"], "does not exist"),
        (["--device", "cuda"], "has no CUDA GPU"),
        (["--lr", "nan"], "lr is nan; give a finite number"),
        (["--lr", "inf"], "lr is inf; give a finite number"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    if args == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    out = run_cli("train", *args, "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()


def test_bad_trees_through_the_cli(tmp_path):
    root = tmp_path / "data"
    write_png_tree(root, {"align": 1, "conflict": 1, "valid": 1, "test": 1})
    out = run_cli("train", "--dataset", "cmnist", "--data-root", str(root), "--conflict-pct", "2")
    assert out.returncode == 2 and "2% is missing" in out.stderr and "present: 1pct" in out.stderr
    (root / "1pct" / "align" / "0" / "x_y.png").write_bytes(b"")
    out = run_cli("train", "--dataset", "cmnist", "--data-root", str(root), "--conflict-pct", "1")
    assert out.returncode == 2 and "x_y.png does not match <id>_<y>_<b>.png" in out.stderr
    (tmp_path / "empty").mkdir()
    out = run_cli("train", "--dataset", "cmnist", "--data-root", str(tmp_path / "empty"))
    assert out.returncode == 2 and "is empty" in out.stderr


def test_train_writes_metrics_and_never_overwrites(tmp_path):
    root = tmp_path / "data"
    write_png_tree(root, {"align": 4, "conflict": 1, "valid": 2, "test": 2}, size=28)
    out_dir = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "cmnist",
        "--data-root",
        str(root),
        "--conflict-pct",
        "1",
        "--density",
        "0.1",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--out",
        str(out_dir),
    ]
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert "selected epoch" in out.stdout and (out_dir / "checkpoint.pt").exists()
    steps = [step for tag, step in tensorboard_scalars(out_dir) if tag == "val_worst_group_acc"]
    assert steps == [1, 2]
    before = (out_dir / "metrics.jsonl").read_bytes()
    again = run_cli(*args)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (out_dir / "metrics.jsonl").read_bytes() == before


def test_out_that_is_a_file_is_one_line_exit_2(tmp_path):
    taken = tmp_path / "file"
    taken.write_text("mine")
    for args in (
        ["train", "--out", str(taken)],
        ["export", str(ROOT / "tests" / "fixtures" / "smoke_study"), "--out", str(taken)],
    ):
        out = run_cli(*args)
        assert out.returncode == 2 and "is a file" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert taken.read_text() == "mine"
    for args, message in (
        (["--resume", str(tmp_path / "none")], "holds no resumable run"),
        (["--resume", str(tmp_path), "--epochs", "3"], "drop --epochs"),
    ):
        out = run_cli("train", *args)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_train_killed_mid_run_resumes_bit_exactly(tmp_path):
    import os
    import signal
    import subprocess

    from conftest import wait_for

    args = [
        "train",
        "--subsample",
        "300",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--density",
        "0.1",
        "--update-frequency",
        "5",
    ]
    straight = run_cli(*args, "--out", str(tmp_path / "a"), timeout=300)
    assert straight.returncode == 0, straight.stderr
    run = subprocess.Popen(
        [sys.executable, str(ROOT / "tune_search.py"), *args, "--out", str(tmp_path / "b")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (tmp_path / "b" / "checkpoint.pt").exists(), 180, "the first epoch checkpoint")
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    resumed = run_cli("train", "--resume", str(tmp_path / "b"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout or "already finished" in resumed.stdout

    def records(d):
        return [
            {k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in (d / "metrics.jsonl").read_text().splitlines()
        ]

    assert records(tmp_path / "b") == records(tmp_path / "a")


def test_every_training_setting_has_a_train_flag():
    import dataclasses

    from rest.cli.train import TRAIN_FLAGS
    from rest.settings import TrainSettings

    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    assert {field for _, field, _, _ in TRAIN_FLAGS} == fields
    help_text = run_cli("train", "--help").stdout
    docs = (ROOT / "docs" / "search_spaces.md").read_text()
    for name in fields:
        assert f"--{name.replace('_', '-')}" in help_text
        assert f"`{name}`" in docs, f"docs/search_spaces.md lists every setting: {name} is missing"


def test_a_full_disk_mid_run_is_one_line_and_train_resumes(tmp_path):
    """A checkpoint write that hits the file-size limit: exit 2, one line naming the file and the fix, the previous
    checkpoint intact and no partial file left; `train --resume` without the limit then finishes the run."""
    import os
    import signal

    from conftest import wait_for

    out = tmp_path / "run"
    args = [
        "train",
        "--subsample",
        "300",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--density",
        "0.1",
        "--update-frequency",
        "5",
        "--out",
        str(out),
    ]
    run = subprocess.Popen(
        [sys.executable, str(ROOT / "tune_search.py"), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (out / "checkpoint.pt").exists(), 180, "the first epoch checkpoint")
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    checkpoint = (out / "checkpoint.pt").read_bytes()

    full = subprocess.run(
        [sys.executable, str(ROOT / "tune_search.py"), "-q", "train", "--resume", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(len(checkpoint) // 2),
    )
    assert full.returncode == 2, full.stderr[-2000:]
    assert full.stderr == (
        f"error: no space left on device writing {out}/checkpoint.pt; "
        f"free space and `tune_search.py train --resume {out}`\n"
    )
    assert (out / "checkpoint.pt").read_bytes() == checkpoint and not (out / "checkpoint.pt.tmp").exists()
    assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())

    done = run_cli("train", "--resume", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
