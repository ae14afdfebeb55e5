"""95% intervals for the quality numbers, so that a reader of ``dvc metrics diff`` can tell
progress from noise.

Each interval comes one of these ways: the first three picked per metric by what each costs,
the last (``evaluate.draws`` > 1) in place of them all:

- **Bootstrap** (FID, Frechet distance on any features, classifier score, class KL): the
  generated and the reference samples are both resampled with replacement ``resamples``
  times (FID: in 100 blocks of rows, see :func:`frechet_intervals`); the interval is the estimate +- 1.96 x the standard deviation of the
  replicates (the "normal" bootstrap interval). Not the percentile interval: resampling
  with replacement repeats images, which raises FID by about its small-sample bias, so
  the replicates sit above the estimate and a percentile interval would miss it.
  Replicates reuse the features (no network runs again): one weighted covariance per
  set and replicate.
- **Disjoint folds** (KID, SWD): both sets are split (seeded) into ``folds`` disjoint
  parts and the metric is computed on each pair of parts. For a statistic that is
  close to a mean over samples (both are, to first order), the standard error of the
  full-sample value is std(fold values) / sqrt(folds); the interval is the estimate
  +- t(0.975, folds - 1) x that. It costs about one more evaluation of the metric, where
  a bootstrap of KID or SWD would cost ``resamples`` of them.
- **Mean over classes** (``intra_fid``, ``intra_fd_random``, ``intra_swd``): the classes
  are disjoint samples measured with independent resamples or folds, so their errors are
  independent and the standard error of the mean of C per-class values is
  sqrt(sum of the squared per-class standard errors) / C. :func:`mean_interval` takes each
  class's half-width (its interval's upper side, never clipped) for 1.96 x its standard
  error: exact for the bootstrap ones, a little wide for fold ones (t > 1.96).

- **Mean over draws** (``evaluate.draws`` > 1): the whole evaluation runs on K splits of the
  real images, each with its own latents; every number is the mean of its K values and its
  interval mean +- t(0.975, K-1) x std / sqrt(K), never narrower than the draws' own
  intervals allow and inside their hull (:func:`over_draws`). That interval holds what one
  draw cannot see: how far the figure moves with the split and the latents.

All functions are pure NumPy, deterministic for a seed, and return intervals as
``{"lo": ..., "hi": ...}`` (DVC flattens them to ``fid_ci95.lo``/``fid_ci95.hi`` columns in
``dvc metrics show/diff`` and ``dvc exp show``; it drops lists). Lower bounds of
distances are clipped at 0.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Z975 = 1.959964
FOLDS = 10
# Student t quantiles (0.975) for 1..30 degrees of freedom; above 30 the normal one.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else Z975


def _interval(estimate: float, half_width: float, lower: float | None = 0.0) -> dict[str, float]:
    lo = estimate - half_width
    if lower is not None:
        lo = max(lo, lower)
    return {"lo": float(lo), "hi": float(estimate + half_width)}


# ---------------------------------------------------------------------------- Frechet distance
def _weighted_centered(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of rows of ``x`` with counts ``w``, and the rows centred and scaled so that
    A.T @ A is the (N-1)-normalised weighted covariance."""
    n = w.sum()
    mu = (w @ x) / n
    a = (x - mu) * np.sqrt(w / (n - 1.0))[:, None]
    return mu, a


