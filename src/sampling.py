"""Drawing images from a generator: fixed, seeded latents and batch-by-batch generation."""
from __future__ import annotations

from typing import Iterator

import numpy as np


def latents(n: int, latent_dim: int, seed: int, truncation: float | None = None) -> np.ndarray:
    """``n`` standard-normal latent vectors from ``seed`` (float32).

    With ``truncation`` t, values beyond +-t are redrawn until they fall inside
    (the truncation trick: less variety, cleaner samples).
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent_dim), dtype=np.float32)
    if truncation is not None:
        outside = np.abs(z) > truncation
        while outside.any():
            z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
            outside = np.abs(z) > truncation
    return z


def generate_batches(generator, n: int, latent_dim: int, seed: int, batch_size: int,
                     truncation: float | None = None) -> Iterator[np.ndarray]:
    """Yield generated images (float32, data range) ``batch_size`` at a time; memory stays flat.

    Batch ``i`` uses latents drawn from ``(seed, i)``, so the images do not depend on how
    many are asked for: the first 100 of 10,000 equal the 100 of a run asking for 100.
    """
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        z = latents(batch_size, latent_dim, seed=[seed, start // batch_size], truncation=truncation)[:count]
        yield np.asarray(generator(z, training=False), dtype=np.float32)


def generate_images(generator, n: int, latent_dim: int, seed: int, batch_size: int = 500,
                    truncation: float | None = None) -> np.ndarray:
    """``n`` generated images as one float32 array (n, H, W, C) in the data range."""
    return np.concatenate(list(generate_batches(generator, n, latent_dim, seed, batch_size, truncation)), axis=0)


def to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map images from ``value_range`` to uint8 pixels (rounded, clipped)."""
    lo, hi = value_range
    scaled = (np.asarray(images, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
