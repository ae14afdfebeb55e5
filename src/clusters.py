"""Labels for an unlabelled folder: k-means clusters of its images (``data.labels: clusters``).

A GAN conditioned on clusters of its own data draws more recognisable pictures and covers
more of the data than an unconditional one (Liu et al. 2020, "Diverse image generation via
self-conditioned GANs"; Sage et al. 2018, "Logo synthesis and manipulation with clustered
generative adversarial networks"). Here the clusters are computed once, in preprocess, on
each image average-pooled to at most ``POOLED`` pixels a side: what they group is colour and
layout (the yellow faces, the blue keycaps, the orange signs). Each cluster is then a class
like any other (a grid row, ``generate --class cluster-3``, per-class metrics); evaluate
draws them in the data's proportions, as it does any classes.

k-means++ seeding and Lloyd's iterations, ``RESTARTS`` times from one seeded generator; the
run with the least squared error wins, and its clusters are numbered largest first. Same
images and seed, same labels.
"""
from __future__ import annotations

import numpy as np

POOLED = 16      # features: each image average-pooled to at most this many pixels a side
RESTARTS = 5     # k-means runs from different seeds; the lowest within-cluster error wins
ITERATIONS = 100  # Lloyd iterations at most per run (it stops when no label changes)
CHUNK = 4096     # images per block of the distance computation (memory: CHUNK x k)


def class_names(k: int) -> list[str]:
    """``cluster-0`` .. ``cluster-{k-1}``, zero-padded so that name order is index order."""
    width = len(str(k - 1))
    return [f"cluster-{i:0{width}d}" for i in range(k)]


def features(images: np.ndarray) -> np.ndarray:
    """(n, h, w, c) images -> (n, d) float64 rows: each image average-pooled by the whole
    factor that brings its side to at most ``POOLED`` (edge rows a factor does not divide
    are dropped)."""
    n, h, w, c = images.shape
    f = max(1, -(-max(h, w) // POOLED))
    hh, ww = h // f * f, w // f * f
    x = np.asarray(images[:, :hh, :ww], np.float64).reshape(n, hh // f, f, ww // f, f, c)
    return x.mean(axis=(2, 4)).reshape(n, -1)


def _sq_distances(x: np.ndarray, x2: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, k) squared distances, in blocks of ``CHUNK`` rows."""
    c2 = (centres ** 2).sum(1)
    out = np.empty((len(x), len(centres)))
    for i in range(0, len(x), CHUNK):
        out[i:i + CHUNK] = x2[i:i + CHUNK, None] - 2.0 * x[i:i + CHUNK] @ centres.T + c2[None]
    return np.maximum(out, 0.0)


def _kmeans_once(x: np.ndarray, x2: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(len(x))]
    nearest = _sq_distances(x, x2, centres[:1])[:, 0]
    for j in range(1, k):  # k-means++: each next centre with probability proportional to squared distance
        total = nearest.sum()
        pick = rng.choice(len(x), p=nearest / total) if total > 0 else rng.integers(len(x))
        centres[j] = x[pick]
        nearest = np.minimum(nearest, _sq_distances(x, x2, centres[j:j + 1])[:, 0])
    labels = None
    for _ in range(ITERATIONS):
        d = _sq_distances(x, x2, centres)
        new = d.argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, x)
        for j in range(k):
            if counts[j]:
                centres[j] = sums[j] / counts[j]
            else:  # an empty cluster restarts at the image farthest from its centre
                far = int(d[np.arange(len(x)), labels].argmax())
                centres[j] = x[far]
    d = _sq_distances(x, x2, centres)
    labels = d.argmin(1)
    return labels, float(d[np.arange(len(x)), labels].sum())


def cluster_labels(images: np.ndarray, k: int, seed: int) -> np.ndarray:
    """An int32 cluster index per image of ``images`` (n, h, w, c), 0 the largest cluster."""
    return cluster_features(features(images), k, seed)


def cluster_features(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """An int32 cluster index per row of ``x`` (``features`` of the images), 0 the largest.

    ``k`` at most the number of rows; every cluster ends with at least one row when the
    rows hold at least ``k`` distinct values (else some stay empty: the caller checks).
    """
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be between 1 and the number of images ({len(x)}); got {k}")
    x = np.asarray(x, np.float64)
    x2 = (x ** 2).sum(1)
    rng = np.random.default_rng(seed)
    best, best_err = None, np.inf
    for _ in range(RESTARTS):
        labels, err = _kmeans_once(x, x2, k, rng)
        if err < best_err:
            best, best_err = labels, err
    counts = np.bincount(best, minlength=k)
    order = np.argsort(-counts, kind="stable")  # renumber: largest first, ties by old index
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return rank[best].astype(np.int32)
