"""Sample-quality metrics for the GAN: Frechet distance, KID, classifier score/coverage, SWD.

Every function here is deterministic for a given seed. The feature networks live in
:mod:`src.metrics.classifier` (a small MNIST CNN), :mod:`src.metrics.randnet` (a fixed
random conv net for folder data) and :mod:`src.metrics.inception` (InceptionV3 pool
features). This file imports nothing: a stage that imports one metric module depends on
that module alone.
"""
