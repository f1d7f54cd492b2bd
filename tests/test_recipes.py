"""The shipped cluster recipes: the `ray up` file passes Ray's own validation; the sbatch script parses."""

import subprocess

import yaml

from conftest import ROOT

RECIPES = ROOT / "docs" / "recipes"


def test_ray_up_file_passes_rays_cluster_config_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` runs first

    config = yaml.safe_load((RECIPES / "ray-cluster-aws.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any schema error
    assert config["docker"]["image"].startswith("rayproject/ray:2.60")
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert all(
        "RAY_AUTH_MODE=token" in c
        for c in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]
    )


def test_sbatch_script_is_valid_bash_and_starts_head_workers_and_the_study():
    script = RECIPES / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for needle in (
        "ray get-auth-token --generate",
        "start --head",
        "start --address",
        "tune_search.py run",
        "tune_search.py resume",
    ):
        assert needle in text.replace("$RAY ", "ray ")
