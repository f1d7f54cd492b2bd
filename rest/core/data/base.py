"""In-memory representation shared by every dataset, and its on-disk cache.

Every dataset becomes three ``Split``s of uint8 N x C x H x W images with integer
target ``y`` and bias label ``b``. Training slices batches straight from these
tensors, so no image is decoded inside the training loop. Splits are cached as
``.npy`` files and memory-mapped on later loads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rest.core.data.sample import SUBSAMPLE_SEED, stratified_indices
from rest.errors import UserError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")


class DataError(UserError, ValueError):
    """A dataset cannot be loaded; the message names the problem and the fix."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor  # int64, N
    b: torch.Tensor | None  # int64, N; None where bias labels are withheld (JTT)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def conflicting(self) -> torch.Tensor:
        if self.b is None:
            raise DataError("bias labels were withheld from this split")
        return self.y != self.b

    def without_bias(self) -> Split:
        """The same samples with no bias labels: what a bias-blind method may see."""
        return Split(self.images, self.y, None)

    def subsample(self, n: int, rng: np.random.Generator) -> Split:
        """n samples drawn per class x bias stratum (``sample.stratified_indices``)."""
        b = None if self.b is None else self.b.cpu().numpy()
        idx = torch.from_numpy(stratified_indices(self.y.cpu().numpy(), b, n, rng)).to(self.y.device)
        return Split(self.images[idx], self.y[idx], None if self.b is None else self.b[idx])

    def describe(self, prefix: str) -> dict[str, int]:
        """Its size, conflicting samples and classes, as flat record fields."""
        out = {f"{prefix}samples": len(self), f"{prefix}classes": int(torch.unique(self.y).numel())}
        if self.b is not None:
            out[f"{prefix}conflicting"] = int(self.conflicting.sum())
        return out

    def to(self, device: torch.device | str) -> Split:
        b = None if self.b is None else self.b.to(device)
        return Split(self.images.to(device), self.y.to(device), b)


@dataclass
class BiasedData:
    name: str
    conflict_pct: float
    train: Split
    valid: Split
    test: Split
    subsample_seed: int | None = None  # set on a subsample: the seed it was drawn with

    def subsample(self, n: int, seed: int = SUBSAMPLE_SEED) -> BiasedData:
        """A seeded sample of n from every split that keeps its class x bias shares (``rest.core.data.sample``).

        Each split keeps its shares of aligned and conflicting samples and of every
        class, within one sample of rounding, and every class it has (when n allows).
        The draw depends on `seed`, the split and n only, never on a run's training
        seed. Splits smaller than n are kept whole.
        """
        train, valid, test = (
            getattr(self, s).subsample(n, np.random.default_rng([seed, i])) for i, s in enumerate(SPLIT_NAMES)
        )
        return BiasedData(self.name, self.conflict_pct, train, valid, test, subsample_seed=seed)

    def describe(self) -> dict[str, int]:
        """What a run trained and was tested on, as flat record fields: per split its samples,
        conflicting samples and classes, and the subsample's seed (-1: no subsample)."""
        out = {"data_subsample_seed": -1 if self.subsample_seed is None else self.subsample_seed}
        for s in SPLIT_NAMES:
            out.update(getattr(self, s).describe(f"data_{s}_"))
        return out

    def to(self, device: torch.device | str) -> BiasedData:
        return BiasedData(
            self.name,
            self.conflict_pct,
            self.train.to(device),
            self.valid.to(device),
            self.test.to(device),
            self.subsample_seed,
        )


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of the library needs to know about a registered dataset."""

    name: str
    loader: Callable[..., BiasedData]
    num_classes: int
    image_size: int
    default_model: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: str  # "none" or "crop_flip"
    needs_root: bool


def cache_dir() -> Path:
    """Where decoded datasets are cached: $REST_TUNE_CACHE or ~/.cache/rest-tune."""
    return Path(os.environ.get("REST_TUNE_CACHE", Path.home() / ".cache" / "rest-tune"))


def save_cache(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], meta: dict) -> None:
    """Write splits atomically: a temporary sibling directory renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        for split, (images, y, b) in splits.items():
            np.save(tmp / f"{split}_images.npy", images)
            np.save(tmp / f"{split}_y.npy", y.astype(np.int64))
            np.save(tmp / f"{split}_b.npy", b.astype(np.int64))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, path)
        except OSError:  # another process cached the same data first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def from_arrays(
    name: str, conflict_pct: float, splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> BiasedData:
    """BiasedData from in-memory arrays (what the builders return, before caching)."""

    def split(s: str) -> Split:
        images, y, b = splits[s]
        return Split(
            torch.from_numpy(np.ascontiguousarray(images)),
            torch.from_numpy(y.astype(np.int64)),
            torch.from_numpy(b.astype(np.int64)),
        )

    return BiasedData(name, conflict_pct, split("train"), split("valid"), split("test"))


def cached(path: Path, name: str, conflict_pct: float, build: Callable[[], tuple[dict, dict]]) -> BiasedData:
    """Load from the cache at `path`, building it first if absent or damaged.

    A file lock makes concurrent trials on one node build a dataset once: the others
    wait, then memory-map the finished cache.
    """
    try:
        data = load_cache(path, name, conflict_pct)
    except CorruptCache:
        data = None  # rebuilt below, under the lock
    if data is not None:
        return data
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            data = load_cache(path, name, conflict_pct)
        except CorruptCache as exc:
            log.warning("dataset cache %s is damaged (%s); rebuilding it", path, exc)
            shutil.rmtree(path)
            data = None
        if data is None:
            save_cache(path, *build())
            data = load_cache(path, name, conflict_pct)
    if data is None:
        raise CorruptCache(f"{path}: no dataset there right after building it")
    return data


class CorruptCache(Exception):
    """A cache entry exists but cannot be read (a truncated or damaged file)."""


def load_cache(path: Path, name: str, conflict_pct: float) -> BiasedData | None:
    """Memory-map a cached dataset (copy-on-write, so tensors are writable); None if absent."""
    if not (path / "meta.json").exists():
        return None

    def split(s: str) -> Split:
        arrays = [np.load(path / f"{s}_{k}.npy", mmap_mode="c") for k in ("images", "y", "b")]
        return Split(*(torch.from_numpy(a) for a in arrays))

    try:
        return BiasedData(name, conflict_pct, split("train"), split("valid"), split("test"))
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptCache(str(exc).splitlines()[0]) from None


def pct_dirname(pct: float) -> str:
    """0.5 -> '0.5pct', 1.0 -> '1pct' (the LfF/DisEnt folder names)."""
    return f"{float(pct):g}pct"
