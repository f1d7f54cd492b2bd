"""Build LfF-layout datasets from torchvision's raw files, and check any LfF tree.

Two builders share one pipeline (``build``), differing only in a ``Recipe``: how
the raw files are read and how one image is rendered with its bias label
(Colored MNIST: the shared colouring of ``rest.data.protocol``; Corrupted
CIFAR-10: corruption number b of ``rest.corruptions``). The pipeline:

1. read the raw training and test images (nothing is written if they are missing);
2. carve a validation set from the training images, per class, with a seeded
   fraction, the same images for every conflict ratio;
3. for every ratio, draw bias labels with exact per-class conflict quotas for
   train and validation; draw unbiased test labels once (test/ is shared);
4. render every distinct (image, bias) pair once, in worker processes, and write
   its PNG to each ratio folder that holds it. The randomness of a render comes
   from (seed, image, bias) alone, so the output does not depend on the number of
   workers, and an image aligned at every ratio is the same picture in each folder;
5. build in a hidden sibling of --out and rename it into place when complete.

``check_tree`` validates any tree in the layout the folder loader reads
(``rest/data/folder.py``), BFFHQ included.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import struct
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image

from .corruptions import CORRUPTION_NAMES, corrupt
from .data import get_dataset_spec
from .data.base import DataError, pct_dirname
from .data.folder import IMAGE_SUFFIXES, parse_labels
from .data.protocol import LFF_COLOUR_JITTER, assign_bias, colourise, conflict_quota
from .errors import UserError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
RawData = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images, labels)

DEFAULT_RATIOS = (0.5, 1.0, 2.0, 5.0)
VALID_FRACTION = 0.1  # of each class's training images
PNG_COMPRESS_LEVEL = 1  # small images: level 1 is ~3x faster to write than 6 and hardly larger
MANIFEST = "prepare.json"
FORMAT_VERSION = 2  # bump when the rendering changes, so trees can be told apart (2: cmnist colour noise 0.005)

# Independent random streams, so changing one step never shifts another's draws.
STREAM_VALID, STREAM_BIAS, STREAM_RENDER = 1, 2, 3
SOURCE_IDS = {"train": 0, "test": 1}
SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}

# Where a file goes, relative to the output root (the folder loader's layout).
LAYOUT = {
    "align": "{pct}/align/{y}/{name}",
    "conflict": "{pct}/conflict/{y}/{name}",
    "valid_flat": "{pct}/valid/{name}",
    "valid_by_class": "{pct}/valid/{y}/{name}",
    "test": "test/{y}/{name}",
}


# ------------------------------------------------------------------- raw data

def download_hint(torchvision_class: str, raw: Path) -> str:
    return f"python -c \"import torchvision; torchvision.datasets.{torchvision_class}('{raw}', download=True)\""


def _missing(what: str, torchvision_class: str, raw: Path, expected: str) -> DataError:
    return DataError(
        f"{what} raw files not found under {raw} (expected {expected}); on a machine with internet run "
        f"{download_hint(torchvision_class, raw)} and copy that directory here"
    )


def _find(candidates: list[Path], name: str) -> Path | None:
    """The first existing file `name` (or `name`.gz) in the candidate folders."""
    for folder in candidates:
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                return path
    return None


IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not.

    Layout: two zero bytes, a type code, the number of dimensions, one big-endian
    uint32 per dimension, then the values in C order.
    """
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({exc}); download it again") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file; download it again")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    payload = data[4 + 4 * ndim :]
    if len(payload) != math.prod(dims) * dtype.itemsize:
        raise DataError(f"{path} is truncated or corrupt ({len(payload)} bytes for shape {dims}); download it again")
    return np.frombuffer(payload, dtype).reshape(dims)


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_mnist(raw: Path) -> RawData:
    """MNIST as torchvision stores it: <raw>/MNIST/raw/*-ubyte[.gz] (raw may also be MNIST/ or MNIST/raw/)."""
    candidates = [raw / "MNIST" / "raw", raw / "raw", raw]
    out = {}
    for split, names in MNIST_FILES.items():
        paths = [_find(candidates, n) for n in names]
        if None in paths:
            raise _missing("MNIST", "MNIST", raw, f"{raw / 'MNIST' / 'raw' / names[0]}[.gz]")
        images, labels = (read_idx(p) for p in paths)
        if images.ndim != 3 or labels.shape != images.shape[:1] or images.dtype != np.uint8:
            raise DataError(f"{paths[0]} and {paths[1]} do not hold matching uint8 images and labels; download them again")
        out[split] = (images, labels.astype(np.int64))
    return out


CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, numpy arrays): a tampered
    file cannot run code."""

    ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch ({exc.__class__.__name__}: {exc}); download it again") from None
    if len(labels) != len(data):
        raise DataError(f"{path} holds {len(data)} images but {len(labels)} labels; download it again")
    return np.ascontiguousarray(data), labels


def load_cifar10(raw: Path) -> RawData:
    """CIFAR-10 as torchvision stores it: <raw>/cifar-10-batches-py/{data_batch_1..5,test_batch}."""
    candidates = [raw / "cifar-10-batches-py", raw]
    out = {}
    for split, names in CIFAR_FILES.items():
        paths = [_find(candidates, n) for n in names]
        if None in paths or any(p.suffix == ".gz" for p in paths):
            raise _missing("CIFAR-10", "CIFAR10", raw, str(raw / "cifar-10-batches-py" / names[0]))
        batches = [_read_cifar_batch(p) for p in paths]
        out[split] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return out


# -------------------------------------------------------------------- recipes

def render_cmnist(grey: np.ndarray, b: int, rng: np.random.Generator, severity: int) -> np.ndarray:
    """One grey digit painted with colour b: the embedded dataset's colouring with LfF's noise."""
    del severity  # --severity is for corruptions; the colour noise is fixed at LfF's 0.005
    return colourise(grey[None], np.array([b]), rng, LFF_COLOUR_JITTER)[0].transpose(1, 2, 0)


def render_cifar10c(image: np.ndarray, b: int, rng: np.random.Generator, severity: int) -> np.ndarray:
    """One CIFAR image with corruption number b."""
    return corrupt(image, b, severity, rng)


@dataclass(frozen=True)
class Recipe:
    """What differs between the datasets prepare-data builds; the pipeline is shared."""

    load_raw: Callable[[Path], RawData]
    render: Callable[[np.ndarray, int, np.random.Generator, int], np.ndarray]  # (source, b, rng, severity) -> H x W x 3
    valid_layout: str  # a LAYOUT key
    num_classes: int
    bias_names: tuple[str, ...]


RECIPES: dict[str, Recipe] = {
    "cmnist": Recipe(load_mnist, render_cmnist, "valid_flat", 10, tuple(f"colour{i}" for i in range(10))),
    "cifar10c": Recipe(load_cifar10, render_cifar10c, "valid_by_class", 10, CORRUPTION_NAMES),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DataError(f"unknown dataset '{name}' for prepare-data; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def parse_ratios(text: str) -> tuple[float, ...]:
    """'0.5,1,2,5' -> (0.5, 1.0, 2.0, 5.0); each strictly between 0 and 100, no repeats."""
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--ratios '{text}' is not a comma-separated list of percentages such as 0.5,1,2,5") from None
    bad = [r for r in ratios if not 0 < r < 100]
    if bad:
        raise UserError(f"conflict ratio {bad[0]:g} is outside (0, 100); ratios are percentages such as 0.5,1,2,5")
    if len({pct_dirname(r) for r in ratios}) != len(ratios):
        raise UserError(f"--ratios '{text}' repeats a ratio")
    return ratios


# ----------------------------------------------------------------------- plan

def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def render_rng(seed: int, source: str, index: int, bias: int) -> np.random.Generator:
    """The randomness of one rendered image: a function of the seed and of the image and
    its bias label alone, never of the worker or chunk that renders it."""
    return _rng(seed, STREAM_RENDER, SOURCE_IDS[source], index, bias)


def _ratio_key(pct: float) -> int:
    return int(round(pct * 1000))  # 0.5 -> 500: an integer seed component per ratio


def carve_valid(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): round(fraction * n_c) images of every class c
    go to validation, so both splits keep MNIST's / CIFAR's class balance."""
    valid = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        valid.append(members[: int(math.floor(len(members) * fraction + 0.5))])
    valid_idx = np.sort(np.concatenate(valid)) if valid else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(y)), valid_idx), valid_idx


