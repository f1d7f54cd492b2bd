"""Export: golden tables from a fixture study (a real smoke run), partial studies, sparse models."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT
from helpers import FIXTURES, GOLDEN

FIXTURE = FIXTURES / "smoke_study"
SNAPSHOT_BYTES_PER_TRIAL = (
    25_000  # was 63-68 KB with full records; what is left is mostly Ray's own (config x3, kept checkpoints)
)


def cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "tune_search.py"), "-q", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "smoke"
    result = cli("export", str(FIXTURE), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.iterdir()))
def test_tables_match_the_golden_files(exported, name):
    assert (exported / name).read_text() == (GOLDEN / name).read_text()


def test_every_output_is_written(exported):
    for name in ("by_density.md", "trials.csv", "accuracy_vs_density.png", "summary.md"):
        assert (exported / name).stat().st_size > 0
    trials = pd.read_csv(exported / "trials.csv")
    assert len(trials) == 14 and set(trials["phase"]) == {"search", "confirm"}
    assert trials["stopped_early"].sum() == 4  # ASHA-stopped trials are flagged, not shown as finished
    summary = (exported / "summary.md").read_text()
    assert "search trial-epochs: 12 of 16" in summary and "tune_search.py run search_spaces/smoke.yaml" in summary
    best = pd.read_csv(exported / "best_configs.csv")
    assert list(best["row"]) == ["REST (selected)", "ERM (dense)", "dense reweighted"] * 2
    rest = best[best["row"] == "REST (selected)"].set_index("conflict_pct")
    for pct in (1, 5):  # REST's gain over each baseline is the difference of the rows
        for label, column in (("ERM (dense)", "gain_over_erm"), ("dense reweighted", "gain_over_dense_reweighted")):
            base = best[(best["row"] == label) & (best["conflict_pct"] == pct)].iloc[0]
            assert rest.loc[pct, column] == pytest.approx(
                rest.loc[pct, "best_test_worst_group_acc"] - base["best_test_worst_group_acc"]
            )
    assert "Caution:" in summary  # the 1 % cell was decided by 9 validation samples


def test_oracle_selection_is_labelled(tmp_path):
    out = tmp_path / "o"
    assert cli("export", str(FIXTURE), "--out", str(out), "--selection", "oracle").returncode == 0
    assert "ORACLE" in (out / "best_configs_oracle.md").read_text()
    assert "ORACLE" in (out / "summary.md").read_text()


def test_partial_study_marks_incomplete_cells(tmp_path):
    study = tmp_path / "partial"
    shutil.copytree(FIXTURE, study)
    shutil.rmtree(study / "confirm")
    manifest = json.loads((study / "manifest.json").read_text())
    manifest["phases"]["confirm"] = {"status": "pending", "wall_seconds": 0.0}
    (study / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert cli("export", str(study), "--out", str(out), "--format", "csv").returncode == 0
    best = pd.read_csv(out / "best_configs.csv")
    assert len(best) == 2 and (best["status"] == "incomplete: search phase only").all()


def test_several_studies_merge_into_one_table(tmp_path):
    out = tmp_path / "both"
    result = cli("export", str(FIXTURE), str(FIXTURE), "--out", str(out), "--format", "csv,md")
    assert result.returncode == 0, result.stderr
    best = pd.read_csv(out / "best_configs.csv")
    assert len(best) == 12 and list(best["study"].unique()) == ["smoke"]
    paper = (out / "paper_table.md").read_text()
    assert "| ERM (dense) |" in paper and "REST: selected density" in paper


def test_bad_export_input(tmp_path):
    out = cli("export", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "is not a study directory" in out.stderr
    empty = tmp_path / "empty"
    shutil.copytree(FIXTURE, empty, ignore=shutil.ignore_patterns("search", "confirm"))
    out = cli("export", str(empty), "--out", str(tmp_path / "e"))
    assert out.returncode == 2 and "has no trials yet" in out.stderr
    other = tmp_path / "taken"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    out = cli("export", str(FIXTURE), "--out", str(other))
    assert out.returncode == 2 and "already exists and is not empty; it holds other files" in out.stderr
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    out = cli("export-model", str(FIXTURE), "--cell", "colored_digits:50")
    assert (
        out.returncode == 2
        and "unknown cell colored_digits:50; cells with results: colored_digits:1, colored_digits:5" in out.stderr
    )
    out = cli("export", str(FIXTURE), "--out", str(tmp_path / "f"), "--format", "xls")
    assert out.returncode == 2 and "unknown format xls" in out.stderr
    out = cli("export-model", str(FIXTURE))
    assert out.returncode == 2 and "needs --cell DATASET:CONFLICT_PCT" in out.stderr


def test_an_export_directory_holds_one_export(tmp_path, capsys):
    """Re-exporting with fewer formats leaves no stale table; files that are not an export's are never touched."""
    from rest.cli.main import main

    def export(*formats):  # in-process, as the command line runs it
        status = main(["-q", "export", str(FIXTURE), "--out", str(out), "--format", ",".join(formats)])
        return status, capsys.readouterr()

    out = tmp_path / "tables"
    assert export("md", "csv", "tex")[0] == 0
    assert (out / "best_configs.md").exists() and (out / "paper_table.tex").exists()
    status, again = export("csv")
    assert status == 0, again.err
    listed = sorted(line.strip() for line in again.out.splitlines()[1:])
    assert sorted(p.name for p in out.iterdir() if p.name != ".rest-export.json") == listed
    assert [p.name for p in out.glob("*.md")] == ["summary.md"] and not list(out.glob("*.tex"))  # no stale table
    assert sorted(json.loads((out / ".rest-export.json").read_text())["files"]) == listed
    (out / "notes.txt").write_text("mine")  # someone's file: the directory is no longer only our export
    status, refused = export("md")
    assert status == 2 and "it holds other files (notes.txt)" in refused.err
    assert (
        (out / "notes.txt").read_text() == "mine"
        and (out / "best_configs.csv").exists()
        and not (out / "best_configs.md").exists()
    )


