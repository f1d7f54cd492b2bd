"""The Python API and experiment tracking: rest.run_study / rest.load_study in this process, MLflow to SQLite;
rest.run_study on an existing study behaves like resume."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import pytest
import yaml

import rest
from conftest import ROOT, cli, wait_for, write_png_tree
from helpers import checkpoint_epochs, tensorboard_scalars
from rest.errors import StudyError


def test_run_study_logs_to_mlflow_and_tensorboard_and_load_study_reads_it(ray_cluster, tmp_path, monkeypatch):
    space = tmp_path / "tracked.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "tracked",
                "dataset": "colored_digits",
                "train": {"epochs": 2, "batch_size": 64, "subsample": 300, "reweight": "oracle"},
                "search": {"density": {"grid": [0.05, 1.0]}},
                "scheduler": {"type": "none"},
                "confirm": None,
                "callbacks": ["mlflow", "tensorboard"],
            }
        )
    )
    db = tmp_path / "mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")

    study = rest.run_study(space, storage=str(tmp_path / "studies"), verbose=0)

    trials = study.trials()
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"} and set(trials["epochs_run"]) == {2}
    best = study.best_configs()
    assert list(best["row"]) == ["REST (selected)"] and best.iloc[0]["density"] in (0.05, 1.0)
    written = study.export(tmp_path / "out", formats=("csv",))
    assert (tmp_path / "out" / "paper_table.csv") in written
    again = rest.load_study("tracked", storage=str(tmp_path / "studies"))
    assert again.trials()["trial_id"].tolist() == trials["trial_id"].tolist()
    # a second call finds the finished study and runs nothing
    assert rest.run_study(space, storage=str(tmp_path / "studies"), verbose=0).trials().equals(trials)

    # MLflow: one run per trial, each with every epoch's validation worst-group accuracy
    with sqlite3.connect(db) as con:
        runs = con.execute("select run_uuid from runs").fetchall()
        steps = con.execute("select count(*) from metrics where key = 'val_worst_group_acc'").fetchone()[0]
    assert len(runs) == 2 and steps == 4
    # TensorBoard: event files in every trial directory
    for t in study.all_trials():
        assert ("ray/tune/val_worst_group_acc", 2) in tensorboard_scalars(type(tmp_path)(t.location.path))
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite")


def folder_study(tmp_path, epochs=2):
    """A study on a folder dataset (a tiny LfF tree of random PNGs); returns (study file, data root)."""
    root = tmp_path / "data"
    write_png_tree(root, {"align": 3, "conflict": 1, "valid": 1, "test": 1}, size=28)
    space = tmp_path / "folder.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "folder",
                "dataset": "cmnist",
                "train": {
                    "epochs": epochs,
                    "batch_size": 16,
                    "subsample": 30,
                    "width": 4,
                    "conflict_pct": 1,
                    "reweight": "oracle",
                },
                "search": {"density": {"grid": [0.5]}},
                "scheduler": {"type": "none"},
                "confirm": {"top_k": 1, "seeds": [41], "baseline": False, "epochs": 1},
            }
        )
    )
    return space, root


def test_run_study_again_without_data_root_keeps_the_study_s_data_root(ray_cluster, tmp_path, caplog):
    """Issue 19, case 1: interrupted, then called again without data_root: the confirm phase gets the study's root."""
    space, root = folder_study(tmp_path)
    storage = tmp_path / "studies"
    script = (
        "import sys, rest; rest.run_study(sys.argv[1], storage=sys.argv[2], data_root=sys.argv[3], address=sys.argv[4])"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", script, str(space), str(storage), str(root), ray_cluster.address],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: checkpoint_epochs(storage / "folder" / "search") or first.poll() is not None, 180, "a first checkpoint"
    )
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode != 0, "interrupted before the end: " + stderr[-2000:]
    assert not (storage / "folder" / "confirm_configs.json").exists(), "the confirm configs come from the next call"

    study = rest.run_study(space, storage=str(storage), address=ray_cluster.address)  # no data_root this time

    manifest = json.loads((storage / "folder" / "manifest.json").read_text())
    assert {p: i["status"] for p, i in manifest["phases"].items()} == {"search": "done", "confirm": "done"}
    assert manifest["options"]["data_root"] == str(root)
    confirm = json.loads((storage / "folder" / "confirm_configs.json").read_text())
    assert [c["data_root"] for c in confirm] == [str(root)]
    trials = study.trials()
    assert set(trials["status"]) == {"TERMINATED"}, trials[["trial_id", "status"]]
    assert sorted(zip(trials["phase"], trials["epochs_run"])) == [("confirm", 1), ("search", 2)]
    assert not [r for r in caplog.records if "overriding" in r.getMessage()], "nothing was overridden"


def test_run_study_refuses_an_edited_definition_as_resume_does(tmp_path):
    """Issue 19, case 5: an edited study file given to rest.run_study is refused with resume's one-line diff."""
    storage = tmp_path / "studies"
    shutil.copytree(ROOT / "tests" / "fixtures" / "smoke_study", storage / "smoke")
    original = (storage / "smoke" / "study.yaml").read_text()
    space = tmp_path / "smoke.yaml"
    space.write_text(original.replace("epochs: 2", "epochs: 5", 1))
    manifest = (storage / "smoke" / "manifest.json").read_text()
    for status in ("done", "interrupted"):  # finished, and not yet: refused before anything runs
        (storage / "smoke" / "manifest.json").write_text(manifest.replace('"status": "done"', f'"status": "{status}"'))
        with pytest.raises(StudyError) as err:
            rest.run_study(space, storage=str(storage))
        message = str(err.value)
        assert (
            message.startswith(f"{space} was edited after the study started (train.epochs: 2 -> 5); ")
            and "\n" not in message
        )
    (storage / "smoke" / "study.yaml").write_text(space.read_text())  # the same edit in the study: resume's message
    resumed = cli("resume", "smoke", "--storage", str(storage), timeout=60)
    assert resumed.returncode == 2 and resumed.stderr.strip().endswith(message.split(" was edited", 1)[1]), (
        resumed.stderr
    )
    (storage / "smoke" / "study.yaml").write_text(original)
    (storage / "smoke" / "manifest.json").write_text(manifest)
    space.write_text(original)  # the unchanged file returns the finished study
    assert len(rest.run_study(space, storage=str(storage)).trials()) == 14
