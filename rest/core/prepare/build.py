"""Build Colored MNIST or Corrupted CIFAR-10 in the LfF layout from raw files.

Two datasets share one pipeline (``build``), differing only in a ``Recipe``: how
the raw files are read (``raw``) and how one image is rendered with its bias label
(Colored MNIST: the shared colouring of ``rest.core.data.protocol``; Corrupted
CIFAR-10: corruption number b of ``rest.core.corruptions``). The pipeline:

1. read the raw training and test images (nothing is written if they are missing);
2. carve a validation set from the training images, per class, with a seeded
   fraction, the same images for every conflict ratio;
3. for every ratio, draw bias labels with exact per-class conflict quotas for
   train and validation; draw unbiased test labels once (test/ is shared);
4. render every distinct (image, bias) pair once, in worker processes (``pool``),
   and write its PNG to each ratio folder that holds it. The randomness of a render
   comes from (seed, image, bias) alone, so the output does not depend on the number
   of workers, and an image aligned at every ratio is the same picture in each folder;
5. build in a hidden sibling of --out and rename it into place when complete (``atomic``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from rest.core.corruptions import CORRUPTION_NAMES, corrupt
from rest.core.data.base import DataError, pct_dirname
from rest.core.data.protocol import LFF_COLOUR_JITTER, assign_bias, colourise
from rest.core.prepare.atomic import atomic_dir, refuse_existing
from rest.core.prepare.pool import Progress, default_workers, exit_if_orphaned, run_tasks
from rest.core.prepare.raw import RawData, load_cifar10, load_mnist
from rest.errors import UserError

log = logging.getLogger(__name__)

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


def make_plan(
    recipe: Recipe,
    labels: dict[str, np.ndarray],
    ratios: tuple[float, ...],
    seed: int,
    valid_fraction: float = VALID_FRACTION,
) -> Plan:
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
            b = assign_bias(
                y_train[idx], pct, _rng(seed, STREAM_BIAS, SPLIT_IDS[split], _ratio_key(pct)), recipe.num_classes
            )
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
    exit_if_orphaned()
    render = RECIPES[chunk.recipe].render
    root = Path(chunk.root)
    written = 0
    for source, (i, b, paths) in zip(chunk.sources, chunk.entries):
        data = encode_png(render(source, b, render_rng(chunk.seed, chunk.source, i, b), chunk.severity))
        write_copies(data, [root / rel for rel in paths])
        written += len(paths)
    return written


def _chunks(
    recipe: str, plan: Plan, images: dict[str, np.ndarray], seed: int, severity: int, root: Path, size: int
) -> Iterator[Chunk]:
    keys = sorted(plan)
    for start in range(0, len(keys), size):
        part = keys[start : start + size]
        for source in sorted({k[0] for k in part}):
            mine = [k for k in part if k[0] == source]
            sources = images[source][[k[1] for k in mine]]
            yield Chunk(recipe, seed, severity, str(root), source, sources, [(k[1], k[2], plan[k]) for k in mine])


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


def build(
    dataset: str,
    raw: Path,
    out: Path,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    seed: int = 0,
    severity: int = 4,
    force: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    valid_fraction: float = VALID_FRACTION,
) -> BuildSummary:
    """Build `dataset` ('cmnist' or 'cifar10c') from raw files into `out`, atomically."""
    recipe = get_recipe(dataset)
    raw, out = Path(raw).expanduser().resolve(), Path(out).expanduser().resolve()
    if not 1 <= severity <= 5:
        raise UserError(f"severity {severity} is outside 1..5")
    refuse_existing(out, force)  # before the slow read
    start = time.perf_counter()
    data = recipe.load_raw(raw)
    bad = [s for s, (_, y) in data.items() if len(y) and (y.min() < 0 or y.max() >= recipe.num_classes)]
    if bad:
        raise DataError(
            f"the {bad[0]} labels under {raw} fall outside 0..{recipe.num_classes - 1}; is --raw the right dataset?"
        )
    plan = make_plan(recipe, {s: y for s, (_, y) in data.items()}, ratios, seed, valid_fraction)
    counts = Counter(_folder_of(rel) for paths in plan.values() for rel in paths)
    total = sum(counts.values())
    workers = workers or default_workers()
    log.info(
        "building %s: %d images rendered into %d files at %s%% conflicting, %d workers",
        dataset,
        len(plan),
        total,
        ", ".join(f"{r:g}" for r in ratios),
        workers,
    )
    with atomic_dir(out, force) as tmp:
        for folder in sorted({rel.rsplit("/", 1)[0] for paths in plan.values() for rel in paths}):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        chunk_size = max(16, min(512, len(plan) // (workers * 8) or 1))
        images = {s: x for s, (x, _) in data.items()}
        tasks = _chunks(dataset, plan, images, seed, severity, tmp, chunk_size)
        run_tasks(render_chunk, tasks, workers, total, progress)
        manifest = {
            "dataset": dataset,
            "format_version": FORMAT_VERSION,
            "ratios": list(ratios),
            "seed": seed,
            "valid_fraction": valid_fraction,
            "bias_names": list(recipe.bias_names),
            "raw": str(raw),
            "counts": dict(sorted(counts.items())),
        }
        if dataset == "cifar10c":
            manifest["severity"] = severity
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    seconds = time.perf_counter() - start
    log.info("wrote %d files to %s in %.1f s", total, out, seconds)
    return BuildSummary(dataset, out, tuple(ratios), len(plan), total, dict(counts), seconds)
