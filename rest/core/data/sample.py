"""``subsample``: a seeded sample of a split that keeps its class x bias make-up.

Folder datasets list their files aligned-first and class by class, so the first n
samples of a split would be a few classes and no conflicting sample at all. A sample
here keeps, within rounding, each split's shares of aligned and conflicting samples
and of every class, and every class the split has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The sample depends on this seed, the split and n only: never on a run's training seed,
# so runs that differ in seed train and are tested on the same samples.
SUBSAMPLE_SEED = 0


def apportion(sizes: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Largest-remainder quotas: n places shared in proportion to `sizes` (n <= sum(sizes)).

    1. each part gets the floor of its exact share n * size / total (integer arithmetic);
    2. the places left go one each to the parts with the largest remainders, equal
       remainders in a seeded random order.
    So every quota is the floor or the ceiling of its exact share, and they sum to n.
    """
    counts = np.asarray(sizes, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(len(counts), dtype=np.int64)
    quotas, remainders = np.divmod(n * counts, total)
    left = n - int(quotas.sum())
    order = np.lexsort((rng.random(len(counts)), -remainders))  # largest remainder first
    quotas[order[:left]] += 1
    return quotas


def stratum_quotas(y: np.ndarray, conflicting: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Quotas of an n-sample per (bias group, class): a 2 x C table, row 0 aligned, row 1 conflicting.

    1. n is shared between the aligned and the conflicting samples (``apportion``), so the
       conflicting share is kept to one sample;
    2. each group's quota is shared among its classes;
    3. when n is at least the number of classes present, a class left without a place takes
       one from the largest quota of a class that has two or more.
    """
    classes = int(y.max()) + 1 if len(y) else 0
    sizes = np.stack([np.bincount(y[conflicting == g], minlength=classes) for g in (False, True)])
    groups = apportion(sizes.sum(1), n, rng)
    quotas = np.stack([apportion(sizes[g], int(groups[g]), rng) for g in (0, 1)])
    if n >= int((sizes.sum(0) > 0).sum()):
        _give_every_class_one(quotas, sizes)
    return quotas


def _give_every_class_one(quotas: np.ndarray, sizes: np.ndarray) -> None:
    """Move one place to each present class without one, from the largest quota of a class
    holding two or more, in the class's own larger group when it can (in place)."""
    for c in np.flatnonzero(sizes.sum(0)):
        if quotas[:, c].sum():
            continue
        g = int(sizes[:, c].argmax())
        spare = (quotas.sum(0) >= 2)[None, :] & (quotas > 0)
        own = spare & (np.arange(2)[:, None] == g)
        dg, dc = np.unravel_index(np.where(own if own.any() else spare, quotas, -1).argmax(), quotas.shape)
        quotas[dg, dc] -= 1
        quotas[g, c] += 1


def stratified_indices(y: np.ndarray, b: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of an n-sample of a split with targets y and bias labels b.

    Strata are class x (aligned, conflicting); b None (labels withheld) stratifies by
    class alone. Each stratum's quota (``stratum_quotas``) is drawn uniformly without
    replacement. n at or above the split's size keeps every sample.
    """
    y = np.asarray(y, dtype=np.int64)
    if n >= len(y):
        return np.arange(len(y))
    conflicting = np.zeros(len(y), dtype=bool) if b is None else np.asarray(b) != y
    quotas = stratum_quotas(y, conflicting, n, rng)
    chosen = [
        rng.choice(np.flatnonzero((conflicting == bool(g)) & (y == c)), size=int(quotas[g, c]), replace=False)
        for g in (0, 1)
        for c in range(quotas.shape[1])
        if quotas[g, c]
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)
