"""Fast tests of the digit classifier on a tiny synthetic 10-class set (no MNIST)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import draw_digits  # noqa: E402

from src.config import ClassifierParams
from src.metrics import classifier as cls


TINY = ClassifierParams(epochs=1, batch_size=32, learning_rate=3e-3)


@pytest.fixture(scope="module")
def data():
    return draw_digits(480, seed=0), draw_digits(200, seed=1)


@pytest.fixture(scope="module")
def trained(data):
    (x, y), (xt, yt) = data
    model, acc = cls.train_classifier(x, y, xt, yt, TINY, seed=0)
    return model, acc, xt, yt


def test_train_one_epoch_features_and_probs_shapes(trained):
    model, acc, xt, yt = trained
    assert 0.0 <= acc <= 1.0
    assert acc > 0.3  # drawn digits are easy; one short epoch already learns something
    feats, probs = cls.features_and_probs(model, xt[:130], batch_size=50)  # uint8 input, ragged last batch
    assert feats.shape == (130, 128) and probs.shape == (130, 10)
    assert feats.dtype == np.float32 and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (feats >= 0).all()  # ReLU features
    # the same images given as floats in [-1, 1] with the data range map to the same outputs
    f2, p2 = cls.features_and_probs(cls.feature_model(model),
                                    cls.to_unit_range(xt[:130].astype(np.float32) / 127.5 - 1.0, (-1.0, 1.0)))
    assert np.allclose(p2, probs, atol=1e-5) and np.allclose(f2, feats, atol=1e-4)


def test_saved_model_roundtrip(trained, tmp_path):
    import keras

    model, _, xt, _ = trained
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    a = cls.features_and_probs(model, xt[:20])
    b = cls.features_and_probs(loaded, xt[:20])
    assert np.allclose(a[0], b[0], atol=1e-5) and np.allclose(a[1], b[1], atol=1e-6)


def test_training_is_deterministic_for_a_seed(data, trained):
    (x, y), (xt, yt) = data
    m1, a1 = trained[0], trained[1]
    m2, a2 = cls.train_classifier(x, y, xt, yt, TINY, seed=0)
    assert a1 == a2
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)


def test_to_unit_range():
    u8 = np.array([[0, 255]], np.uint8).reshape(1, 1, 2)
    assert cls.to_unit_range(u8).tolist() == [[[[0.0], [1.0]]]]
    x = np.array([-1.0, 0.0, 1.0, 1.5], np.float32).reshape(1, 2, 2, 1)
    assert cls.to_unit_range(x, (-1.0, 1.0)).ravel().tolist() == [0.0, 0.5, 1.0, 1.0]
