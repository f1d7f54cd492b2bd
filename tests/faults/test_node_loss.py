"""A whole node lost mid-study (its raylet killed, as a spot instance or the OOM killer would).

A cluster of its own: a head with no CPUs (it runs no trial) and two 1-CPU worker
nodes. The node running the trial is removed after its first checkpoint; the
trial must finish on the other node from that checkpoint (shared storage), train
no finished epoch twice, and end with the metrics of an uninterrupted run.
"""

import json

import pytest

from conftest import cli, wait_for
from helpers import S4, driver, write_s4


@pytest.fixture(scope="module")
def lossy_cluster():
    from ray.cluster_utils import Cluster

    # Fast node-death detection (Ray's defaults take ~15 s to declare a node dead).
    fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 2, "health_check_timeout_ms": 500}
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": fast},
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def test_losing_the_node_of_a_running_trial(lossy_cluster, tmp_path):
    cluster, workers = lossy_cluster
    space = write_s4(
        tmp_path / "n.yaml",
        name="n",
        train={**S4["train"], "epochs": 3},
        search={"density": {"grid": [0.05]}},
        scheduler={"type": "none"},
        confirm=None,
    )
    addr = ["--address", cluster.address]
    straight = cli("run", str(space), "--storage", str(tmp_path / "a"), *addr)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = driver(["run", str(space), "--storage", str(tmp_path / "b"), *addr, "--max-failures", "3"])
    experiment = tmp_path / "b" / "n" / "search"

    def node_after_first_checkpoint():
        for trial in experiment.glob("trial_*"):
            lines = (trial / "result.json").read_text().splitlines() if (trial / "result.json").exists() else []
            if lines and list(trial.glob("checkpoint_*/history.json")) and json.loads(lines[-1])["epoch"] < 3:
                return json.loads(lines[-1])["node_id"]
        return None

    node_id = wait_for(node_after_first_checkpoint, 180, "the first checkpoint")
    (victim,) = [w for w in workers if w.node_id == node_id]
    cluster.remove_node(victim, allow_graceful=False)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]

    (trial,) = experiment.glob("trial_*")
    raw = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    epochs = [r["epoch"] for r in raw]
    assert len(epochs) == len(set(epochs)), f"an epoch was trained twice: {epochs}"
    # an epoch finished on the lost node may never have reached the driver; its checkpoint kept it
    from rest.report.results import read_study
    from rest.storage import local

    (kept,) = read_study(local(tmp_path / "b" / "n")).all_trials()
    assert [r["epoch"] for r in kept.history] == [1, 2, 3] and kept.status == "TERMINATED"
    survivors = {r["node_id"] for r in raw if r["epoch"] > 1} - {node_id}
    assert survivors, "the trial must have moved to the surviving node"
    moved = [r for r in raw if r["node_id"] != node_id]
    assert min(r["resumed_from_epoch"] for r in moved) >= 1, "it resumed from its checkpoint, not from epoch 0"
    (ref_trial,) = (tmp_path / "a" / "n" / "search").glob("trial_*")
    reference = json.loads((ref_trial / "history.json").read_text())[-1]  # Ray gets only a few keys
    for key in ("train_loss", "val_worst_group_acc", "val_loss", "best_epoch", "best_test_worst_group_acc"):
        assert kept.history[-1][key] == reference[key], key