Plan = dict[tuple[str, int, int], list[str]]  # (source split, index, bias) -> relative paths


def layout_key(split: str, valid_layout: str, y: int, b: int) -> str:
    """Which LAYOUT template a file of `split` with labels (y, b) follows."""
    return {"train": "align" if y == b else "conflict", "valid": valid_layout, "test": "test"}[split]


def make_plan(recipe: Recipe, labels: dict[str, np.ndarray], ratios: tuple[float, ...], seed: int,
              valid_fraction: float = VALID_FRACTION) -> Plan:  # fmt: skip
    """Every image to render and the files it is written to.

    File names are <index in the raw split>_<y>_<b>.png; validation images keep their
    training index, so no two files of one ratio share an id.
    """
    plan: Plan = defaultdict(list)

    def add(split: str, source: str, idx: np.ndarray, y: np.ndarray, b: np.ndarray, pct: str) -> None:
        for i, yi, bi in zip(idx.tolist(), y.tolist(), b.tolist()):
            template = LAYOUT[layout_key(split, recipe.valid_layout, yi, bi)]
            plan[(source, i, bi)].append(template.format(pct=pct, y=yi, name=f"{i}_{yi}_{bi}.png"))

    y_train, y_test = labels["train"], labels["test"]
    train_idx, valid_idx = carve_valid(y_train, valid_fraction, _rng(seed, STREAM_VALID))
    for pct in ratios:
        for split, idx in (("train", train_idx), ("valid", valid_idx)):
            b = assign_bias(y_train[idx], pct, _rng(seed, STREAM_BIAS, SPLIT_IDS[split], _ratio_key(pct)), recipe.num_classes)
            add(split, "train", idx, y_train[idx], b, pct_dirname(pct))
    b_test = assign_bias(y_test, None, _rng(seed, STREAM_BIAS, SPLIT_IDS["test"]), recipe.num_classes)
    add("test", "test", np.arange(len(y_test)), y_test, b_test, "")
    return dict(plan)


# ---------------------------------------------------------------- rendering

class Chunk(NamedTuple):
    """One worker task: a few source images, their bias labels and destinations."""

    recipe: str
    seed: int
    severity: int
    root: str
    source: str
    sources: np.ndarray  # the raw images, stacked
    entries: list[tuple[int, int, list[str]]]  # (index, b, relative paths)


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


_PARENT_PID: int | None = None


def _init_worker(parent_pid: int) -> None:
    """Workers die with the builder: Ctrl-C is the parent's to handle, SIGTERM (how the
    pool stops its workers) must kill quietly whatever handler the parent installed, and a
    parent killed with SIGKILL must not leave orphans writing into its temporary tree."""
    global _PARENT_PID
    _PARENT_PID = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the getppid check in each task still applies
    _exit_if_orphaned()


def _exit_if_orphaned() -> None:
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)


def write_copies(data: bytes, paths: list[Path]) -> None:
    """Write `data` to the first path and hard-link the others to it.

    The same picture sits in every ratio folder where it is aligned; links make the
    tree ~4x smaller on disk and much faster to write (creating small files is what
    a build spends its time on). Filesystems without hard links get real copies.
    """
    _write_file(paths[0], data)
    for path in paths[1:]:
        try:
            os.link(paths[0], path)
        except OSError:
            _write_file(path, data)


