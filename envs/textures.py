"""Procedural, tileable textures for the generated worlds (PNG bytes for MJCF assets).

Noise is made by filtering white noise in the Fourier domain, which makes it
periodic, so ground and wall textures repeat without seams.
"""

from __future__ import annotations

import cv2
import numpy as np


def periodic_noise(rng: np.random.Generator, size: int, beta: float = 2.0, aniso: float = 1.0) -> np.ndarray:
    """Tileable 1/f^beta noise in [0, 1], shape (size, size). aniso > 1 stretches it along y."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None] * aniso
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = np.fft.fft2(white) / f ** (beta / 2)
    spectrum[0, 0] = 0.0
    noise = np.fft.ifft2(spectrum).real
    noise -= noise.min()
    return noise / max(noise.max(), 1e-9)


def tint(noise: np.ndarray, dark: tuple, light: tuple) -> np.ndarray:
    """Map noise in [0, 1] to colours between two RGB triplets in [0, 1]. Returns uint8 (H, W, 3)."""
    dark, light = np.asarray(dark, float), np.asarray(light, float)
    rgb = dark + noise[..., None] * (light - dark)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def jitter(rng: np.random.Generator, rgb: tuple, amount: float = 0.08) -> tuple:
    """A colour near ``rgb``: every world looks a little different."""
    return tuple(np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0, 1))


def grass(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    base = jitter(rng, (0.22, 0.42, 0.15))
    coarse, fine = periodic_noise(rng, size, 2.6), periodic_noise(rng, size, 0.8)
    return tint(0.65 * coarse + 0.35 * fine, np.asarray(base) * 0.55, np.asarray(base) * 1.35)


def dirt(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    base = jitter(rng, (0.48, 0.36, 0.24))
    return tint(periodic_noise(rng, size, 1.6), np.asarray(base) * 0.7, np.asarray(base) * 1.25)


def bark(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    base = jitter(rng, (0.33, 0.23, 0.15))
    return tint(periodic_noise(rng, size, 2.0, aniso=6.0), np.asarray(base) * 0.6, np.asarray(base) * 1.3)


def stone(rng: np.random.Generator, rgb: tuple, size: int = 64) -> np.ndarray:
    return tint(periodic_noise(rng, size, 1.8), np.asarray(rgb) * 0.65, np.asarray(rgb) * 1.3)


def bricks(rng: np.random.Generator, rgb: tuple, size: int = 64, rows: int = 8) -> np.ndarray:
    """Running-bond bricks of colour ``rgb`` with grey mortar and some noise."""
    img = tint(periodic_noise(rng, size, 1.2), np.asarray(rgb) * 0.75, np.asarray(rgb) * 1.15)
    mortar = (np.array([0.72, 0.70, 0.66]) * 255).astype(np.uint8)
    h = size // rows
    for r in range(rows):
        img[r * h : r * h + 1] = mortar
        offset = (h if r % 2 else 0) + 0
        for c in range(offset, size + offset, 2 * h):
            img[r * h : (r + 1) * h, c % size : c % size + 1] = mortar
    return img


def stripes(rng: np.random.Generator, rgb1: tuple, rgb2: tuple, size: int = 64, n: int = 4) -> np.ndarray:
    """Bold stripes: distinct patterns that make maze regions recognisable."""
    band = (np.arange(size) * n // size) % 2
    img = np.where(band[None, :, None] == 0, np.asarray(rgb1), np.asarray(rgb2)) * np.ones((size, 1, 1))
    noise = periodic_noise(rng, size, 1.0)[..., None]
    return (np.clip(img * (0.85 + 0.3 * noise), 0, 1) * 255).astype(np.uint8)


def png(img: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()
