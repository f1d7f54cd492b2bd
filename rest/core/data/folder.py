"""Datasets stored in the LfF / DisEnt folder layout (cmnist, cifar10c, bffhq).

    <root>/<pct>pct/align/**/<id>_<y>_<b>.png     training, bias-aligned
    <root>/<pct>pct/conflict/**/<id>_<y>_<b>.png  training, bias-conflicting
    <root>/<pct>pct/valid/**  or  <root>/valid/**  validation
    <root>/test/**                                unbiased test

Labels come from the last two ``_``-separated fields of the file name. Images are
decoded once into a uint8 cache (keyed by the files' paths, sizes and times) and
memory-mapped afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rest.core.data.base import BiasedData, DataError, cache_dir, cached, pct_dirname

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def parse_labels(path: Path) -> tuple[int, int]:
    """(y, b) from '<id>_<y>_<b>.png'; DataError naming the file otherwise."""
    parts = path.stem.rsplit("_", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise DataError(f"file name {path} does not match <id>_<y>_<b>.png; rename it or remove it from the data root")
    return int(parts[1]), int(parts[2])


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def present_ratios(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*pct") if p.is_dir())


def split_files(root: Path, conflict_pct: float) -> dict[str, list[Path]]:
    """The image files of each split, checking the layout on the way."""
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; pass --data-root pointing at an LfF-layout dataset")
    if not any(root.iterdir()):
        raise DataError(f"data root {root} is empty; build a dataset there with 'tune_search.py prepare-data'")
    pct_dir = root / pct_dirname(conflict_pct)
    if not pct_dir.is_dir():
        present = ", ".join(present_ratios(root)) or "none"
        raise DataError(
            f"conflict ratio {conflict_pct:g}% is missing under {root} (no {pct_dir.name}/); present: {present}"
        )
    valid_dir = pct_dir / "valid" if (pct_dir / "valid").is_dir() else root / "valid"
    files = {
        "train": list_images(pct_dir / "align") + list_images(pct_dir / "conflict"),
        "valid": list_images(valid_dir),
        "test": list_images(root / "test"),
    }
    for split, paths in files.items():
        if not paths:
            raise DataError(
                f"no {split} images found for {conflict_pct:g}% under {root}; "
                "expected the LfF layout (see docs/datasets.md)"
            )
    return files


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path} ({exc.__class__.__name__}); replace or remove the file") from None


def decode_split(paths: list[Path], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.array([parse_labels(p) for p in paths], dtype=np.int64).reshape(-1, 2)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = np.stack(list(pool.map(lambda p: _decode(p, size), paths)))
    return images, labels[:, 0], labels[:, 1]


def _fingerprint(files: dict[str, list[Path]], size: int) -> str:
    digest = hashlib.sha1(str(size).encode())
    for split in sorted(files):
        for p in files[split]:
            st = p.stat()
            digest.update(f"{split}|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_folder(name: str, conflict_pct: float, root: str | None, size: int, num_classes: int) -> BiasedData:
    if not root:
        raise DataError(f"dataset {name} is read from disk; pass --data-root DIR (or use the embedded colored_digits)")
    files = split_files(Path(root).expanduser().resolve(), conflict_pct)
    for paths in files.values():  # name a malformed file before any slow decoding
        for p in paths:
            if max(parse_labels(p)) >= num_classes:
                raise DataError(f"file {p} has a label outside 0..{num_classes - 1} for {name}; is --dataset right?")
    path = cache_dir() / f"{name}-{pct_dirname(conflict_pct)}-{_fingerprint(files, size)}"

    def build():
        log.info("decoding %s (%s images) into cache %s", name, sum(map(len, files.values())), path)
        arrays = {split: decode_split(paths, size) for split, paths in files.items()}
        return arrays, {"dataset": name, "conflict_pct": conflict_pct, "root": str(root)}

    return cached(path, name, conflict_pct, build)
