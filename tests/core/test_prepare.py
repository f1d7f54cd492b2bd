"""prepare-data: building Colored MNIST / Corrupted CIFAR-10 from fake raw files, and check.

Raw inputs are written by the tests in torchvision's formats (IDX files, pickled
CIFAR batches), so nothing is downloaded. Builds are tiny; the interrupted-build tests
use real subprocesses and real signals.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from rest.cli.main import build_parser, main
from rest.core import prepare
from rest.core.corruptions import CORRUPTION_NAMES, CORRUPTIONS, corrupt
from rest.core.data import DataError, load_dataset
from rest.core.data.folder import list_images, parse_labels
from rest.core.data.protocol import COLOURS, conflict_quota
from rest.errors import UserError

RUN = "import sys; from rest.cli.main import main; sys.exit(main(sys.argv[1:]))"
RATIOS = (1.0, 5.0)


# ------------------------------------------------------------- fake raw data


def write_idx(path: Path, array: np.ndarray) -> None:
    data = (
        b"\0\0\x08"
        + bytes([array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


def fake_mnist(raw: Path, n_train: int = 400, n_test: int = 100, seed: int = 0, gz: bool = False) -> dict:
    """MNIST-shaped IDX files (random digits: the builder never looks at content)."""
    rng = np.random.default_rng(seed)
    folder = raw / "MNIST" / "raw"
    folder.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out[prefix] = (images, labels)
    return out


def fake_cifar(raw: Path, per_batch: int = 40, n_test: int = 50, seed: int = 0) -> dict:
    """cifar-10-batches-py as torchvision unpacks it: pickled dicts of b'data', b'labels'."""
    rng = np.random.default_rng(seed)
    folder = raw / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(n) % 10)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
        if name != "test_batch":
            train.append((data, labels))
    images = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return {"train": (images, np.concatenate([labels for _, labels in train]))}


@pytest.fixture(scope="module")
def mnist_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("mnist-raw")
    return raw, fake_mnist(raw)


@pytest.fixture(scope="module")
def cmnist_tree(tmp_path_factory, mnist_raw):
    out = tmp_path_factory.mktemp("built") / "cmnist"
    prepare.build("cmnist", mnist_raw[0], out, ratios=RATIOS, seed=3, workers=2)
    return out


@pytest.fixture(scope="module")
def cifar_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cifar-raw")
    return raw, fake_cifar(raw)


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory, cifar_raw):
    out = tmp_path_factory.mktemp("built") / "cifar10c"
    prepare.build("cifar10c", cifar_raw[0], out, ratios=RATIOS, seed=0, severity=3, workers=2)
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != prepare.MANIFEST
    }


def cli(*args: str) -> int:
    """The command's handler, called as the main command line calls it (errors propagate)."""
    parsed = build_parser().parse_args(list(args))
    return parsed.handler(parsed)


# ----------------------------------------------------------------- raw input


