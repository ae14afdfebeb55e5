"""Frechet distance between two Gaussians fitted to feature sets (FID when the features are Inception's)."""
from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of ``features`` (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs a (N>=2, D) array, got shape {f.shape}")
    mu = f.mean(axis=0)
    centered = f - mu
    sigma = centered.T @ centered / (f.shape[0] - 1)
    return mu, sigma


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((s + s.T) * 0.5)
    w = np.clip(w, 0.0, None)  # tiny negative eigenvalues are round-off
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Tr((S1 S2)^(1/2)) equals the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix sqrt(S1) S2 sqrt(S1), which ``eigh`` computes stably (no complex
    parts, no scipy). Tiny negative eigenvalues from round-off are clipped to zero, and
    the result is clipped at zero.
    """
    mu1 = np.asarray(mu1, np.float64)
    mu2 = np.asarray(mu2, np.float64)
    s1 = np.atleast_2d(np.asarray(s1, np.float64))
    s2 = np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    root1 = _sqrtm_psd(s1)
    middle = root1 @ s2 @ root1
    eig = np.clip(np.linalg.eigvalsh((middle + middle.T) * 0.5), 0.0, None)
    trace_covmean = float(np.sqrt(eig).sum())
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_covmean)
    return max(value, 0.0)


def frechet_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between the Gaussian fits of two feature sets."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))