def tree_digest(root) -> str:
    """One hash over every file's path and bytes below root."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.mark.xdist_group("smoke_study")
def test_export_model_round_trip_and_exports_never_write_to_storage(smoke_study, tmp_path):
    """The compact model predicts exactly as the checkpoint's best-epoch model, at a fraction of its size."""
    import rest
    from rest.api import selected_epoch_state, selected_trial
    from rest.core.batches import to_input
    from rest.core.data import get_dataset_spec, load_dataset
    from rest.core.models import build_model
    from rest.report.export import read_for_export
    from rest.settings import TrainSettings
    from rest.study.manifest import find_study

    storage, run = smoke_study
    assert run.returncode == 0, run.stderr[-2000:]
    before = tree_digest(storage)
    exported = cli("export", "smoke", "--storage", str(storage), "--out", str(tmp_path / "tables"))
    assert exported.returncode == 0, exported.stderr
    study = read_for_export(find_study(str(storage / "smoke"), None))
    # check whichever cell selected a sparse config
    for cell in ("colored_digits:5", "colored_digits:1"):
        trial = selected_trial(study, cell)
        if trial.config["density"] <= 0.2:
            break
    else:
        pytest.skip("no sparse config was selected in this run")
    out = cli("export-model", str(storage / "smoke"), "--cell", cell, "--out", str(tmp_path / "m.pt"))
    assert out.returncode == 0, out.stderr
    assert tree_digest(storage) == before, "export and export-model must leave storage byte-for-byte unchanged"
    model = rest.load_model(tmp_path / "m.pt")

    state = selected_epoch_state(trial)
    settings = TrainSettings.from_dict(state["settings"])
    spec = get_dataset_spec(settings.dataset)
    reference = build_model(
        settings.model or spec.default_model, spec.num_classes, spec.image_size, settings.width, stem=settings.stem
    )
    reference.load_state_dict(checkpoint_weights(state))
    x = to_input(load_dataset(settings.dataset, settings.conflict_pct).test.images[:512], spec)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    dense_bytes = 4 * sum(p.numel() for p in reference.parameters())
    assert (tmp_path / "m.pt").stat().st_size <= settings.density * dense_bytes + 0.1 * dense_bytes
    again = cli("export-model", str(storage / "smoke"), "--cell", cell, "--out", str(tmp_path / "m.pt"))
    assert again.returncode == 2 and "already exists" in again.stderr


def checkpoint_weights(state: dict) -> dict:
    """The best-epoch weights a checkpoint holds: a training state's, or a compacted trial's bitmap + values."""
    import numpy as np

    if "best_weights" in state:
        return state["best_weights"]["model"]
    saved = state["model_file"]
    weights = dict(saved["dense"])
    for name, part in saved["sparse"].items():
        n = int(np.prod(part["shape"]))
        mask = torch.from_numpy(np.unpackbits(part["bitmap"].numpy())[:n].astype(bool))
        flat = torch.zeros(n, dtype=part["values"].dtype)
        flat[mask] = part["values"]
        weights[name] = flat.reshape(part["shape"])
    return weights


