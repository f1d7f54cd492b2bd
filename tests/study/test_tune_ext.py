"""Contract test: every Ray internal rest.study.tune_ext and rest.study.trials rely on, and every Ray file
name in rest.study.contract, exists in the installed Ray."""

import signal

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler

from rest.storage import local
from rest.study import contract, trials, tune_ext


def test_asha_bookkeeping_is_where_tune_ext_looks():
    asha = AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=4, grace_period=1)

    class FakeTrial:  # only the id is read
        trial_id = "t1"

    assert not tune_ext.asha_knows(asha, FakeTrial())
    assert tune_ext.asha_stopped(asha) == 0
    tune_ext.asha_forget(asha, FakeTrial())


def test_restorable_needs_the_tuner_file_and_a_snapshot(tmp_path):
    loc = local(tmp_path)
    assert not tune_ext.experiment_restorable(loc.fs, loc.path)
    (tmp_path / tune_ext.TUNER_FILE).write_bytes(b"x")
    assert not tune_ext.experiment_restorable(loc.fs, loc.path)
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert tune_ext.experiment_restorable(loc.fs, loc.path)


def test_tune_still_stops_gracefully_on_sigusr1_and_reads_our_env_switch():
    import inspect

    from ray.tune import tune as tune_module

    source = inspect.getsource(tune_module._setup_signal_catching)
    assert "SIGUSR1" in source and "TUNE_DISABLE_SIGINT_HANDLER" in source
    assert signal.SIGUSR1


def test_trial_storage_reaches_the_trial_directory(ray_cluster, tmp_path):
    from ray import tune

    def trainable(config):
        fs, path = tune_ext.trial_storage()
        tune.report({"path": path, "fs": type(fs).__name__})

    tuner = tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=str(tmp_path), name="x", verbose=0))
    (result,) = tuner.fit()
    assert result.metrics["path"] == str(result.path) and result.metrics["fs"] == "LocalFileSystem"


def test_the_address_ray_start_leaves_is_where_tune_ext_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # Ray's temp directory, as `ray start` and ray.init() find it
    assert tune_ext.current_cluster_address() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.1:6379\n")
    assert tune_ext.current_cluster_address() == "10.0.0.1:6379"


def test_a_snapshot_guard_runs_before_every_experiment_snapshot_and_can_prevent_it(ray_cluster, tmp_path):
    from ray import tune

    class Refused(BaseException):
        pass

    def trainable(config):
        tune.report({"x": 1})

    def snapshots(name: str) -> list[str]:
        return sorted(p.name for p in (tmp_path / name).glob(f"{contract.STATE_PREFIX}*.json"))

    seen = []  # the snapshots on storage at each call of the guard
    with tune_ext.guard_snapshots(lambda: seen.append(snapshots("ok"))):
        tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=str(tmp_path), name="ok", verbose=0)).fit()
    assert seen and seen[0] == [] and snapshots("ok"), "called before the first snapshot, which then reached storage"

    def refuse():
        raise Refused()

    # A trial that can never start (no node has 1000 CPUs): the guard stops fit() before any actor exists.
    unstartable = tune.with_resources(trainable, {"cpu": 1000})
    with pytest.raises(Refused), tune_ext.guard_snapshots(refuse):
        tune.Tuner(unstartable, run_config=tune.RunConfig(storage_path=str(tmp_path), name="refused", verbose=0)).fit()
    assert (tmp_path / "refused" / tune_ext.TUNER_FILE).exists() and not snapshots("refused"), "no snapshot written"


def test_the_snapshot_guard_runs_again_in_the_upload_thread_and_a_refusal_there_skips_the_upload(ray_cluster, tmp_path):
    import threading

    from ray import tune

    def trainable(config):
        tune.report({"x": 1})

    def refuse_uploads():
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("lock lost")

    # fit() then finds no snapshot on storage to build its results from.
    with pytest.raises(ValueError, match="No experiment snapshot"), tune_ext.guard_snapshots(refuse_uploads):
        tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=str(tmp_path), name="kept", verbose=0)).fit()
    assert not list((tmp_path / "kept").glob(f"{contract.STATE_PREFIX}*.json")), "saved, never uploaded"


def test_ray_writes_trial_errors_where_tune_ext_reads_them():
    from ray.air.constants import EXPR_ERROR_FILE

    assert contract.TRIAL_ERROR_FILE == EXPR_ERROR_FILE


def test_a_stopped_paused_trial_can_be_marked_for_the_snapshot():
    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController

    assert callable(TuneController._mark_trial_to_checkpoint) and callable(TuneController.stop_trial)
    assert "_tune_controller" in TrialRunnerWrapper.__init__.__code__.co_names


def test_experiment_trials_load_without_their_records_which_come_one_trial_at_a_time(ray_cluster, tmp_path):
    from ray import tune

    def trainable(config):
        tune.report({"epoch": 1, "x": config["x"]})

    tune.Tuner(
        trainable,
        param_space={"x": tune.grid_search([1, 2])},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="e", verbose=0),
    ).fit()
    analysis = trials.experiment_analysis(str(tmp_path / "e"), local(tmp_path).fs)
    assert sorted(t.config["x"] for t in analysis.trials) == [1, 2] and {t.status for t in analysis.trials} == {
        "TERMINATED"
    }
    assert analysis.trial_dataframes == {}, "no trial's records were read"
    trial = analysis.trials[0]
    (tmp_path / "e" / trial.storage.trial_dir_name / "result.json").write_text('{"epoch": 1, "x": 7}\n')
    assert trials.reported_frame(analysis, trial).to_dict("records") == [{"epoch": 1, "x": 7}]
    (tmp_path / "e" / trial.storage.trial_dir_name / "result.json").unlink()
    (tmp_path / "e" / trial.storage.trial_dir_name / "progress.csv").unlink()
    assert trials.reported_frame(analysis, trial).empty


def test_tune_keeps_statistics_of_the_kept_metrics_only():
    from ray.tune.experiment import Trial

    def statistics(result: dict) -> set:
        trial = Trial("fake", stub=True)
        trial.update_last_result(dict(result))
        return set(trial.metric_analysis) & set(result)

    result = {"val_rank": 0.5, "train_loss": 2.0, "time_total_s": 1.0, "training_iteration": 1}
    tune_ext.keep_statistics_only_of(["val_rank"])
    try:
        assert statistics(result) == {"val_rank"}
    finally:
        tune_ext.keep_statistics_only_of(None)
    assert statistics(result) == set(result)


def test_the_guarded_upload_command_pickles_as_ray_pickles_it_with_the_search_state():
    from ray import cloudpickle
    from ray.train._internal.storage import _FilesystemSyncer

    with tune_ext.guard_snapshots(lambda: None):
        command, kwargs = _FilesystemSyncer(storage_filesystem=None)._sync_up_command(local_path="/a", uri="/b")
    assert callable(cloudpickle.loads(cloudpickle.dumps(command)))
