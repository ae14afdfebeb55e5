"""A fixed random convolutional network: the feature network for folder data.

Untrained on purpose: its weights are drawn from ``seed`` with NumPy (He-normal scale), so
they depend on nothing but the seed, need no download, and are the same on every machine
and with every TensorFlow version. Random convolutional features are sensitive to colour,
texture and local structure (they rank blur and noise correctly; see tests/test_metrics.py)
but know nothing of object categories: a distance on them is a fixed yardstick to compare
runs on one data set, not a number to compare with published FIDs.

Input: images in [0, 1], any size, 1 or 3 channels (grey is repeated to RGB). Output:
256 features, the global average of the last of four 3x3 convolution blocks (strides
1, 2, 2, 2; LeakyReLU 0.2).
"""
from __future__ import annotations

import numpy as np

from src.metrics.classifier import FEATURES_LAYER

WIDTHS = (32, 64, 128, 256)
NAME = "random_conv"


def build_random_net(seed: int):
    """The network with weights drawn from ``seed`` (a Keras model: (N, H, W, 3) -> (N, 256))."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    convs = []
    for i, width in enumerate(WIDTHS):
        conv = layers.Conv2D(width, 3, strides=1 if i == 0 else 2, padding="same")
        convs.append(conv)
        x = layers.LeakyReLU(0.2)(conv(x))
    outputs = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    model = keras.Model(inputs, outputs, name=NAME)
    rng = np.random.default_rng([int(seed), 0x5EED])
    fan_in = 3
    for conv, width in zip(convs, WIDTHS):
        std = np.sqrt(2.0 / (1.0 + 0.2 ** 2) / (9 * fan_in))
        kernel = (rng.standard_normal((3, 3, fan_in, width)) * std).astype(np.float32)
        bias = (rng.standard_normal(width) * 0.1).astype(np.float32)
        conv.set_weights([kernel, bias])
        fan_in = width
    return model


def random_features(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Features (N, 256) float32 of [0, 1] images (N, H, W, 1 or 3)."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        out.append(np.asarray(model.predict_on_batch(batch), np.float32))
    return np.concatenate(out) if out else np.zeros((0, WIDTHS[-1]), np.float32)
