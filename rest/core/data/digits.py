"""``colored_digits``: the embedded dataset, generated procedurally (no download).

Digits 0-9 are drawn as pen strokes with Pillow: each digit is a fixed stroke
template in the unit square, perturbed per sample (control-point wobble, rotation,
scale, shear, translation, stroke width), drawn at 4x resolution and downsampled
for anti-aliasing. The grey digits are then coloured with the Colored-MNIST
protocol (``protocol.py``). Everything follows from one seed, and the result is
cached so a second load is a memory-mapped read.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from PIL import Image, ImageDraw

from rest.core.data.base import BiasedData, cache_dir, cached
from rest.core.data.protocol import COLOUR_JITTER, assign_bias, colourise

log = logging.getLogger(__name__)

SIZE = 28
SUPERSAMPLE = 4
PER_CLASS = {"train": 1000, "valid": 150, "test": 100}
VERSION = 1  # bump when rendering changes, so stale caches are not reused


def _arc(
    cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 12
) -> list[tuple[float, float]]:
    """Points on an ellipse from angle start to stop (degrees, 0 = right, 90 = down)."""
    angles = np.linspace(math.radians(start), math.radians(stop), n)
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Stroke templates: each digit is a list of polylines in the unit square (y down).
TEMPLATES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc(0.5, 0.5, 0.27, 0.4, 0, 360, 20)],
    1: [[(0.36, 0.25), (0.52, 0.1), (0.52, 0.9)]],
    2: [_arc(0.5, 0.32, 0.25, 0.22, 190, 360, 10) + [(0.72, 0.42), (0.25, 0.9), (0.78, 0.9)]],
    3: [_arc(0.48, 0.3, 0.24, 0.2, 200, 450, 12), _arc(0.48, 0.7, 0.26, 0.2, 270, 520, 12)],
    4: [[(0.66, 0.9), (0.66, 0.1), (0.2, 0.64), (0.82, 0.64)]],
    5: [[(0.75, 0.12), (0.32, 0.12), (0.29, 0.45)] + _arc(0.5, 0.65, 0.26, 0.23, 230, 500, 12)],
    6: [[(0.68, 0.12), (0.42, 0.3), (0.27, 0.62)], _arc(0.5, 0.67, 0.23, 0.22, 0, 360, 16)],
    7: [[(0.2, 0.12), (0.8, 0.12), (0.42, 0.9)]],
    8: [_arc(0.5, 0.29, 0.19, 0.18, 0, 360, 14), _arc(0.5, 0.7, 0.23, 0.21, 0, 360, 16)],
    9: [_arc(0.5, 0.33, 0.22, 0.2, 0, 360, 16), [(0.72, 0.35), (0.6, 0.9)]],
}


def render_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One grey SIZE x SIZE uint8 image of `digit` with random handwriting variation."""
    big = SIZE * SUPERSAMPLE
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.7, 1.0)
    shear = rng.uniform(-0.25, 0.25)
    shift = rng.uniform(-0.08, 0.08, size=2)
    width = rng.uniform(1.6, 3.4) * SUPERSAMPLE
    cos, sin = math.cos(angle), math.sin(angle)
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in TEMPLATES[digit]:
        pts = np.asarray(stroke) + rng.normal(0, 0.025, size=(len(stroke), 2))
        x, y = pts[:, 0] - 0.5, pts[:, 1] - 0.5
        x = x + shear * y
        xr, yr = cos * x - sin * y, sin * x + cos * y
        px = (0.5 + scale * xr + shift[0]) * big
        py = (0.5 + scale * yr + shift[1]) * big
        draw.line(list(zip(px.tolist(), py.tolist())), fill=255, width=int(round(width)), joint="curve")
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.uint8)


def _grey_split(n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(y)
    grey = np.stack([render_digit(int(d), rng) for d in y])
    return grey, y


def build_colored_digits(conflict_pct: float, seed: int = 0, per_class: dict[str, int] | None = None) -> dict:
    """Arrays for the three splits: train and valid biased at conflict_pct, test unbiased.

    The grey digits depend only on the seed, so every conflict ratio shares the same
    drawings and differs only in which samples are conflicting.
    """
    per_class = per_class or PER_CLASS
    out = {}
    for i, split in enumerate(("train", "valid", "test")):
        grey, y = _grey_split(per_class[split], np.random.default_rng([seed, i]))
        bias_rng = np.random.default_rng([seed, i, int(round(conflict_pct * 100))])
        b = assign_bias(y, None if split == "test" else conflict_pct, bias_rng)
        out[split] = (colourise(grey, b, bias_rng, COLOUR_JITTER), y, b)
    return out


def load_colored_digits(conflict_pct: float, root: str | None = None, seed: int = 0) -> BiasedData:
    """Load (building and caching on first use) the embedded dataset."""
    del root  # embedded: nothing to read
    sizes = "-".join(str(PER_CLASS[s]) for s in ("train", "valid", "test"))
    path = cache_dir() / f"colored_digits-v{VERSION}-s{seed}-n{sizes}-{conflict_pct:g}pct"

    def build():
        log.info("generating colored_digits at %g%% conflicting (seed %d), cached in %s", conflict_pct, seed, path)
        return build_colored_digits(conflict_pct, seed), {
            "dataset": "colored_digits",
            "conflict_pct": conflict_pct,
            "seed": seed,
        }

    return cached(path, "colored_digits", conflict_pct, build)
