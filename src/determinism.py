"""Seeds and TensorFlow op determinism: the one place the pipeline switches them on.

Training (:func:`src.runtime.configure`, with ``train.deterministic``), the classifier
stage's MNIST CNN and the evaluate stage call :func:`make_deterministic` before they build
or run a model: with op determinism on, the same inputs give the same results (and bytes)
on the same machine (README: Determinism). Importing this module loads nothing heavy.
"""
from __future__ import annotations


def make_deterministic(seed: int | None = None, ops: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow (``keras.utils.set_random_seed``) unless ``seed`` is
    None, and with ``ops`` switch on TensorFlow op determinism for the rest of the process."""
    import keras
    import tensorflow as tf

    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    if ops:
        tf.config.experimental.enable_op_determinism()
