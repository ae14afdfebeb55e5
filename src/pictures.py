"""Pictures as bytes: grids of uint8 images, nearest-neighbour enlargement, PNG and GIF encoding.

Plain NumPy and Pillow, nothing of TensorFlow or of any stage: the train stage (the train
log's snapshot grids), the sample stage (:mod:`src.render`) and ``python -m src.generate``
all draw with these, so a change to how one stage renders reruns no other stage.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PAD = 2            # pixels between grid cells
PAD_VALUE = 128    # grey padding lines: visible on black (MNIST) and white backgrounds
GIF_FRAME_MS = 500


def display_scale(image_size: int, display_pixels: int) -> int:
    """The whole factor that brings ``image_size`` to at least ``display_pixels`` (1 if already there)."""
    return max(1, -(-display_pixels // image_size))


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of (N, H, W, C) images: each pixel becomes a scale x scale block."""
    if scale == 1:
        return np.asarray(images)
    return np.repeat(np.repeat(np.asarray(images), scale, axis=1), scale, axis=2)


def make_grid(images: np.ndarray, columns: int, pad: int = PAD, pad_value: int = PAD_VALUE,
              scale: int = 1) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) row by row into one (rows*H + gaps, cols*W + gaps, C) image.

    ``pad`` pixels of ``pad_value`` separate neighbouring cells (no border around the
    outside); cells after the last image are left at ``pad_value``. ``scale`` > 1 first
    enlarges every image by that whole factor (see :func:`upscale`).
    """
    images = upscale(images, scale)
    n, h, w, c = images.shape
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    grid = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = r * (h + pad), k * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 (H, W, 1) image as a greyscale 'L' picture, (H, W, 3) as 'RGB'."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif not (image.ndim == 3 and image.shape[-1] == 3) and image.ndim != 2:
        raise ValueError(f"cannot save an image of shape {image.shape} (need 1 or 3 channels)")
    return Image.fromarray(image)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image; deterministic (Pillow writes no timestamp)."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def read_png(path: Path, channels: int) -> np.ndarray:
    """A rendered PNG back as uint8 (H, W, channels)."""
    with Image.open(path) as picture:
        array = np.asarray(picture.convert("L" if channels == 1 else "RGB"))
    return array[..., None] if channels == 1 else array


def encode_gif(frames: list[np.ndarray]) -> bytes:
    pictures = [to_pil(f) for f in frames]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=GIF_FRAME_MS, loop=0)
    return buffer.getvalue()
