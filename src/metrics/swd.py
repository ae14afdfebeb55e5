"""Sliced Wasserstein distance on multi-scale patches (as in Karras et al., Progressive GAN).

Each image set is decomposed into a Laplacian pyramid whose levels go from the full size
down to the smallest size >= ``min_size`` (16 by default; the last level is the low-pass
residual). From every level, ``patches_per_image`` random 7x7 neighbourhoods per image are
taken as descriptors, normalized per channel (each set separately), projected onto
random unit directions and compared with the 1-D Wasserstein distance of the sorted
projections. The distance per level is the mean over directions; the reported figures are
multiplied by 1e3 like the Progressive GAN code. Pure numpy, seeded.
"""
from __future__ import annotations

import numpy as np

_KERNEL_1D = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
PATCH = 7


def _blur(images: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Separable 5x5 Gaussian blur of NHWC images with reflected borders."""
    k = _KERNEL_1D * np.float32(np.sqrt(gain))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    h, w = images.shape[1], images.shape[2]
    rows = sum(k[i] * padded[:, i:i + h, :, :] for i in range(5))
    return sum(k[i] * rows[:, :, i:i + w, :] for i in range(5)).astype(np.float32)


def _down(images: np.ndarray) -> np.ndarray:
    return _blur(images)[:, ::2, ::2, :]


def _up(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    n, h, w, c = images.shape
    out = np.zeros((n, 2 * h, 2 * w, c), np.float32)
    out[:, ::2, ::2, :] = images
    out = out[:, :size[0], :size[1], :]
    return _blur(out, gain=4.0)  # 4x: three of every four pixels are inserted zeros


def level_sizes(size: int, min_size: int = 16) -> list[int]:
    """Sizes of the pyramid levels for square images of side ``size``."""
    sizes = [size]
    while (sizes[-1] + 1) // 2 >= min_size:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def laplacian_pyramid(images: np.ndarray, min_size: int = 16) -> list[np.ndarray]:
    """Laplacian pyramid of NHWC float images, finest level first."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or min(images.shape[1:3]) < PATCH:
        raise ValueError(f"SWD needs NHWC images of at least {PATCH}x{PATCH}, got shape {images.shape}")
    levels = []
    current = images
    for _ in level_sizes(min(images.shape[1:3]), min_size)[1:]:
        smaller = _down(current)
        levels.append(current - _up(smaller, current.shape[1:3]))
        current = smaller
    levels.append(current)
    return levels


def _patches(level: np.ndarray, per_image: int, rng: np.random.Generator) -> np.ndarray:
    n, h, w, c = level.shape
    ys = rng.integers(0, h - PATCH + 1, size=(n, per_image))
    xs = rng.integers(0, w - PATCH + 1, size=(n, per_image))
    offs = np.arange(PATCH)
    rows = (ys[:, :, None] + offs)[:, :, :, None]          # n, p, 7, 1
    cols = (xs[:, :, None] + offs)[:, :, None, :]          # n, p, 1, 7
    idx = np.arange(n)[:, None, None, None]
    patches = level[idx, rows, cols, :]                    # n, p, 7, 7, c
    return patches.reshape(n * per_image, PATCH, PATCH, c)


def descriptors(images: np.ndarray, patches_per_image: int = 64, seed: int = 0,
                min_size: int = 16, batch: int = 1000) -> list[np.ndarray]:
    """Normalized patch descriptors (M, 7*7*C) for every pyramid level of ``images``."""
    images = np.asarray(images, np.float32)
    rng = np.random.default_rng(seed)
    per_level: list[list[np.ndarray]] = []
    for start in range(0, images.shape[0], batch):
        levels = laplacian_pyramid(images[start:start + batch], min_size)
        if not per_level:
            per_level = [[] for _ in levels]
        for i, level in enumerate(levels):
            per_level[i].append(_patches(level, patches_per_image, rng))
    out = []
    for chunks in per_level:
        desc = np.concatenate(chunks)
        mean = desc.mean(axis=(0, 1, 2), keepdims=True, dtype=np.float64)
        std = desc.std(axis=(0, 1, 2), keepdims=True, dtype=np.float64)
        desc = (desc - mean) / np.maximum(std, 1e-8)
        out.append(desc.reshape(desc.shape[0], -1).astype(np.float32))
    return out


def _sorted_projection(desc: np.ndarray, dirs_t: np.ndarray) -> np.ndarray:
    proj = dirs_t @ desc.T                     # (chunk, M), C-contiguous
    proj.sort(axis=1)
    return proj


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    """Sum over rows of the mean |a - b| of sorted rows (b is overwritten)."""
    if a.shape[1] != b.shape[1]:  # compare on evenly spaced quantiles of the larger set
        if a.shape[1] > b.shape[1]:
            a, b = b, a
        idx = np.round(np.linspace(0, b.shape[1] - 1, a.shape[1])).astype(np.int64)
        b = b[:, idx]
    np.subtract(b, a, out=b)
    np.abs(b, out=b)
    return float(b.mean(axis=1, dtype=np.float64).sum())


def sliced_wasserstein(reference: np.ndarray, others: list[np.ndarray], projections: int = 512,
                       seed: int = 0, chunk: int = 64) -> list[float]:
    """Mean over random directions of the 1-D Wasserstein-1 distance between ``reference``
    descriptors and each of ``others`` (the reference's sorted projections are shared).

    Sets of different sizes are compared on evenly spaced quantiles of the larger one.
    Sorting runs on two threads (numpy releases the GIL); the result does not depend on it.
    """
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(seed)
    dim = reference.shape[1]
    dirs = rng.standard_normal((dim, projections)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    totals = np.zeros(len(others), np.float64)
    sets = [reference, *others]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, projections, chunk):
            dirs_t = np.ascontiguousarray(dirs[:, start:start + chunk].T)
            sorted_sets = list(pool.map(lambda d: _sorted_projection(d, dirs_t), sets))
            ref = sorted_sets[0]
            totals += list(pool.map(lambda o: _w1(ref, o), sorted_sets[1:]))
    return [float(t / projections) for t in totals]


def swd(reference_images: np.ndarray, others: list[np.ndarray], patches_per_image: int = 64,
        projections: int = 512, seed: int = 0, min_size: int = 16) -> list[dict]:
    """SWD (x1e3) between ``reference_images`` and each image set in ``others``.

    Returns, for each set, ``{'levels': {size: value, ...}, 'mean': value}`` with one value
    per pyramid level (keyed by the level's side length). All sets use the same patch
    positions stream seed and the same projection directions.
    """
    sizes = level_sizes(min(np.shape(reference_images)[1:3]), min_size)
    ref_desc = descriptors(reference_images, patches_per_image, seed, min_size)
    other_desc = [descriptors(o, patches_per_image, seed, min_size) for o in others]
    per_level = []
    for lvl in range(len(sizes)):
        per_level.append(sliced_wasserstein(ref_desc[lvl], [od[lvl] for od in other_desc],
                                            projections, seed + 1000 + lvl))
    results = []
    for j in range(len(others)):
        levels = {int(sizes[lvl]): per_level[lvl][j] * 1e3 for lvl in range(len(sizes))}
        results.append({"levels": levels, "mean": float(np.mean(list(levels.values())))})
    return results
