"""A small CNN digit classifier (28x28x1) and the metrics computed from it.

The classifier plays the role Inception plays for natural images: its penultimate
layer gives the features for FID/KID on MNIST-like data, and its softmax gives the
classifier score (the Inception-score analogue) and the class coverage.

Images fed to the classifier are float32 in [0, 1], shape (N, 28, 28, 1);
:func:`to_unit_range` is the one place that maps from the data range.
"""
from __future__ import annotations

import numpy as np

from src.quiet import filtered_stderr

FEATURES_LAYER = "features"
PROBS_LAYER = "probs"
NUM_CLASSES = 10


def to_unit_range(images: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Map images from ``value_range`` (or uint8 when the dtype is uint8) to float32 [0, 1], NHWC."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        out = images.astype(np.float32) / 255.0
    else:
        lo, hi = value_range
        out = (images.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
        out = np.clip(out, 0.0, 1.0)
    if out.ndim == 3:
        out = out[..., None]
    return out


def build_classifier(input_shape=(28, 28, 1), num_classes: int = NUM_CLASSES):
    """Two conv blocks (32 and 64 5x5 filters, batch norm, max pool), a 128-unit feature layer."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, 5, use_bias=False)(inputs)          # 24x24
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)                              # 12x12
    x = layers.Conv2D(64, 5, use_bias=False)(x)               # 8x8
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)                              # 4x4
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name=PROBS_LAYER)(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def train_classifier(train_images, train_labels, test_images, test_labels, params, seed: int,
                     verbose: int = 0):
    """Train the CNN; returns ``(model, test_accuracy)``.

    ``params`` is a ``ClassifierParams`` (epochs, batch_size, learning_rate). Images may be
    uint8 (0..255) or float in [0, 1]. Seeded and deterministic (op determinism on).
    """
    import keras

    from src.determinism import make_deterministic

    make_deterministic(seed)
    x_train = to_unit_range(train_images)
    x_test = to_unit_range(test_images)
    y_train = np.asarray(train_labels, np.int32)
    y_test = np.asarray(test_labels, np.int32)
    num_classes = int(max(y_train.max(), y_test.max()) + 1) if len(y_train) else NUM_CLASSES
    num_classes = max(num_classes, NUM_CLASSES)

    model = build_classifier(x_train.shape[1:], num_classes)
    steps = int(np.ceil(len(x_train) / params.batch_size)) * params.epochs
    schedule = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=max(steps, 1),
                                                      alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Keras' array input pipeline makes TensorFlow 2.21 log a harmless E-level line
    # ("NodeDef mentions attribute use_unbounded_threadpool ..."): kept out of the log.
    with filtered_stderr():
        model.fit(x_train, y_train, batch_size=params.batch_size, epochs=params.epochs,
                  shuffle=True, verbose=verbose)
    probs = predict_probs(model, x_test, batch_size=1000)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y_test))
    return model, accuracy


def feature_model(model):
    """A Keras Model giving (penultimate features, softmax probabilities) of ``model``."""
    import keras

    return keras.Model(model.inputs, [model.get_layer(FEATURES_LAYER).output,
                                      model.get_layer(PROBS_LAYER).output])


def features_and_probs(model, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate-layer features (N, 128) and softmax probabilities (N, 10) of [0, 1] images.

    ``model`` is the trained classifier (or a model from :func:`feature_model`).
    """
    net = model if len(model.outputs) == 2 else feature_model(model)
    images = to_unit_range(images)
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        f, p = net.predict_on_batch(images[start:start + batch_size])
        feats.append(np.asarray(f, np.float32))
        probs.append(np.asarray(p, np.float32))
    if not feats:
        return np.zeros((0, 128), np.float32), np.zeros((0, NUM_CLASSES), np.float32)
    return np.concatenate(feats), np.concatenate(probs)


def predict_probs(model, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    images = to_unit_range(images)
    out = [np.asarray(model.predict_on_batch(images[s:s + batch_size]))
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out)


def classifier_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))): the number of classes for confident, balanced
    predictions, 1 when every sample gets the same prediction."""
    p = np.asarray(probs, np.float64)
    p_y = p.mean(axis=0, keepdims=True)
    kl = np.sum(p * (np.log(p + eps) - np.log(p_y + eps)), axis=1)
    return float(np.exp(kl.mean()))


def class_coverage(probs: np.ndarray, threshold: float = 0.02) -> tuple[int, float]:
    """(number of classes that get >= ``threshold`` of the argmax predictions,
    KL(predicted-class histogram || uniform) in nats; 0 for a perfectly balanced set)."""
    p = np.asarray(probs)
    k = p.shape[1]
    counts = np.bincount(np.argmax(p, axis=1), minlength=k).astype(np.float64)
    share = counts / max(counts.sum(), 1.0)
    covered = int(np.sum(share >= threshold))
    nz = share > 0
    kl = float(np.sum(share[nz] * np.log(share[nz] * k)))
    return covered, kl