class _Payload:
    """Unpickling this would create a file: a stand-in for code a crafted model file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_model_file_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    import rest
    from rest.deploy.model_file import MODEL_FORMAT, ModelFileError

    marker = tmp_path / "code-ran"
    torch.save({"format": MODEL_FORMAT, "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="is not a plain rest-tune model file"):
        rest.load_model(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.xdist_group("smoke_study")
def test_export_model_writes_the_reported_epoch_or_refuses_with_the_retrain_command(smoke_study, tmp_path, capsys):
    """A damaged checkpoint never turns into another epoch's weights under the selected config's name."""
    import shlex

    from rest.api import selected_trial
    from rest.cli.main import main
    from rest.deploy.model_file import read_model_file
    from rest.report.export import read_for_export
    from rest.settings import TrainSettings
    from rest.storage import local
    from rest.study.contract import COMPACT_FILE, STATE_FILE, checkpoint_dirs

    def command(*args):  # in-process, as the command line runs it (saves the imports of a subprocess)
        status = main(["-q", *args])
        return status, capsys.readouterr().err

    storage, run = smoke_study
    assert run.returncode == 0, run.stderr[-2000:]
    study_dir = tmp_path / "smoke"
    shutil.copytree(storage / "smoke", study_dir)  # the shared study stays intact
    study = read_for_export(local(study_dir))
    trial = selected_trial(study, "colored_digits:5")
    reported = int(study.trials().set_index("trial_id").loc[trial.trial_id, "best_epoch"])
    assert (
        command("export-model", str(study_dir), "--cell", "colored_digits:5", "--out", str(tmp_path / "good.pt"))[0]
        == 0
    )
    assert read_model_file(tmp_path / "good.pt")["epoch"] == reported

    for ckpt in checkpoint_dirs(trial.location):  # truncate every checkpoint holding the selected epoch
        state = next((p for p in (Path(ckpt.path) / COMPACT_FILE, Path(ckpt.path) / STATE_FILE) if p.exists()), None)
        if state is not None and torch.load(state, weights_only=False, map_location="cpu")["epoch"] >= reported:
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    status, err = command(
        "export-model", str(study_dir), "--cell", "colored_digits:5", "--out", str(tmp_path / "bad.pt")
    )
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"trial {trial.trial_id}'s selected epoch {reported}, the one the tables report" in err
    assert not (tmp_path / "bad.pt").exists()

    # the advice works: its train command retrains the config with the trial's stored settings
    retrain = shlex.split(err.split("stored settings: ")[1].split(" ; then:")[0])
    assert retrain[:2] == ["tune_search.py", "train"] and retrain[-2] == "--out"
    assert command(*retrain[1:-1], str(tmp_path / "retrain"))[0] == 0
    stored = {k: v for k, v in trial.config.items() if k != "extra"}
    assert json.loads((tmp_path / "retrain" / "settings.json").read_text()) == TrainSettings.from_dict(stored).to_dict()
    assert command("export-model", str(tmp_path / "retrain"), "--out", str(tmp_path / "retrained.pt"))[0] == 0
    last = json.loads((tmp_path / "retrain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert read_model_file(tmp_path / "retrained.pt")["epoch"] == last["best_epoch"]


RAY_ERROR = """Failure # 1 (occurred at 2026-12-01_12-34-22)
\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=9254, ip=192.0.2.2, repr=rest_trainable)
  File "rest/core/data/folder.py", line 55, in split_files
    raise DataError(f"data root {root} does not exist; pass --data-root")
