"""InceptionV3 pool features (2048-d) for FID/KID on RGB folder data.

Weights come from the local file named by ``evaluate.inception_weights`` when it is set,
else Keras downloads the ImageNet weights. When the download is impossible (no network),
:func:`load_inception` returns ``None`` and the caller leaves FID/KID out with a note:
never a crash, never a made-up number.
"""
from __future__ import annotations

import os

import numpy as np

from src.errors import UserError

INPUT_SIZE = 299
PARAMS_KEY = "evaluate.inception_weights"


def load_inception(weights_path: str = ""):
    """The feature network, or ``None`` when the ImageNet weights cannot be downloaded.

    A set but missing ``weights_path`` is a UserError naming the params key; ``"off"``
    skips Inception on purpose (no download attempt), for example in tests.
    """
    import keras

    if weights_path == "off":
        return None
    if weights_path:
        if not os.path.isfile(weights_path):
            raise UserError(f"params key '{PARAMS_KEY}' names '{weights_path}', which does not exist "
                            "(set it to a local InceptionV3 no-top weights file, or to '' to download)")
        weights = weights_path
    else:
        weights = "imagenet"
    try:
        return keras.applications.InceptionV3(include_top=False, pooling="avg", weights=weights,
                                              input_shape=(INPUT_SIZE, INPUT_SIZE, 3))
    except Exception as exc:  # noqa: BLE001 - any download failure means "no Inception here"
        if weights_path:
            raise UserError(f"params key '{PARAMS_KEY}': could not load InceptionV3 weights from "
                            f"'{weights_path}' ({type(exc).__name__}: {exc})") from None
        return None


def preprocess(images: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)):
    """Images in ``value_range`` (NHWC, 1 or 3 channels) -> float32 299x299x3 in [-1, 1].

    Resizing is antialiased and stays in float (no requantizing to uint8).
    """
    import tensorflow as tf

    lo, hi = value_range
    x = (np.asarray(images, np.float32) - np.float32(lo)) / np.float32(hi - lo)
    x = np.clip(x, 0.0, 1.0)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    x = tf.image.resize(x, (INPUT_SIZE, INPUT_SIZE), method="bilinear", antialias=True)
    return x * 2.0 - 1.0


def inception_features(model, images: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0),
                       batch_size: int = 50) -> np.ndarray:
    """2048-d average-pool features of ``images`` (float32)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size], value_range)
        out.append(np.asarray(model(batch, training=False), np.float32))
    return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)
