"""The ten corruptions of Corrupted CIFAR-10 (type 0), in numpy and Pillow only.

The bias label of a Corrupted CIFAR-10 image is the index of its corruption in
``CORRUPTIONS`` (Snow = 0 ... Saturate = 9, the LfF type-0 order). Hendrycks and
Dietterich's originals need assets downloaded at run time (frost photographs) and
packages this project does not depend on (scipy, scikit-image, wand), so each
corruption here is rebuilt from its description: the same kind of damage at five
increasing severities, not bit-identical pixels. Random corruptions take their
randomness from the ``rng`` they are given, so an image corrupted twice with the
same seed is identical.

Every function has one signature: ``(image, severity, rng) -> image`` with
H x W x 3 uint8 arrays in and out, severity 1..5.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
SEVERITIES = (1, 2, 3, 4, 5)


# ------------------------------------------------------------------ helpers


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _level(table: tuple, severity: int):
    """The parameters of one severity; a clear error instead of an IndexError."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity} is outside 1..5")
    return table[severity - 1]


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes, mirrored at the border.

    A sum of shifted copies: for 32 x 32 images and kernels of a few taps this is
    faster than an FFT and needs no scipy.
    """
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return x.astype(np.float32)


def _resize_float(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a 2-D float array (Pillow's 32-bit float mode)."""
    resized = Image.fromarray(x.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.array(resized, dtype=np.float32)  # a writable copy


def _fractal_noise(height: int, width: int, rng: np.random.Generator, roughness: float) -> np.ndarray:
    """Cloud-like noise in [0, 1]: random grids of doubling resolution, upsampled and summed.

    Octave k has amplitude roughness**-k, so a small roughness keeps fine detail
    (patchy fog) and a large one leaves only broad banks.
    """
    total = np.zeros((height, width), np.float32)
    cells, amplitude = 2, 1.0
    while cells <= 2 * max(height, width):
        total += amplitude * _resize_float(rng.uniform(-1, 1, (cells, cells)), height, width)
        cells, amplitude = cells * 2, amplitude / roughness
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def _motion_blur(x: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Average of copies trailing along `angle` (radians): a streak, like a falling flake.

    Copies wrap around the border, which suits textures such as snow.
    """
    steps = [(int(round(t * math.sin(angle))), int(round(t * math.cos(angle)))) for t in range(length)]
    return sum((np.roll(x, step, axis=(0, 1)) for step in steps), np.zeros_like(x)) / len(steps)


def _sample_bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """image (H x W x C) read at real-valued coordinates, mirrored at the border."""
    h, w = image.shape[:2]

    def mirror(v: np.ndarray, n: int) -> np.ndarray:
        period = 2 * (n - 1)
        v = np.abs(v) % period
        return np.where(v > n - 1, period - v, v)

    ys, xs = mirror(ys, h), mirror(xs, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    chroma = v - rgb.min(-1)
    s = np.where(v > 0, chroma / np.maximum(v, 1e-12), 0.0)
    safe = np.maximum(chroma, 1e-12)
    h = np.select([v == r, v == g], [((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4)
    h = np.where(chroma > 0, h / 6.0, 0.0)
    return np.stack([h, s, v], -1).astype(np.float32)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0] * 6.0, hsv[..., 1], hsv[..., 2]

    def channel(n: float) -> np.ndarray:
        k = (n + h) % 6
        return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)

    return np.stack([channel(5), channel(3), channel(1)], -1).astype(np.float32)


def _adjust_hsv(image: np.ndarray, channel: int, scale: float, offset: float) -> np.ndarray:
    hsv = _rgb_to_hsv(_unit(image))
    hsv[..., channel] = np.clip(hsv[..., channel] * scale + offset, 0, 1)
    return _uint8(_hsv_to_rgb(hsv))


# -------------------------------------------------------------- corruptions

# (flake size in pixels, share of pixels that seed a flake, streak length, how much the scene whitens)
_SNOW = ((1.0, 0.04, 3, 0.1), (1.2, 0.06, 4, 0.15), (1.4, 0.08, 4, 0.2), (1.6, 0.1, 5, 0.25), (1.8, 0.13, 6, 0.3))


def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Falling snow: the brightest spots of a noise field, smeared into streaks over a whitened scene."""
    size, share, length, whiten = _level(_SNOW, severity)
    h, w = image.shape[:2]
    field = _resize_float(rng.normal(0, 1, (max(2, int(h / size)), max(2, int(w / size)))), h, w)
    cut = np.quantile(field, 1 - share)  # a quantile, so the amount of snow does not depend on the draw
    flakes = np.where(field > cut, 0.6 + 0.4 * (field - cut) / max(float(field.max() - cut), 1e-6), 0)
    angle = rng.uniform(math.radians(60), math.radians(120))  # mostly downwards
    flakes = np.clip(_motion_blur(flakes, length, angle) * 1.8, 0, 1)[..., None]
    x = _unit(image)
    x = (1 - whiten) * x + whiten * np.maximum(x, x.mean(-1, keepdims=True) * 1.5 + 0.5)
    return _uint8(x * (1 - flakes) + flakes)


# (how much of the scene stays, how much frost covers it, ice crystals per 32 x 32 pixels)
_FROST = ((0.95, 0.3, 25), (0.85, 0.4, 40), (0.75, 0.5, 55), (0.7, 0.55, 70), (0.6, 0.65, 90))


def _frost_texture(h: int, w: int, rng: np.random.Generator, crystals: int) -> np.ndarray:
    """Ice on glass in [0, 1]: a hazy fractal base with branching needle crystals."""
    up = 4  # draw at 4x and downsample, so needles are anti-aliased
    canvas = Image.new("L", (w * up, h * up), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(crystals * h * w / 1024)):
        x, y = rng.uniform(0, w * up), rng.uniform(0, h * up)
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(rng.integers(2, 5)):  # a needle that bends a few times
            step = rng.uniform(2, 7) * up
            nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
            draw.line([(x, y), (nx, ny)], fill=int(rng.integers(140, 256)), width=up)
            x, y, heading = nx, ny, heading + rng.normal(0, 0.7)
    needles = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0
    haze = _fractal_noise(h, w, rng, roughness=1.6)
    return np.clip(0.55 * haze + _gaussian_blur(needles, 0.5) * 1.3, 0, 1)


def frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Frost on a window: the scene seen through a bluish-white ice texture."""
    keep, cover, crystals = _level(_FROST, severity)
    h, w = image.shape[:2]
    ice = _frost_texture(h, w, rng, crystals)[..., None] * np.array([0.86, 0.93, 1.0], np.float32)
    return _uint8(keep * _unit(image) + cover * ice)


# (fog density, roughness of the fog bank)
_FOG = ((0.35, 2.0), (0.55, 1.9), (0.75, 1.7), (0.95, 1.55), (1.2, 1.4))


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Fog: fractal cloud noise added, then the range rescaled so the scene loses contrast."""
    density, roughness = _level(_FOG, severity)
    x = _unit(image)
    peak = x.max()
    h, w = image.shape[:2]
    x = x + density * _fractal_noise(h, w, rng, roughness)[..., None]
    return _uint8(x * peak / (peak + density))


_BRIGHTNESS = (0.08, 0.16, 0.24, 0.32, 0.42)  # added to HSV value


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Over-exposure: HSV value raised, so colours keep their hue."""
    return _adjust_hsv(image, 2, 1.0, _level(_BRIGHTNESS, severity))


_CONTRAST = (0.6, 0.47, 0.35, 0.24, 0.14)  # fraction of the deviation from the mean kept


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Low contrast: every pixel pulled towards the image's mean intensity."""
    x = _unit(image)
    mean = x.mean()
    return _uint8((x - mean) * _level(_CONTRAST, severity) + mean)


# (blob size as blur sigma, threshold in standard deviations, opacity, liquid colour)
_WATER, _MUD = (0.35, 0.45, 0.65), (0.32, 0.22, 0.1)
_SPATTER = (
    (1.6, 1.5, 0.45, _WATER),
    (1.5, 1.3, 0.55, _WATER),
    (1.4, 1.1, 0.65, _WATER),
    (1.3, 1.0, 0.75, _MUD),
    (1.2, 0.85, 0.85, _MUD),
)


def spatter(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Splashes on the lens: blurred noise thresholded into blobs of water (mild) or mud (severe).

    The noise is standardised before thresholding, so every severity covers a
    predictable share of the image (about 7 % to 20 %) whatever the draw.
    """
    size, threshold, opacity, colour = _level(_SPATTER, severity)
    h, w = image.shape[:2]
    field = _gaussian_blur(rng.normal(0, 1, (h, w)).astype(np.float32), size)
    field = (field - field.mean()) / max(float(field.std()), 1e-6)
    mask = _gaussian_blur((field > threshold).astype(np.float32), 0.6)[..., None] * opacity
    x = _unit(image)
    liquid = 0.5 * np.asarray(colour, np.float32) + 0.5 * _gaussian_blur(x, 1.0) * np.asarray(colour, np.float32) / max(
        colour
    )
    return _uint8(x * (1 - mask) + liquid * mask)


# (largest displacement in pixels, smoothness sigma in pixels, affine jitter)
_ELASTIC = ((0.8, 3.0, 0.02), (1.2, 2.7, 0.03), (1.6, 2.4, 0.04), (2.0, 2.1, 0.05), (2.5, 1.8, 0.06))


def elastic(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Elastic transform: a small random affine warp plus a smooth random displacement field."""
    alpha, sigma, jitter = _level(_ELASTIC, severity)
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    a = np.eye(2) + rng.uniform(-jitter, jitter, (2, 2))  # rotation, scale and shear together
    y_aff = a[0, 0] * (ys - cy) + a[0, 1] * (xs - cx) + cy
    x_aff = a[1, 0] * (ys - cy) + a[1, 1] * (xs - cx) + cx

    def displacement() -> np.ndarray:
        d = _gaussian_blur(rng.uniform(-1, 1, (h, w)).astype(np.float32), sigma)
        return d * alpha / max(float(np.abs(d).max()), 1e-6)

    warped = _sample_bilinear(_unit(image), y_aff + displacement(), x_aff + displacement())
    return _uint8(warped)


_JPEG = (30, 20, 14, 10, 7)  # quality


def jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG artefacts: a round trip through Pillow's encoder at low quality."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=_level(_JPEG, severity))
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


_PIXELATE = (0.85, 0.72, 0.6, 0.48, 0.36)  # fraction of the resolution kept


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pixelation: box-downsampled, then blown back up with nearest-neighbour blocks."""
    h, w = image.shape[:2]
    f = _level(_PIXELATE, severity)
    small = Image.fromarray(image).resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8).copy()


# (saturation scale, saturation offset): washed out at 1-2, garish at 3-5
_SATURATE = ((0.4, 0.0), (0.15, 0.0), (2.0, 0.0), (4.0, 0.1), (8.0, 0.2))


def saturate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Saturation shift in HSV: colours drained at low severities, oversaturated at high ones."""
    scale, offset = _level(_SATURATE, severity)
    return _adjust_hsv(image, 1, scale, offset)


# The LfF type-0 order: the bias label of an image is the index of its corruption here.
CORRUPTIONS: dict[str, Corruption] = {
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "spatter": spatter,
    "elastic": elastic,
    "jpeg": jpeg,
    "pixelate": pixelate,
    "saturate": saturate,
}
CORRUPTION_NAMES: tuple[str, ...] = tuple(CORRUPTIONS)


def corrupt(image: np.ndarray, bias: int, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption number `bias` (the Corrupted CIFAR-10 bias label) to one image."""
    return CORRUPTIONS[CORRUPTION_NAMES[bias]](image, severity, rng)
