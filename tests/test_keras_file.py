"""Keras files with fixed bytes: the same weights give the same file, and it loads back."""
from __future__ import annotations

import time
import zipfile

import numpy as np


def _model(seed: int):
    import keras

    keras.backend.clear_session()  # the same automatic layer names, as in a fresh process
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])


def test_same_weights_same_bytes_and_it_loads(tmp_path):
    import keras

    from src.keras_file import DATE_SAVED, save_model

    a = _model(0)
    save_model(a, tmp_path / "a.keras")
    time.sleep(1.1)  # another second on the clock Keras stamps
    b = _model(0)  # another object: other memory addresses, other shared-object ids
    save_model(b, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as archive:
        assert DATE_SAVED in archive.read("metadata.json").decode()
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    loaded = keras.models.load_model(tmp_path / "a.keras", compile=False)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), a.predict_on_batch(x))
    save_model(_model(1), tmp_path / "c.keras")
    assert (tmp_path / "c.keras").read_bytes() != (tmp_path / "a.keras").read_bytes()  # other weights
