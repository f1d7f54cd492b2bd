"""Contract test: every Ray internal rest.tune_ext relies on exists in the installed Ray."""
import signal

from ray.tune.schedulers import AsyncHyperBandScheduler

from rest import tune_ext
from rest.storage import local


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


def test_a_stopped_paused_trial_can_be_marked_for_the_snapshot():
    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController

    assert callable(TuneController._mark_trial_to_checkpoint) and callable(TuneController.stop_trial)
    assert "_tune_controller" in TrialRunnerWrapper.__init__.__code__.co_names
