"""The GPU packing benchmark's CPU smoke mode, so that the script cannot rot before a GPU runs it."""

import json
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def gpu_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # spawned workers inherit sys.path and import it by name
    import gpu_bench

    yield gpu_bench
    sys.path.remove(str(ROOT / "benchmarks"))


def test_gpu_bench_cpu_smoke_mode_runs_every_row_and_says_it_is_not_gpu_data(gpu_bench, tmp_path):
    assert gpu_bench.main(["--mode", "cpu-smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert report["mode"] == "cpu-smoke" and "not GPU figures" in report["note"]
    smoke = gpu_bench.MODES["cpu-smoke"]
    rows = {(r["workload"], r["precision"], r["trials"]): r for r in report["rows"]}
    assert set(rows) == {(w, p, k) for w in smoke["workloads"] for p in ("fp32", "bf16") for k in smoke["packs"]}
    for (workload, _, trials), row in rows.items():
        _, images, _ = smoke["workloads"][workload]
        size = 28 if workload == "cnn-cmnist" else 32
        assert row["gpus_per_trial"] == 1 / trials and row["placement"] == "device"
        assert row["images_per_s_total"] >= row["images_per_s_per_trial"] > 0
        assert row["data_bytes"] == (images + 32) * (3 * size * size + 16)  # uint8 images, int64 y and b
        assert row["peak_bytes_per_trial"] > row["data_bytes"] and row["predicted_bytes"] > row["data_bytes"]
    markdown = (tmp_path / "gpu_bench.md").read_text()
    assert markdown.startswith("# GPU packing benchmark (cpu-smoke)") and "These are not GPU figures" in markdown


def test_gpu_bench_cuda_mode_without_a_gpu_is_refused(gpu_bench, tmp_path, capsys):
    assert gpu_bench.main(["--mode", "cuda", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --mode cuda needs a CUDA GPU; use --mode cpu-smoke\n"
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def scale_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scale_bench

    yield scale_bench
    sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("search", ["grid", "optuna"])
@pytest.mark.parametrize("trials", [4, 8, 20, 100, 300, 1000, 7])
def test_scale_bench_study_has_exactly_the_trials_asked_for(scale_bench, search, trials):
    import yaml

    from rest.study.space import parse_space

    spec = parse_space(yaml.safe_dump(scale_bench.study_space(trials, search, "s")))
    assert spec.grid_size() == trials and spec.confirm is None and spec.train.epochs == 2
    assert spec.scheduler.type == "asha" and spec.scheduler.mode == "deterministic"


FIGURES = (
    "driver_wall_seconds",
    "bare_tune_wall_seconds",
    "driver_overhead",
    "snapshot_bytes_per_trial",
    "export_seconds",
    "load_study_seconds",
    "bytes_per_finished_trial",
    "largest_trial_bytes",
    "driver_peak_rss_bytes",
)


def test_scale_bench_quick_mode_reports_every_figure_against_its_target(tmp_path):
    import math
    import subprocess

    committed = ROOT / "benchmarks" / "results" / "scale_bench.json"
    before = committed.stat().st_mtime if committed.exists() else None
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scale_bench.py"),
            "--quick",
            "--out",
            str(tmp_path / "scale_bench.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "run grid/local/8 trials" in out.stderr and " s]" in out.stderr  # progress: which run, elapsed
    report = json.loads((tmp_path / "scale_bench.json").read_text())
    assert [(r["trials"], r["search"], r["storage"]) for r in report["runs"]] == [
        (4, "grid", "local"),
        (8, "grid", "local"),
    ]
    for run in report["runs"]:
        assert all(math.isfinite(run[k]) and run[k] > 0 for k in FIGURES), run
        assert run["finished_trials"] == run["trials"] == run["load_study"]["rows"]
        assert (
            run["largest_trial_bytes"] > 0 and run["storage_target"]["target_bytes_per_trial"] > 0
        )  # the mean counts the study's own files too
        assert set(run["verdicts"]) >= {
            "driver_overhead",
            "snapshot_bytes_per_trial",
            "export_seconds",
            "bytes_per_finished_trial",
        }
        assert all(v == "met" or v.startswith("missed by") for k, v in run["verdicts"].items() if k != "note")
    series = report["series"]["grid/local"]
    assert series["sizes"] == [4, 8] and all(
        isinstance(series[k], float) for k in ("export_growth_exponent", "load_study_growth_exponent")
    )
    assert "| grid/local | 8 |" in (tmp_path / "scale_bench.md").read_text()
    assert (tmp_path / "scale_bench.png").stat().st_size > 10_000
    assert (committed.stat().st_mtime if committed.exists() else None) == before


def test_scale_bench_export_only_s3_of_a_non_study_is_refused(scale_bench, tmp_path, capsys):
    out = tmp_path / "out" / "scale_bench.json"
    assert scale_bench.main(["--export-only-s3", str(tmp_path), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {tmp_path} is not a study directory (no manifest.json); pass a study"
    )
    assert not out.parent.exists()