rest.core.data.base.DataError: data root /gone does not exist; pass --data-root pointing at an LfF-layout dataset
"""


def _fail_trials(study, phase, pct=None):
    """Make the `phase` trials of the `pct` cell (all: None) end as Ray records a trial that failed
    before its first epoch."""
    state = next((study / phase).glob("experiment_state-*.json"))
    data = json.loads(state.read_text())
    failed = []
    for entry in data["trial_data"]:
        trial, meta = json.loads(entry[0]), json.loads(entry[1])
        if pct is None or trial["config"].get("cfg", trial["config"])["conflict_pct"] == pct:
            trial["status"] = "ERROR"
            meta.update(num_failures=3, error_filename="error.txt")
            entry[0], entry[1] = json.dumps(trial), json.dumps(meta)
            folder = study / phase / f"trial_{trial['trial_id']}"
            shutil.rmtree(folder)
            folder.mkdir()
            (folder / "error.txt").write_text(RAY_ERROR * 2)  # every retry appends a block
            failed.append(trial["trial_id"])
    state.write_text(json.dumps(data))
    return failed


def test_failed_trials_are_counted_per_cell_and_their_cell_kept(tmp_path):
    """Every table says how many configs of a cell failed; a cell whose every config failed keeps its row."""
    from rest import load_study
    from rest.study.manifest import is_complete

    study = tmp_path / "failed"
    shutil.copytree(FIXTURE, study)
    failed = _fail_trials(study, "confirm", 5)
    assert len(failed) == 3  # the 5 % cell's selected config and both baselines
    manifest = json.loads((study / "manifest.json").read_text())
    manifest["phases"]["confirm"]["errors"] = 3  # as studies before failed phases recorded it: "done" with errors
    (study / "manifest.json").write_text(json.dumps(manifest))
    assert not is_complete(manifest), "a phase with failed trials is never complete"

    results = load_study(str(study))
    results.export(tmp_path / "out", formats=("md", "csv"))
    best = pd.read_csv(tmp_path / "out" / "best_configs.csv")
    lost = best[best["conflict_pct"] == 5]
    assert list(lost["row"]) == ["REST (selected)"] and lost["best_test_worst_group_acc"].isna().all()
    assert lost["status"].iloc[0] == "failed: no config of this cell finished an epoch"
    assert lost["failed"].iloc[0] == "confirm: 3 of 3 configs failed"
    assert best[best["conflict_pct"] == 1]["failed"].fillna("").eq("").all()
    for name in ("best_configs.md", "paper_table.md", "paper_table.csv", "trials.csv", "summary.md"):
        assert "confirm: 3 of 3 configs failed" in (tmp_path / "out" / name).read_text(), name
    trials = pd.read_csv(tmp_path / "out" / "trials.csv").set_index("trial_id")
    assert (
        trials.loc[failed, "error"] == "DataError: data root /gone does not exist; pass --data-root pointing at an "
        "LfF-layout dataset"
    ).all()
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert (
        "## Failed trials" in summary
        and "fix the cause, then: tune_search.py resume smoke --storage studies" in summary
    )


def test_a_study_whose_every_trial_failed_still_exports_every_cell(tmp_path):
    from rest import load_study

    study = tmp_path / "all_failed"
    shutil.copytree(FIXTURE, study)
    for phase in ("search", "confirm"):
        _fail_trials(study, phase)
    out = tmp_path / "out"
    written = load_study(str(study)).export(out, formats=("md", "csv"))
    assert "accuracy_vs_density.png" not in {p.name for p in written}  # nothing to plot
    best = pd.read_csv(out / "best_configs.csv")
    assert list(best["conflict_pct"]) == [1, 5] and best["best_test_worst_group_acc"].isna().all()
    assert list(best["failed"]) == ["search: 4 of 4 configs failed; confirm: 3 of 3 configs failed"] * 2
    density = pd.read_csv(out / "by_density.csv")
    assert len(density) == 4 and (density["failed"] == best["failed"].iloc[0]).all()
    assert "search: 4 of 4 configs failed" in (out / "paper_table.md").read_text()


def _copy_without(study: Path, dest: Path, pattern: str) -> Path:
    shutil.copytree(study, dest)
    for path in dest.glob(pattern):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return dest


@pytest.mark.xdist_group("smoke_study")
def test_trials_send_ray_a_few_keys_and_the_reader_takes_every_record_from_the_history_file(smoke_study, tmp_path):
    """Ray's snapshot stays small (slim reports); the tables come whole from each trial's history.json,
    and, for a study without it (older ones), from Ray's records and the checkpoints, equally."""
    from rest.report.results import read_study
    from rest.storage import local
    from rest.study.contract import REPORTED

    study = smoke_study[0] / "smoke"
    for trial in study.glob("*/trial_*"):
        history = json.loads((trial / "history.json").read_text())
        sent = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert {r["epoch"] for r in sent} == {r["epoch"] for r in history}
        assert {"train_loss", "test_worst_group_acc", "nonzero_params", "epoch_seconds"} <= set(history[-1])
        assert not any(k.startswith(("test_", "train_")) for r in sent for k in r), "only REPORTED goes to Ray"
        assert set(REPORTED) - {"restore_seconds"} <= set(sent[-1])
    for phase in ("search", "confirm"):
        (snapshot,) = (study / phase).glob("experiment_state-*.json")
        per_trial = snapshot.stat().st_size / len(list((study / phase).glob("trial_*")))
        assert per_trial <= SNAPSHOT_BYTES_PER_TRIAL, f"{phase}: {per_trial:.0f} bytes per trial"

    full = read_study(local(study)).trials()
    assert full["best_test_worst_group_acc"].notna().all()
    history_only = read_study(local(_copy_without(study, tmp_path / "compacted", "*/trial_*/checkpoint_*"))).trials()
    older = read_study(local(_copy_without(study, tmp_path / "older", "*/trial_*/history.json"))).trials()
    pd.testing.assert_frame_equal(history_only, full)
    pd.testing.assert_frame_equal(older, full)