def test_idx_reader_handles_gzip_and_rejects_truncation(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", a)
    write_idx(tmp_path / "a-idx3-ubyte.gz", a)
    assert np.array_equal(prepare.read_idx(tmp_path / "a-idx3-ubyte"), a)
    assert np.array_equal(prepare.read_idx(tmp_path / "a-idx3-ubyte.gz"), a)
    (tmp_path / "b").write_bytes((tmp_path / "a-idx3-ubyte").read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        prepare.read_idx(tmp_path / "b")


def test_gzipped_mnist_reads_like_plain(tmp_path):
    written = fake_mnist(tmp_path / "gz", n_train=20, n_test=10, gz=True)
    raw = prepare.load_mnist(tmp_path / "gz")
    assert np.array_equal(raw["train"][0], written["train"][0]) and np.array_equal(raw["test"][1], written["t10k"][1])


@pytest.mark.parametrize(
    "dataset, hint",
    [
        ("cmnist", "python -c \"import torchvision; torchvision.datasets.MNIST('{raw}', download=True)\""),
        ("cifar10c", "python -c \"import torchvision; torchvision.datasets.CIFAR10('{raw}', download=True)\""),
    ],
)
def test_missing_raw_files_print_the_download_instruction(tmp_path, capsys, dataset, hint):
    raw = tmp_path / "empty"
    raw.mkdir()
    assert main(["prepare-data", dataset, "--raw", str(raw), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert hint.format(raw=raw) in err
    assert not (tmp_path / "out").exists()


def test_cifar_batches_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle calling os.system
    with pytest.raises(DataError, match="not a CIFAR-10 batch"):
        prepare.read_cifar_batch(folder / "data_batch_1")


@pytest.mark.parametrize(
    "text, message",
    [("a,b", "not a comma-separated"), ("0,1", r"outside \(0, 100\)"), ("1,1.0", "repeats"), ("100", "outside")],
)
def test_bad_ratios_are_user_errors(text, message):
    with pytest.raises(UserError, match=message):
        prepare.parse_ratios(text)


# ------------------------------------------------------------------- cmnist


def test_cmnist_tree_has_the_lff_layout_and_loads(cmnist_tree, monkeypatch, tmp_path):
    monkeypatch.setenv("REST_TUNE_CACHE", str(tmp_path / "cache"))
    assert sorted(p.name for p in cmnist_tree.iterdir()) == ["1pct", "5pct", prepare.MANIFEST, "test"]
    assert all(p.parent.name == "valid" for p in list_images(cmnist_tree / "5pct" / "valid"))  # flat, as LfF
    for pct in RATIOS:
        data = load_dataset("cmnist", pct, str(cmnist_tree))
        assert (len(data.train), len(data.valid), len(data.test)) == (360, 40, 100)
        assert data.train.images.shape[1:] == (3, 28, 28)
    assert (data.test.y != data.test.b).float().mean() > 0.7  # unbiased test: ~90 % conflicting


def test_cmnist_quotas_are_exact_per_class_in_train_and_valid(cmnist_tree):
    for pct in RATIOS:
        for split, folders in (("train", ["align", "conflict"]), ("valid", ["valid"])):
            labels = [parse_labels(p) for f in folders for p in list_images(cmnist_tree / f"{pct:g}pct" / f)]
            sizes, conflicting = Counter(y for y, _ in labels), Counter(y for y, b in labels if y != b)
            assert all(conflicting[c] == conflict_quota(n, pct) for c, n in sizes.items()), (pct, split)


def test_cmnist_names_encode_the_raw_label_and_the_colour(cmnist_tree, mnist_raw):
    raw_y = mnist_raw[1]["train"][1]
    files = list_images(cmnist_tree / "5pct")
    for path in files:
        y, b = parse_labels(path)
        assert y == raw_y[int(path.name.split("_")[0])]  # id = index in the raw split
        group = path.relative_to(cmnist_tree / "5pct").parts[0]
        assert group == "valid" or (group == "align") == (y == b) and path.parent.name == str(y)
    # b is the colour: the brightest pixel's hue is nearest to COLOURS[b]
    for path in files[:80]:
        rgb = np.asarray(Image.open(path), dtype=float).reshape(-1, 3)
        top = rgb[rgb.sum(1).argmax()]
        nearest = np.linalg.norm(top / top.max() - COLOURS / COLOURS.max(1, keepdims=True), axis=1).argmin()
        assert nearest == parse_labels(path)[1]


def test_cmnist_colour_noise_is_lffs(cmnist_tree):
    """LfF's Colored MNIST colour noise: std 0.005 of full scale around the bias colour
    (the embedded colored_digits keeps 0.02)."""
    white = np.full((2, 2), 255, dtype=np.uint8)
    rendered = np.stack([prepare.render_cmnist(white, 3, np.random.default_rng(i), 4)[0, 0] for i in range(3000)])
    channels = rendered[:, 1:].astype(float)  # COLOURS[3] = (0, 130, 200): channels 1, 2 are far from clipping
    assert channels.mean(0) == pytest.approx(COLOURS[3, 1:], abs=0.5)
    assert channels.std(0) == pytest.approx([0.005 * 255] * 2, rel=0.25, abs=0.3)
    assert json.loads((cmnist_tree / prepare.MANIFEST).read_text())["format_version"] == 2  # trees can be told apart


def test_subsample_of_a_built_tree_is_a_stratified_seeded_sample_recorded_per_epoch(cmnist_tree, tmp_path, monkeypatch):
    """The tree lists its files aligned-first and class by class: `subsample` must not take the first N."""
    from rest.core.train import Trainer
    from rest.settings import TrainSettings

    monkeypatch.setenv("REST_TUNE_CACHE", str(tmp_path / "cache"))
    full = load_dataset("cmnist", 5.0, str(cmnist_tree))
    assert set(full.train.y[:30].tolist()) == {0}  # what the first 30 would be
    settings = dict(
        dataset="cmnist", conflict_pct=5.0, data_root=str(cmnist_tree), subsample=30, epochs=1, batch_size=32
    )
    runs = [Trainer(TrainSettings(**settings, seed=seed)).data for seed in (1, 2)]
    for split in ("train", "valid", "test"):
        part, whole = getattr(runs[0], split), getattr(full, split)
        assert len(part) == 30 and set(part.y.tolist()) == set(whole.y.tolist()) == set(range(10)), split
        assert abs(int(part.conflicting.sum()) - 30 * float(whole.conflicting.float().mean())) <= 1, split
        assert torch.equal(part.images, getattr(runs[1], split).images), (
            "the sample must not depend on the training seed"
        )
    assert int(runs[0].train.conflicting.sum()) == 2  # 20 of 360 conflicting: 1.7 of 30
    args = [
        "-q",
        "train",
        *[f"--{k.replace('_', '-')}={v}" for k, v in settings.items()],
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {k: v for k, v in record.items() if k.startswith("data_")} == runs[0].describe()
    assert record["data_subsample_seed"] == 0 and record["data_train_conflicting"] == 2


def test_images_aligned_at_several_ratios_are_written_once_and_linked(cmnist_tree):
    one = {p.name: p for p in list_images(cmnist_tree / "1pct" / "align")}
    five = {p.name: p for p in list_images(cmnist_tree / "5pct" / "align")}
    shared = set(one) & set(five)
    assert len(shared) > 300 and all(os.path.samefile(one[n], five[n]) for n in shared)


def test_plan_quotas_exact_at_full_mnist_size():
    """The quota arithmetic at MNIST's real class sizes, without rendering anything."""
    rng = np.random.default_rng(0)
    labels = {"train": rng.integers(0, 10, 60000), "test": rng.integers(0, 10, 10000)}
    plan = prepare.make_plan(prepare.RECIPES["cmnist"], labels, (0.5, 5.0), seed=0)
    files = [(rel, *parse_labels(Path(rel))) for paths in plan.values() for rel in paths]
    for pct in (0.5, 5.0):
        for valid in (False, True):
            mine = [(y, b) for rel, y, b in files if rel.startswith(f"{pct:g}pct/") and ("/valid/" in rel) == valid]
            sizes, conflicting = Counter(y for y, _ in mine), Counter(y for y, b in mine if y != b)
            assert all(conflicting[c] == conflict_quota(n, pct) > 0 for c, n in sizes.items()), (pct, valid)
            assert abs(len(mine) - (6000 if valid else 54000)) <= 10
    test = [(y, b) for rel, y, b in files if rel.startswith("test/")]
    assert len(test) == 10000 and 0.87 < np.mean([y != b for y, b in test]) < 0.93


def test_same_seed_same_tree_whatever_the_workers(tmp_path, mnist_raw, cmnist_tree):
    again = prepare.build("cmnist", mnist_raw[0], tmp_path / "again", ratios=RATIOS, seed=3, workers=1)
    assert tree_bytes(again.out) == tree_bytes(cmnist_tree)
    other = prepare.build("cmnist", mnist_raw[0], tmp_path / "other", ratios=RATIOS, seed=4, workers=1)
    assert tree_bytes(other.out) != tree_bytes(cmnist_tree)


def test_existing_out_is_refused_unless_force(tmp_path, mnist_raw, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["prepare-data", "cmnist", "--raw", str(mnist_raw[0]), "--out", str(out), "--ratios", "5"]
    assert main(args) == 2
    assert "already exists and is not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert cli(*args, "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "5pct" / "align").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cli_build_and_check_in_a_subprocess(tmp_path, mnist_raw):
    out = tmp_path / "c"
    args = [
        "prepare-data",
        "cmnist",
        "--raw",
        str(mnist_raw[0]),
        "--out",
        str(out),
        "--ratios",
        "0.5,2",
        "--seed",
        "1",
        "--workers",
        "2",
    ]
    run = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"built cmnist at 0.5, 2% conflicting in {out}") and run.stdout.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["0.5pct", "2pct", prepare.MANIFEST, "test"]


# ------------------------------------------------------------------ cifar10c


def test_cifar10c_tree_loads_and_names_the_corruption_applied(cifar_tree, cifar_raw, monkeypatch, tmp_path):
    monkeypatch.setenv("REST_TUNE_CACHE", str(tmp_path / "cache"))
    data = load_dataset("cifar10c", 5.0, str(cifar_tree))
    assert (len(data.train), len(data.valid), len(data.test)) == (180, 20, 50)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert all(
        p.parent.name == str(parse_labels(p)[0]) for p in list_images(cifar_tree / "5pct" / "valid")
    )  # <y>/ subfolders
    images = cifar_raw[1]["train"][0]
    for path in list_images(cifar_tree / "5pct")[::7]:
        i, (_, b) = int(path.name.split("_")[0]), parse_labels(path)
        expected = corrupt(images[i], b, 3, prepare.render_rng(0, "train", i, b))
        assert np.array_equal(np.asarray(Image.open(path)), expected), path


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 5])
def test_every_corruption_changes_the_image_and_keeps_shape_and_dtype(name, severity):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = CORRUPTIONS[name](image, severity, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.array_equal(out, CORRUPTIONS[name](image, severity, np.random.default_rng(1)))  # seeded: reproducible


def test_corruption_order_is_lff_type0():
    assert CORRUPTION_NAMES == (
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "spatter",
        "elastic",
        "jpeg",
        "pixelate",
        "saturate",
    )


# -------------------------------------------------------------- interruption


def _start_build(raw: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    # Ctrl-C's default action, as in a terminal: a test worker may run with SIGINT ignored,
    # and an ignored signal stays ignored in a child process.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN,
            "-q",
            "prepare-data",
            "cmnist",
            "--raw",
            str(raw),
            "--out",
            str(out),
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    partial = out.parent / f".{out.name}.partial-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (partial / "test" / "0").is_dir() or not any((partial / "test" / "0").iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the build never started writing"
        time.sleep(0.02)
    return proc, partial


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory):
    """Enough images that a build is still running when the test interrupts it."""
    raw = tmp_path_factory.mktemp("big-raw")
    fake_mnist(raw, n_train=4000, n_test=500)
    return raw


def test_ctrl_c_mid_build_leaves_nothing(tmp_path, big_raw):
    out = tmp_path / "out"
    proc, partial = _start_build(big_raw, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert not out.exists() and not partial.exists()


def test_sigkill_mid_build_leaves_nothing_at_out_and_the_next_build_cleans_up(tmp_path, big_raw, mnist_raw):
    out = tmp_path / "out"
    proc, partial = _start_build(big_raw, out)
    proc.kill()
    proc.communicate(timeout=30)
    assert not out.exists() and partial.exists()  # only the hidden sibling, which nothing reads
    time.sleep(0.3)  # the orphaned workers die with their parent (PR_SET_PDEATHSIG)
    assert cli("prepare-data", "cmnist", "--raw", str(mnist_raw[0]), "--out", str(out), "--ratios", "5") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------- check


def test_check_passes_built_trees(cmnist_tree, cifar_tree, capsys):
    assert cli("prepare-data", "check", str(cmnist_tree), "--dataset", "cmnist") == 0
    table = capsys.readouterr().out
    assert "5pct/train" in table and "conflict" in table and "no problems" in table
    report = prepare.check_tree(cifar_tree, "cifar10c", workers=1)
    assert not report.problems and report.images == 2 * 200 + 50
    rows = {(r["split"], r["group"]): r for r in report.rows}
    assert rows[("5pct/train", "conflict")]["images"] == 10 and rows[("5pct/train", "conflict")]["0"] == 1


def _plant_malformed(root: Path) -> None:
    shutil.copy(next((root / "5pct" / "align" / "3").iterdir()), root / "5pct" / "align" / "3" / "no-labels.png")


def _plant_unreadable(root: Path) -> None:
    (root / "5pct" / "conflict" / "2" / "90001_2_7.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _plant_duplicate(root: Path) -> None:
    source = next((root / "1pct" / "align" / "4").iterdir())
    shutil.copy(source, root / "test" / "4" / "90002_4_4.png")


def _plant_wrong_group(root: Path) -> None:
    source = next((root / "5pct" / "align" / "6").iterdir())
    Image.open(source).rotate(90).save(root / "5pct" / "align" / "6" / "90003_6_1.png")


def _plant_out_of_range(root: Path) -> None:
    Image.new("RGB", (28, 28), (9, 9, 9)).save(root / "test" / "1" / "90004_1_12.png")


DEFECTS = {
    "malformed name": _plant_malformed,
    "unreadable image": _plant_unreadable,
    "duplicate across splits": _plant_duplicate,
    "wrong group": _plant_wrong_group,
    "label out of range": _plant_out_of_range,
}


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_check_finds_each_planted_defect(kind, cmnist_tree, tmp_path, capsys):
    root = tmp_path / "tree"
    shutil.copytree(cmnist_tree, root)
    DEFECTS[kind](root)
    report = prepare.check_tree(root, "cmnist", workers=1)
    assert {p.kind for p in report.problems} == {kind}  # a train image aligned at both ratios duplicates twice
    assert main(["prepare-data", "check", str(root), "--dataset", "cmnist", "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    n = len(report.problems)
    assert kind in out and err.count("\n") == 1 and err.startswith(f"error: check found {n} problem")
    assert err.strip().endswith(f"in {root}: {n} {kind}")


def test_check_finds_a_mislabelled_ratio_folder(cmnist_tree, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(cmnist_tree, root)
    (root / "1pct").rename(root / "20pct")
    assert [p.kind for p in prepare.check_tree(root, workers=1).problems] == ["conflict ratio"]


def test_check_reads_a_bffhq_shaped_tree(tmp_path):
    """BFFHQ: one ratio folder, valid/ and test/ flat at the root, two classes."""
    rng = np.random.default_rng(0)
    spec = {
        "0.5pct/align": lambda k: (k % 2, k % 2),
        "0.5pct/conflict": lambda k: (k % 2, 1 - k % 2),
        "valid": lambda k: (k % 2, k // 2 % 2),
        "test": lambda k: (k % 2, k // 2 % 2),
    }
    for k in range(200):
        for folder, labels in spec.items():
            if folder.endswith("conflict") and k >= 2:
                continue
            y, b = labels(k)
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / folder / f"{folder[-4:]}{k}_{y}_{b}.png"
            )
    report = prepare.check_tree(tmp_path, "bffhq", workers=1)
    assert not report.problems, report.problems
    assert {r["split"] for r in report.rows} == {"0.5pct/train", "valid", "test"}
    assert any("128x128" in w for w in report.warnings)


def test_check_of_a_missing_directory_is_a_user_error(tmp_path, capsys):
    assert main(["prepare-data", "check", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_importing_the_cli_module_loads_no_numpy():
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, rest.cli.prepare; print('numpy' in sys.modules, 'torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert probe.stdout.strip() == "False False"