def _trace_sqrt_product(a1: np.ndarray, a2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for S1 = A1' A1, S2 = A2' A2, in the cheaper of two spaces.

    Feature space (D x D): the eigenvalues of sqrt(S1) S2 sqrt(S1). Sample space (fewer
    rows than features, e.g. 2048-d Inception features of a few hundred images): the sum of
    the singular values of A1 A2' (the eigenvalues of S1 S2 are its squared singular values).
    """
    d = a1.shape[1]
    if max(a1.shape[0], a2.shape[0]) < d:
        return float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    s1, s2 = a1.T @ a1, a2.T @ a2
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root @ s2 @ root
    eig = np.clip(np.linalg.eigvalsh((middle + middle.T) * 0.5), 0.0, None)
    return float(np.sqrt(eig).sum())


def _frechet_centered(mu1: np.ndarray, a1: np.ndarray, mu2: np.ndarray, a2: np.ndarray) -> float:
    """Frechet distance between Gaussians given by means and factors of their covariances (S = A'A)."""
    diff = mu1 - mu2
    value = diff @ diff + np.einsum("ij,ij->", a1, a1) + np.einsum("ij,ij->", a2, a2) \
        - 2.0 * _trace_sqrt_product(a1, a2)
    return max(float(value), 0.0)


_BLOCKS = 100             # resampling units of the Frechet bootstrap (see frechet_intervals)
_BLOCK_FLOATS = 60_000_000  # above this many floats of per-block second moments, resample rows instead


def _block_moments(x: np.ndarray, blocks: int, rng: np.random.Generator):
    """Per-block sizes, sums and second moments of the rows of ``x`` split (seeded) into ``blocks``."""
    groups = np.array_split(rng.permutation(len(x)), blocks)
    sizes = np.array([len(g) for g in groups], np.float64)
    sums = np.stack([x[g].sum(axis=0) for g in groups])
    seconds = np.stack([x[g].T @ x[g] for g in groups])
    return sizes, sums, seconds


def _resampled_gaussian(moments, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sizes, sums, seconds = moments
    n = counts @ sizes
    mu = (counts @ sums) / n
    second = np.tensordot(counts, seconds, axes=1)
    return mu, (second - n * np.outer(mu, mu)) / (n - 1.0)


def frechet_intervals(reference: np.ndarray, others: Sequence[np.ndarray], estimates: Sequence[float],
                      resamples: int, seed: int | Sequence[int]) -> list[dict[str, float]]:
    """Bootstrap 95% intervals of the Frechet distance of each of ``others`` to ``reference``.

    ``seed``: an int, or a sequence of ints (NumPy's ``default_rng``: e.g. a stream and a
    class index). Each replicate resamples the reference once and every other set, and computes every
    distance against that one reference resample. ``estimates`` are the full-sample values
    the intervals are centred on. The reference and each set draw from their own streams
    (``seed`` followed by 0 for the reference, 1 + j for set j), so a set's interval does not
    depend on how many sets are measured after it. The resampling units are 100 seeded blocks of rows (each
    row its own block in sets of up to 100): a replicate then costs a weighted sum of the
    blocks' second moments, not a pass over every feature, so 100 replicates of 10,000 x 128
    features take about a second. With wide features (2,048-d Inception) the blocks'
    moments would not fit in memory, and rows are resampled directly.
    """
    from src.metrics.frechet import frechet_distance

    ref = np.asarray(reference, np.float64)
    sets = [np.asarray(o, np.float64) for o in others]
    root = [int(s) for s in np.atleast_1d(seed)]
    rngs = [np.random.default_rng([*root, j]) for j in range(len(sets) + 1)]  # the reference's, then each set's
    d = ref.shape[1]
    values = np.empty((resamples, len(sets)))
    if max(min(len(x), _BLOCKS) for x in [ref, *sets]) * d * d <= _BLOCK_FLOATS:
        moments = [_block_moments(x, min(len(x), _BLOCKS), rng) for x, rng in zip([ref, *sets], rngs)]
        for b in range(resamples):
            draws = [rng.multinomial(len(m[0]), np.full(len(m[0]), 1.0 / len(m[0]))).astype(np.float64)
                     for m, rng in zip(moments, rngs)]
            mu_r, cov_r = _resampled_gaussian(moments[0], draws[0])
            for j in range(len(sets)):
                values[b, j] = frechet_distance(*_resampled_gaussian(moments[j + 1], draws[j + 1]), mu_r, cov_r)
    else:
        for b in range(resamples):
            w_ref = rngs[0].multinomial(len(ref), np.full(len(ref), 1.0 / len(ref))).astype(np.float64)
            mu_r, a_r = _weighted_centered(ref, w_ref)
            for j, x in enumerate(sets):
                w = rngs[j + 1].multinomial(len(x), np.full(len(x), 1.0 / len(x))).astype(np.float64)
                values[b, j] = _frechet_centered(*_weighted_centered(x, w), mu_r, a_r)
    return [_interval(est, Z975 * float(values[:, j].std(ddof=1))) for j, est in enumerate(estimates)]


# ---------------------------------------------------------------------------- statistics of one set
def bootstrap_interval(samples: np.ndarray, statistic: Callable[[np.ndarray], float], estimate: float,
                       resamples: int, seed: int | Sequence[int], lower: float | None = None) -> dict[str, float]:
    """Bootstrap 95% interval of ``statistic`` over the rows of ``samples`` (e.g. class probabilities)."""
    rng = np.random.default_rng(seed)
    n = len(samples)
    values = [statistic(samples[rng.integers(0, n, n)]) for _ in range(resamples)]
    return _interval(estimate, Z975 * float(np.std(values, ddof=1)), lower)


# ---------------------------------------------------------------------------- means over classes
def mean_interval(estimates: Sequence[float], intervals: Sequence[dict[str, float]],
                  lower: float | None = 0.0) -> dict[str, float]:
    """95% interval of the mean of independent ``estimates`` (one per class) from their own
    intervals: mean +- sqrt(sum h_i^2) / k, with h_i = hi_i - estimate_i (the upper half-width,
    which :func:`_interval` never clips)."""
    est = np.asarray(estimates, np.float64)
    half = np.array([ci["hi"] for ci in intervals], np.float64) - est
    return _interval(float(est.mean()), float(np.sqrt(np.sum(half ** 2))) / len(est), lower)


# ---------------------------------------------------------------------------- disjoint folds
def fold_indices(n: int, seed: int, folds: int = FOLDS) -> list[np.ndarray]:
    """A seeded split of ``range(n)`` into ``min(folds, n // 2)`` disjoint, near-equal parts."""
    k = max(2, min(folds, n // 2))
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def fold_interval(estimate: float, fold_values: Sequence[float], lower: float | None = 0.0) -> dict[str, float]:
    """estimate +- t(0.975, k-1) x std(fold values) / sqrt(k)."""
    v = np.asarray(fold_values, np.float64)
    k = len(v)
    if k < 2:
        return {"lo": float(estimate), "hi": float(estimate)}
    return _interval(estimate, t975(k - 1) * float(v.std(ddof=1)) / np.sqrt(k), lower)


# ---------------------------------------------------------------------------- means over draws
def _draws_interval(values: Sequence[float], intervals: Sequence[dict[str, float]]) -> dict[str, float]:
    """95% interval of the mean of one figure's K draws, from each draw's value and own interval.

    The draws are independent measurements (another split and latents each), so the mean's
    standard error is std(values) / sqrt(K), and the half-width t(0.975, K-1) x that; it is
    never narrower than the draws' own mean half-width / sqrt(K) (a few draws can agree by
    chance), and the interval stays inside the hull of the draws' intervals (which respect
    the metric's bounds: >= 0 for a distance, >= 1 for a classifier score, <= 1 for a share).
    A figure the draws do not move (a floor measured on the same images every time: it
    differs by float rounding only, under a thousandth of its own half-width) keeps the first
    draw's interval: the draws add nothing to it."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    own_halves = np.array([ci["hi"] for ci in intervals], np.float64) - v
    if np.ptp(v) <= 1e-3 * own_halves.min():  # float noise only
        return dict(intervals[0])
    own = own_halves.mean() / np.sqrt(len(v))
    half = max(t975(len(v) - 1) * float(v.std(ddof=1)) / np.sqrt(len(v)), float(own))
    return {"lo": max(mean - half, min(ci["lo"] for ci in intervals)),
            "hi": min(mean + half, max(ci["hi"] for ci in intervals))}


def over_draws(results: Sequence[dict]) -> dict:
    """One metrics dict from the dicts of K draws: every key any draw has, in the order of
    first appearance; each number the mean over the draws that have it (a number equal in
    every draw, such as ``num_samples``, stays as it is; a count that differs, such as a
    class's images in one half, becomes its mean); each ``<key>_ci95`` the interval of that
    mean (:func:`_draws_interval`); strings the distinct ones, joined by "; " (a note that
    names other left-out classes in another draw); nested dicts (``per_class``) the same,
    key by key."""
    keys = list(dict.fromkeys(key for r in results for key in r))
    out = {}
    for key in keys:
        have = [r for r in results if key in r]
        values = [r[key] for r in have]
        base = key[:-5] if key.endswith("_ci95") else None
        if base is not None and all(isinstance(r.get(base), float) for r in have):
            out[key] = _draws_interval([r[base] for r in have], values) if len(have) > 1 else values[0]
        elif isinstance(values[0], dict):
            out[key] = over_draws(values)
        elif isinstance(values[0], str):
            out[key] = "; ".join(dict.fromkeys(values))
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool) and \
                any(v != values[0] for v in values):
            out[key] = float(np.mean(values))
        else:
            out[key] = values[0]
    return out
