"""Readers of the raw MNIST and CIFAR-10 files a user already has, as numpy arrays.

Why these readers are written here rather than taken from torchvision (checked
with torchvision 0.29; torchvision is therefore not a dependency of this project):

- ``torchvision.datasets.MNIST(root, download=False)`` reads only the unpacked
  ``<root>/MNIST/raw/*-ubyte`` files; a copy that holds just the ``.gz`` downloads,
  or whose root is ``MNIST/`` or ``MNIST/raw/`` itself, is "not found".
- ``torchvision.datasets.CIFAR10(root, download=False)`` checks the MD5 of all six
  batches and of ``batches.meta`` before reading anything, so it refuses any partial
  or re-packed copy, and it unpickles with plain ``pickle.load``, which runs whatever
  code a tampered file names. The reader below accepts only arrays and lists.
- Both import torch, which every render worker would then load for nothing.

The layouts read are those torchvision's downloaders leave behind, so the command
that fetches the files on a machine with internet is torchvision's (``download_hint``).
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np

from rest.core.data.base import DataError

RawData = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images, labels)


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


# ---------------------------------------------------------------------- MNIST

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
        paths = [p for p in (_find(candidates, n) for n in names) if p is not None]
        if len(paths) < len(names):
            raise _missing("MNIST", "MNIST", raw, f"{raw / 'MNIST' / 'raw' / names[0]}[.gz]")
        images, labels = (read_idx(p) for p in paths)
        if images.ndim != 3 or labels.shape != images.shape[:1] or images.dtype != np.uint8:
            raise DataError(
                f"{paths[0]} and {paths[1]} do not hold matching uint8 images and labels; download them again"
            )
        out[split] = (images, labels.astype(np.int64))
    return out


# ------------------------------------------------------------------- CIFAR-10

CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, numpy arrays): a tampered
    file cannot run code."""

    ALLOWED = {
        (core, name)
        for core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch as (N x 32 x 32 x 3 uint8 images, int64 labels)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path} is not a CIFAR-10 batch ({exc.__class__.__name__}: {exc}); download it again"
        ) from None
    if len(labels) != len(data):
        raise DataError(f"{path} holds {len(data)} images but {len(labels)} labels; download it again")
    return np.ascontiguousarray(data), labels


def load_cifar10(raw: Path) -> RawData:
    """CIFAR-10 as torchvision stores it: <raw>/cifar-10-batches-py/{data_batch_1..5,test_batch}."""
    candidates = [raw / "cifar-10-batches-py", raw]
    out = {}
    for split, names in CIFAR_FILES.items():
        paths = [p for p in (_find(candidates, n) for n in names) if p is not None]
        if len(paths) < len(names) or any(p.suffix == ".gz" for p in paths):
            raise _missing("CIFAR-10", "CIFAR10", raw, str(raw / "cifar-10-batches-py" / names[0]))
        batches = [read_cifar_batch(p) for p in paths]
        out[split] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return out
