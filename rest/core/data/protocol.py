"""The Colored-MNIST bias protocol, shared by the embedded dataset and prepare-data.

A grey digit becomes an RGB image by painting its strokes with one of ten fixed
colours plus a small per-sample jitter. The colour index is the bias label b.
Aligned samples take the colour of their class (b == y); a conflicting sample
takes one of the other nine colours, uniformly. Quotas are exact per class:
``round(n_class * pct / 100)`` conflicting samples in every class, never a
Bernoulli draw, so a "1 %" split really holds 1 % conflicting samples.
"""

from __future__ import annotations

import math

import numpy as np

# Ten well-separated colours (RGB, 0-255), one per class.
COLOURS = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
    ],
    dtype=np.float32,
)
# Std of the per-sample colour noise, as a fraction of 255. The embedded colored_digits
# keeps its original 0.02 (its cached datasets and shipped results depend on it);
# prepare-data's cmnist uses 0.005, LfF's Colored MNIST colour noise (LfF's colorize:
# std [0.05, 0.02, 0.01, 0.005, 0.002][severity - 1] at severity 4). See docs/fidelity.md.
COLOUR_JITTER = 0.02
LFF_COLOUR_JITTER = 0.005


def conflict_quota(n_class: int, pct: float) -> int:
    """Exact number of conflicting samples in a class of n_class samples.

    Halves round up (not Python's round-half-to-even), so 150 samples at 1 % give 2.
    """
    return int(math.floor(n_class * pct / 100.0 + 0.5))


def assign_bias(y: np.ndarray, pct: float | None, rng: np.random.Generator, n_classes: int = 10) -> np.ndarray:
    """Bias labels for targets y.

    pct=None gives an unbiased split (b uniform and independent of y); otherwise each
    class gets exactly ``conflict_quota`` conflicting samples, whose b is drawn
    uniformly among the other classes, and every other sample gets b = y.
    """
    y = np.asarray(y, dtype=np.int64)
    if pct is None:
        return rng.integers(0, n_classes, size=len(y)).astype(np.int64)
    b = y.copy()
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        chosen = rng.choice(members, size=conflict_quota(len(members), pct), replace=False)
        shift = rng.integers(1, n_classes, size=len(chosen))  # 1..n-1: never the own class
        b[chosen] = (c + shift) % n_classes
    return b


def colourise(grey: np.ndarray, b: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Paint grey digits (N x H x W uint8, white strokes on black) with colour b.

    Each image's colour is COLOURS[b] / 255 plus Gaussian noise of std `sigma` per
    channel, clipped to [0, 1]. Returns N x 3 x H x W uint8.
    """
    colour = COLOURS[b] / 255.0 + rng.normal(0.0, sigma, size=(len(b), 3)).astype(np.float32)
    colour = np.clip(colour, 0.0, 1.0)
    rgb = grey[:, None, :, :].astype(np.float32) * colour[:, :, None, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
