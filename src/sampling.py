"""Drawing images from a generator: fixed, seeded latents and batch-by-batch generation.

A conditional generator (labelled data: :func:`src.networks.generator_classes` names its
classes) takes a class label per image beside the latent; :func:`run_generator` calls
either kind, and without labels a conditional generator draws a balanced mix of every
class (:func:`balanced_labels`).
"""
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


def num_classes(generator) -> int:
    """How many classes ``generator`` draws (0: unconditional)."""
    from src.networks import generator_classes
    return len(generator_classes(generator))


def balanced_labels(n: int, classes: int) -> np.ndarray:
    """Labels 0, 1, ..., classes - 1, 0, 1, ... (n of them, int32): every class equally often."""
    return (np.arange(n) % max(classes, 1)).astype(np.int32)


def run_generator(generator, z: np.ndarray, labels: np.ndarray | None = None, training: bool = False):
    """``generator``'s images for latents ``z``: a conditional one also gets ``labels``
    (int32, one per latent; None: the balanced mix of :func:`balanced_labels`)."""
    classes = num_classes(generator)
    if not classes:
        if labels is not None:
            raise ValueError("labels given to an unconditional generator")
        return generator(z, training=training)
    if labels is None:
        labels = balanced_labels(len(z), classes)
    return generator([z, np.asarray(labels, np.int32)], training=training)


def generate_batches(generator, n: int, latent_dim: int, seed: int, batch_size: int,
                     truncation: float | None = None, labels: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Yield generated images (float32, data range) ``batch_size`` at a time; memory stays flat.

    Batch ``i`` uses latents drawn from ``(seed, i)``, so the images do not depend on how
    many are asked for: the first 100 of 10,000 equal the 100 of a run asking for 100.
    A conditional generator draws image ``k`` of class ``labels[k]`` (int32, n of them;
    None: :func:`balanced_labels`).
    """
    classes = num_classes(generator)
    if classes and labels is None:
        labels = balanced_labels(n, classes)
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        z = latents(batch_size, latent_dim, seed=[seed, start // batch_size], truncation=truncation)[:count]
        batch_labels = None if labels is None else labels[start:start + count]
        yield np.asarray(run_generator(generator, z, batch_labels), dtype=np.float32)


def generate_images(generator, n: int, latent_dim: int, seed: int, batch_size: int = 500,
                    truncation: float | None = None, labels: np.ndarray | None = None) -> np.ndarray:
    """``n`` generated images as one float32 array (n, H, W, C) in the data range."""
    return np.concatenate(list(generate_batches(generator, n, latent_dim, seed, batch_size, truncation, labels)),
                          axis=0)


def grid_inputs(count: int, columns: int, classes: int, latent_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The latents (and labels) of a fixed sample grid: ``(z, labels)``.

    Unconditional (``classes`` 0): ``count`` latents from ``seed``, labels None. Conditional:
    one row per class, ``columns`` images each (``count`` is not used), every row with its
    own latents, so row ``c`` of one snapshot compares with row ``c`` of any other.
    """
    if not classes:
        return latents(count, latent_dim, seed), None
    return latents(classes * columns, latent_dim, seed), np.repeat(np.arange(classes, dtype=np.int32), columns)


def to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map images from ``value_range`` to uint8 pixels (rounded, clipped)."""
    lo, hi = value_range
    scaled = (np.asarray(images, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
