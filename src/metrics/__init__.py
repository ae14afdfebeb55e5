"""Sample-quality metrics for the GAN: Frechet distance, KID, classifier score/coverage, SWD.

Every function here is deterministic for a given seed. The feature networks (the rulers)
ship in ``data/rulers`` and run in NumPy through :mod:`src.metrics.ruler`;
:mod:`src.metrics.inception` gives InceptionV3 pool features for RGB folder data when its
weights are available. This file imports nothing: a stage that imports one metric module
depends on that module alone.
"""
