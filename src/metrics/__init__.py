"""Sample-quality metrics for the GAN: Frechet distance, KID, classifier score/coverage, SWD.

Every function here is deterministic for a given seed. The feature networks (the rulers)
are shipped in ``data/rulers`` and run by :mod:`src.metrics.ruler`; :mod:`src.metrics.inception`
gives InceptionV3 pool features for RGB folder data when its weights are available.
"""
