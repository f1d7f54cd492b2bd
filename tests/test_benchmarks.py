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
