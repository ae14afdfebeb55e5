"""Sample-quality metrics for the GAN: Frechet distance, KID, classifier score/coverage, SWD.

Every function here is deterministic for a given seed. The feature networks live in
:mod:`src.metrics.classifier` (a small MNIST CNN) and :mod:`src.metrics.inception`
(InceptionV3 pool features for RGB folder data).
"""
from src.metrics.frechet import feature_stats, frechet_distance, frechet_from_features
from src.metrics.kid import kernel_inception_distance, mmd2_unbiased

__all__ = ["feature_stats", "frechet_distance", "frechet_from_features",
           "kernel_inception_distance", "mmd2_unbiased"]