def _write_file(path: Path, data: bytes) -> None:
    """Three system calls; Python's buffered open() adds more per file, and a build
    creates hundreds of thousands of small files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def render_chunk(chunk: Chunk) -> int:
    """Render and write one chunk; returns the number of files written."""
    _exit_if_orphaned()
    render = RECIPES[chunk.recipe].render
    root = Path(chunk.root)
    written = 0
    for source, (i, b, paths) in zip(chunk.sources, chunk.entries):
        data = encode_png(render(source, b, render_rng(chunk.seed, chunk.source, i, b), chunk.severity))
        write_copies(data, [root / rel for rel in paths])
        written += len(paths)
    return written


def _chunks(recipe: str, plan: Plan, images: dict[str, np.ndarray], seed: int, severity: int, root: Path,
            size: int) -> Iterator[Chunk]:  # fmt: skip
    keys = sorted(plan)
    for start in range(0, len(keys), size):
        part = keys[start : start + size]
        for source in sorted({k[0] for k in part}):
            mine = [k for k in part if k[0] == source]
            sources = images[source][[k[1] for k in mine]]
            yield Chunk(recipe, seed, severity, str(root), source, sources, [(k[1], k[2], plan[k]) for k in mine])


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_tasks(fn: Callable, tasks: Iterator, workers: int, total: int, progress: Progress | None) -> list:
    """fn over tasks, in a process pool when workers > 1; progress counts fn's integer results
    (or their first element). Results come back in completion order."""
    done, results = 0, []

    def tick(result) -> None:
        nonlocal done
        done += result if isinstance(result, int) else result[0]
        results.append(result)
        if progress:
            progress(done, total)

    if workers <= 1:
        for task in tasks:
            tick(fn(task))
        return results
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        for result in pool.imap_unordered(fn, tasks):
            tick(result)
    return results


# ------------------------------------------------------------- atomic output

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(out: Path) -> None:
    """Remove half-built trees of `out` left by killed builds (their pid is gone).

    A '.old-' sibling is only left if a --force build was killed between its two
    renames; it may then be the only copy of the previous tree, so it is kept and named.
    """
    for path in out.parent.glob(f".{out.name}.*-*"):
        match = re.fullmatch(rf"\.{re.escape(out.name)}\.(partial|old)-(\d+)", path.name)
        if not (match and path.is_dir()) or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "partial":
            log.info("removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)
        else:
            log.warning("%s holds the tree an interrupted --force build was replacing; delete it or move it back", path)


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another --out (nothing was overwritten)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already exists and is not empty; choose another --out or pass --force "
                        "to replace it (nothing was overwritten)")


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a hidden sibling of `out` to build in; on success it becomes `out`.

    On any exception (Ctrl-C included) the sibling is removed and `out` is untouched.
    With force, an existing `out` is replaced only once the new tree is complete: it
    is renamed aside, the new tree renamed in, then the old one deleted. A build
    killed outright (SIGKILL) leaves its sibling behind; the next build of the same
    `out` removes it.
    """
    _refuse_existing(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out.parent} ({exc.strerror}); choose a writable --out") from None
    _sweep_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _refuse_existing(out, force)  # something may have appeared while we built
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------- builder

@dataclass
class BuildSummary:
    dataset: str
    out: Path
    ratios: tuple[float, ...]
    rendered: int  # distinct images rendered
    files: int  # files written (an image aligned at every ratio is written once per ratio)
    counts: dict[str, int]  # folder -> files
    seconds: float


def _folder_of(rel: str) -> str:
    """'5pct/align/3/x.png' -> '5pct/align'; 'test/3/x.png' -> 'test'."""
    parts = rel.split("/")
    return "/".join(parts[:2]) if parts[0].endswith("pct") else parts[0]


