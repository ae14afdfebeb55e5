"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, over random subsets."""
from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for every row pair (float64)."""
    k = x @ y.T
    k *= 1.0 / x.shape[1]
    k += 1.0
    cube = k * k
    cube *= k  # x*x*x, much faster than ** 3 (a pow() call per element)
    return cube


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 between the distributions of rows of ``x`` and ``y``.

    The within-set sums leave out the diagonal (k(x_i, x_i)), which is what makes the
    estimate unbiased: its expectation is 0 when both sets come from one distribution.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("mmd2_unbiased needs at least 2 rows in each set")
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    sum_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    sum_yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * kxy.mean())


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID between feature sets ``f1`` and ``f2``: (mean, spread) over random subsets.

    Each of ``subsets`` rounds draws ``subset_size`` rows of each set without replacement
    (capped at the set sizes) with a generator seeded by ``seed``. The spread is the
    standard deviation of the subset values (ddof=0), as torch-fidelity's
    ``kernel_inception_distance_std``: how much one subset's value varies, not the error of
    the mean (see :func:`kid_fold_values` for that); 0.0 when there is one subset.
    """
    f1 = np.asarray(f1, np.float64)
    f2 = np.asarray(f2, np.float64)
    size = min(int(subset_size), f1.shape[0], f2.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(int(subsets), np.float64)
    for i in range(int(subsets)):
        a = f1[rng.choice(f1.shape[0], size, replace=False)]
        b = f2[rng.choice(f2.shape[0], size, replace=False)]
        values[i] = mmd2_unbiased(a, b)
    return float(values.mean()), float(values.std())


def kid_fold_values(f1: np.ndarray, f2: np.ndarray, folds: list[np.ndarray],
                    ref_folds: list[np.ndarray]) -> list[float]:
    """Unbiased MMD^2 of each pair of disjoint parts (``folds`` of ``f1``, ``ref_folds`` of
    ``f2``): the values :func:`src.metrics.intervals.fold_interval` turns into an interval."""
    f1 = np.asarray(f1, np.float64)
    f2 = np.asarray(f2, np.float64)
    return [mmd2_unbiased(f1[a], f2[b]) for a, b in zip(folds, ref_folds)]
