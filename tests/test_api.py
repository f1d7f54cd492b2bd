"""The Python API and experiment tracking: rest.run_study / rest.load_study in this process, MLflow to SQLite."""
import os
import sqlite3

import yaml

import rest
from test_cli import tensorboard_scalars


def test_run_study_logs_to_mlflow_and_tensorboard_and_load_study_reads_it(ray_cluster, tmp_path, monkeypatch):
    space = tmp_path / "tracked.yaml"
    space.write_text(yaml.safe_dump({
        "name": "tracked", "dataset": "colored_digits",
        "train": {"epochs": 2, "batch_size": 64, "subsample": 300, "reweight": "oracle"},
        "search": {"density": {"grid": [0.05, 1.0]}},
        "scheduler": {"type": "none"}, "confirm": None, "callbacks": ["mlflow", "tensorboard"],
    }))
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