def build(dataset: str, raw: Path, out: Path, ratios: tuple[float, ...] = DEFAULT_RATIOS, seed: int = 0,
          severity: int = 4, force: bool = False, workers: int | None = None, progress: Progress | None = None,
          valid_fraction: float = VALID_FRACTION) -> BuildSummary:  # fmt: skip
    """Build `dataset` ('cmnist' or 'cifar10c') from raw files into `out`, atomically."""
    recipe = get_recipe(dataset)
    raw, out = Path(raw).expanduser().resolve(), Path(out).expanduser().resolve()
    if not 1 <= severity <= 5:
        raise UserError(f"severity {severity} is outside 1..5")
    _refuse_existing(out, force)  # before the slow read
    start = time.perf_counter()
    data = recipe.load_raw(raw)
    bad = [s for s, (_, y) in data.items() if len(y) and (y.min() < 0 or y.max() >= recipe.num_classes)]
    if bad:
        raise DataError(f"the {bad[0]} labels under {raw} fall outside 0..{recipe.num_classes - 1}; is --raw the right dataset?")
    plan = make_plan(recipe, {s: y for s, (_, y) in data.items()}, ratios, seed, valid_fraction)
    counts = Counter(_folder_of(rel) for paths in plan.values() for rel in paths)
    total = sum(counts.values())
    workers = workers or default_workers()
    log.info("building %s: %d images rendered into %d files at %s%% conflicting, %d workers",
             dataset, len(plan), total, ", ".join(f"{r:g}" for r in ratios), workers)  # fmt: skip
    with atomic_dir(out, force) as tmp:
        for folder in sorted({rel.rsplit("/", 1)[0] for paths in plan.values() for rel in paths}):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        chunk_size = max(16, min(512, len(plan) // (workers * 8) or 1))
        images = {s: x for s, (x, _) in data.items()}
        tasks = _chunks(dataset, plan, images, seed, severity, tmp, chunk_size)
        run_tasks(render_chunk, tasks, workers, total, progress)
        manifest = {"dataset": dataset, "format_version": FORMAT_VERSION, "ratios": list(ratios), "seed": seed,
                    "valid_fraction": valid_fraction, "bias_names": list(recipe.bias_names), "raw": str(raw),
                    "counts": dict(sorted(counts.items()))}  # fmt: skip
        if dataset == "cifar10c":
            manifest["severity"] = severity
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    seconds = time.perf_counter() - start
    log.info("wrote %d files to %s in %.1f s", total, out, seconds)
    return BuildSummary(dataset, out, tuple(ratios), len(plan), total, dict(counts), seconds)


# --------------------------------------------------------------------- check

@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    detail: str


# kind -> what it means (also the order of the summary line)
PROBLEM_KINDS = {
    "missing split": "a split the loader needs has no folder or no images",
    "malformed name": "a file name is not <id>_<y>_<b>.<ext>, or a folder name is not <pct>pct",
    "unreadable image": "Pillow cannot decode the file",
    "label out of range": "y or b is not a class of the dataset",
    "wrong group": "an align/ file has y != b, or a conflict/ file has y == b",
    "wrong class folder": "a file sits in a numbered folder other than its y",
    "duplicate across splits": "the same pixels appear in two splits of one ratio",
    "conflict ratio": "the conflicting share of a <pct>pct training set is far from pct",
}


@dataclass(frozen=True)
class Folder:
    """One image folder of the tree, and where the loader puts it."""

    path: Path
    label: str  # '5pct/align', 'test', ...
    split: str  # train / valid / test
    group: str | None  # 'align' / 'conflict' for training folders


@dataclass
class Entry:
    folder: Folder
    path: Path
    y: int
    b: int
    digest: str | None = None  # of the decoded pixels; None if unreadable
    size: tuple[int, int] | None = None
    error: str = ""


@dataclass
class TreeReport:
    root: Path
    rows: list[dict] = field(default_factory=list)  # one per (split folder, group)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: int = 0
    num_classes: int = 0

    def counts_by_kind(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {k: counts[k] for k in PROBLEM_KINDS if counts[k]}

    def summary(self) -> str:
        if not self.problems:
            return f"{self.root}: {self.images} images, no problems"
        parts = ", ".join(f"{n} {kind}" for kind, n in self.counts_by_kind().items())
        n = len(self.problems)
        return f"check found {n} problem{'s' if n > 1 else ''} in {self.root}: {parts}"


def _pct_value(name: str) -> float | None:
    try:
        return float(name[: -len("pct")])
    except ValueError:
        return None


TOP_FOLDERS = {"test", "valid"}
PCT_FOLDERS = {"align", "conflict", "valid"}


def _ignored_folders(root: Path) -> list[str]:
    """Folders the loader never reads: often a tree unpacked one level too deep or too high."""
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
             and p.name not in TOP_FOLDERS and not p.name.endswith("pct")]  # fmt: skip
    found += [p for d in root.glob("*pct") if d.is_dir() for p in d.iterdir() if p.is_dir() and p.name not in PCT_FOLDERS]
    return [f"{p}/: not part of the LfF layout, ignored by the loader" for p in sorted(found)]


def discover(root: Path) -> tuple[list[tuple[str, dict[str, list[Folder]]]], list[Problem]]:
    """The tree's ratios, each as {split: folders}, as the folder loader would read them."""
    problems = []
    test = Folder(root / "test", "test", "test", None)
    shared_valid = Folder(root / "valid", "valid", "valid", None) if (root / "valid").is_dir() else None
    ratios = []
    by_value = lambda p: (_pct_value(p.name) is None, _pct_value(p.name) or 0.0, p.name)  # noqa: E731
    for pct_dir in sorted((p for p in root.glob("*pct") if p.is_dir()), key=by_value):
        if _pct_value(pct_dir.name) is None:
            problems.append(Problem("malformed name", str(pct_dir), "folder name is not <number>pct"))
            continue
        name = pct_dir.name
        train = [Folder(pct_dir / g, f"{name}/{g}", "train", g) for g in ("align", "conflict")]
        valid = Folder(pct_dir / "valid", f"{name}/valid", "valid", None) if (pct_dir / "valid").is_dir() else shared_valid
        if not train[0].path.is_dir():  # a missing conflict/ is judged by the conflict-ratio check
            problems.append(Problem("missing split", str(train[0].path), "no such folder"))
        if valid is None:
            problems.append(Problem("missing split", str(pct_dir / "valid"), f"no {name}/valid/ and no valid/ at the root"))
        ratios.append((name, {"train": [f for f in train if f.path.is_dir()], "valid": [valid] if valid else [], "test": [test]}))
    if not ratios:
        problems.append(Problem("missing split", str(root), "no <pct>pct folder (e.g. 1pct/align, 1pct/conflict)"))
    if not test.path.is_dir():
        problems.append(Problem("missing split", str(test.path), "no such folder"))
    return ratios, problems


def _hash_image(path: str) -> tuple[str, str | None, tuple[int, int] | None, str]:
    """(path, digest of the decoded RGB pixels, size, error). Pixels, not file bytes, so
    a copy saved again (other compression, other format) still matches."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            digest = hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
            return path, digest, rgb.size, ""
    except Exception as exc:  # any decoder failure means the same thing: unreadable
        return path, None, None, f"{exc.__class__.__name__}: {exc}"


def _hash_many(paths: list[str]) -> tuple[int, list]:
    _exit_if_orphaned()
    results = [_hash_image(p) for p in paths]
    return len(paths), results


def _check_names(folder: Folder, num_classes: int | None) -> tuple[list[Entry], list[Problem], list[str]]:
    entries, problems, warnings = [], [], []
    for path in sorted(folder.path.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            warnings.append(f"{path}: not an image, ignored by the loader")
            continue
        try:
            y, b = parse_labels(path)
        except DataError:
            problems.append(Problem("malformed name", str(path), "expected <id>_<y>_<b>.png"))
            continue
        if num_classes is not None and max(y, b) >= num_classes:
            problems.append(Problem("label out of range", str(path), f"y={y}, b={b}; classes are 0..{num_classes - 1}"))
        if (folder.group == "align" and y != b) or (folder.group == "conflict" and y == b):
            problems.append(Problem("wrong group", str(path), f"y={y}, b={b} in {folder.group}/"))
        if path.parent != folder.path and path.parent.name.isdigit() and int(path.parent.name) != y:
            problems.append(Problem("wrong class folder", str(path), f"y={y} in folder {path.parent.name}/"))
        entries.append(Entry(folder, path, y, b))
    return entries, problems, warnings


def ratio_is_plausible(actual: float, nominal: float) -> bool:
    """Published trees (DisEnt's, drawn per sample) drift a little from their folder's
    name; a 20 % relative tolerance accepts them and still tells 0.5pct from 1pct."""
    return abs(actual - nominal) <= 0.2 * nominal + 0.02


def _ratio_problem(train: list[Entry], nominal: float) -> str | None:
    """Why a <pct>pct training set does not hold about pct % conflicting samples, or None.

    Exact per-class quotas (what prepare-data writes) always pass, even when rounding
    moves small classes far from pct (54 images at 0.5 % give 0 conflicting).
    """
    if not train:
        return None
    sizes = Counter(e.y for e in train)
    conflicting = Counter(e.y for e in train if e.y != e.b)
    if all(conflicting[c] == conflict_quota(n, nominal) for c, n in sizes.items()):
        return None
    actual = 100.0 * sum(conflicting.values()) / len(train)
    if ratio_is_plausible(actual, nominal):
        return None
    return f"{actual:.2f}% of {len(train)} training images conflict, expected about {nominal:g}%"


def _duplicates(ratios: list[tuple[str, dict[str, list[Folder]]]], entries: dict[Path, list[Entry]]) -> list[Problem]:
    problems, seen_pairs = [], set()
    for _, splits in ratios:
        first: dict[str, tuple[str, Path]] = {}
        for split, folders in splits.items():
            for folder in folders:
                for e in entries.get(folder.path, []):
                    if e.digest is None:
                        continue
                    if e.digest in first and first[e.digest][0] != split:
                        pair = (first[e.digest][1], e.path)
                        if pair not in seen_pairs:  # valid/ and test/ are shared by every ratio
                            seen_pairs.add(pair)
                            problems.append(Problem("duplicate across splits", str(e.path), f"same pixels as {pair[0]}"))
                    first.setdefault(e.digest, (split, e.path))
    return problems


def _rows(ratios, entries: dict[Path, list[Entry]], num_classes: int) -> list[dict]:
    """Per split and group (by labels: y == b or not), images and images per class.
    Folders shared by every ratio (test/, a root valid/) come last, once."""
    own, shared = {}, {}
    for name, splits in ratios:
        for split, folders in splits.items():
            if split == "train":
                own[f"{name}/train"] = folders
            elif folders and folders[0].label.startswith(f"{name}/"):
                own[folders[0].label] = folders
            elif folders:
                shared[folders[0].label] = folders
    rows = []
    for label, folders in {**own, **shared}.items():
        members = [e for f in folders for e in entries.get(f.path, [])]
        for group, keep in (("align", lambda e: e.y == e.b), ("conflict", lambda e: e.y != e.b)):
            chosen = [e for e in members if keep(e)]
            per_class = Counter(e.y for e in chosen)
            rows.append({"split": label, "group": group, "images": len(chosen),
                         "share%": 100.0 * len(chosen) / len(members) if members else float("nan"),
                         **{str(c): per_class[c] for c in range(num_classes)}})  # fmt: skip
    return rows


def check_tree(root: Path, dataset: str | None = None, workers: int | None = None,
               progress: Progress | None = None) -> TreeReport:  # fmt: skip
    """Validate an LfF-layout tree; the report lists every problem found (none: valid)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass the root of an LfF-layout dataset")
    spec = None
    if dataset is not None:
        spec = get_dataset_spec(dataset)
        if not spec.needs_root:
            raise DataError(f"{dataset} is embedded, not a folder dataset; choose from cmnist, cifar10c, bffhq")
    report = TreeReport(root)
    ratios, report.problems = discover(root)
    report.warnings += _ignored_folders(root)
    folders = {f.path: f for _, splits in ratios for fs in splits.values() for f in fs if f.path.is_dir()}
    entries: dict[Path, list[Entry]] = {}
    for path, folder in sorted(folders.items()):
        entries[path], problems, warnings = _check_names(folder, spec.num_classes if spec else None)
        report.problems += problems
        report.warnings += warnings
        if not entries[path] and folder.group != "conflict":
            report.problems.append(Problem("missing split", str(path), "no images"))
    flat = [e for es in entries.values() for e in es]
    report.images = len(flat)
    _hash_entries(flat, workers or default_workers(), progress)
    for e in flat:
        if e.digest is None:
            report.problems.append(Problem("unreadable image", str(e.path), e.error))
    sizes = Counter(e.size for e in flat if e.size)
    if spec and sizes and set(sizes) != {(spec.image_size, spec.image_size)}:
        report.warnings.append(f"image sizes {dict(sizes)}; {dataset} is read at {spec.image_size}x{spec.image_size} (the loader resizes)")
    report.problems += _duplicates(ratios, entries)
    report.num_classes = spec.num_classes if spec else (max((max(e.y, e.b) for e in flat), default=-1) + 1)
    report.rows = _rows(ratios, entries, report.num_classes)
    for name, splits in ratios:
        train = [e for f in splits["train"] for e in entries.get(f.path, [])]
        problem = _ratio_problem(train, _pct_value(name))
        if problem:
            report.problems.append(Problem("conflict ratio", str(root / name), problem))
    return report


def _hash_entries(flat: list[Entry], workers: int, progress: Progress | None) -> None:
    """Decode every distinct file once (in parallel for big trees), recording its pixel
    digest or why it failed. Hard links (prepare-data's copies across ratio folders)
    share an inode, so they are decoded once."""
    inodes = [(st.st_dev, st.st_ino) for st in (e.path.stat() for e in flat)]
    by_inode: dict[tuple[int, int], str] = {}
    for e, inode in zip(flat, inodes):
        by_inode.setdefault(inode, str(e.path))
    paths = sorted(set(by_inode.values()))
    size = max(64, min(1024, len(paths) // (workers * 8) or 1))
    tasks = (paths[i : i + size] for i in range(0, len(paths), size))
    by_path = {}
    for _, results in run_tasks(_hash_many, tasks, workers if len(paths) > 2000 else 1, len(paths), progress):
        by_path.update((r[0], r[1:]) for r in results)
    for e, inode in zip(flat, inodes):
        e.digest, e.size, e.error = by_path[by_inode[inode]]


def format_table(rows: list[dict]) -> str:
    """Rows of equal keys as an aligned plain-text table (no pandas: check must start fast)."""
    if not rows:
        return "(no images)"
    columns = list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.2f}"
        return str(value)

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines += ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(lines)


def format_report(report: TreeReport, limit: int = 10) -> str:
    """The table, then warnings and problems (at most `limit` of each kind), then the summary."""
    lines = [f"{report.root}: {report.images} images (share% = share of the split; columns 0.. = images per class y)",
             format_table(report.rows)]
    if report.warnings:
        lines.append(f"\nwarnings ({len(report.warnings)}):")
        lines += [f"  {w}" for w in report.warnings[:limit]]
        if len(report.warnings) > limit:
            lines.append(f"  ... and {len(report.warnings) - limit} more")
    by_kind = defaultdict(list)
    for p in report.problems:
        by_kind[p.kind].append(p)
    for kind, problems in ((k, by_kind[k]) for k in PROBLEM_KINDS if by_kind[k]):
        lines.append(f"\n{kind} ({len(problems)}): {PROBLEM_KINDS[kind]}")
        lines += [f"  {p.path}: {p.detail}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)
