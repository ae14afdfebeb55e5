"""The rulers: shipped feature networks, checked by sha256, run in NumPy (src/metrics/ruler.py)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, draw_digits, write_mnist
from src.config import ClassifierParams, parse_params
from src.errors import UserError
from src.metrics import classifier as cls
from src.metrics import ruler

SHIPPED = REPO / "data" / "rulers"


@pytest.fixture(scope="module")
def tiny_cnn():
    x, y = draw_digits(300, seed=1)
    xt, yt = draw_digits(100, seed=2)
    model, _ = cls.train_classifier(x, y, xt, yt, ClassifierParams(epochs=1, batch_size=32), seed=0)
    return model, xt


def test_numpy_digit_ruler_is_the_keras_network(tiny_cnn):
    model, images = tiny_cnn
    unit = cls.to_unit_range(images)
    want_f, want_p = cls.features_and_probs(model, unit)
    arrays = {k: v.astype(np.float64) for k, v in ruler.digit_arrays(model).items()}
    got_f, got_p = ruler.DigitRuler(arrays).features_and_probs(unit, batch_size=37)
    np.testing.assert_allclose(got_f, want_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_p, want_p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side, channels", [(16, 3), (21, 1)])
def test_numpy_random_ruler_is_the_keras_network(side, channels):
    import keras
    from keras import layers

    arrays = ruler.random_arrays(0)
    inputs = keras.Input(shape=(None, None, 3))
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    for i in range(len(ruler.RANDOM_WIDTHS)):
        conv = layers.Conv2D(ruler.RANDOM_WIDTHS[i], 3, strides=1 if i == 0 else 2, padding="same")
        x = layers.LeakyReLU(ruler.RANDOM_SLOPE)(conv(x))
        conv.set_weights([arrays[f"conv{i}/kernel"], arrays[f"conv{i}/bias"]])
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    images = np.random.default_rng(0).random((5, side, side, channels)).astype(np.float32)
    want = model.predict_on_batch(np.repeat(images, 3, axis=-1) if channels == 1 else images)
    got = ruler.RandomConvRuler({k: v.astype(np.float64) for k, v in arrays.items()}).features(images, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_shipped_rulers_match_their_recorded_sha256():
    sums = ruler.recorded_sums(SHIPPED)
    assert set(sums) == {ruler.DIGITS, ruler.RANDOM}
    for name, digest in sums.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    # the random net is exactly the one its seed draws (evaluate.classifier.seed as shipped)
    arrays = ruler.load_arrays_checked(SHIPPED, ruler.RANDOM)
    seed = parse_params({}).evaluate.classifier.seed
    for key, value in ruler.random_arrays(seed).items():
        np.testing.assert_array_equal(arrays[key], value.astype(np.float64), err_msg=key)


def test_shipped_digit_ruler_keeps_99_percent_on_the_mnist_test_set():
    from src.mnist import load_mnist

    images, labels = load_mnist(REPO / "data" / "raw" / "mnist", "test")
    _, probs = ruler.digit_ruler(SHIPPED).features_and_probs(images.astype(np.float32)[..., None] / 255.0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == labels))
    assert accuracy >= 0.99, accuracy


def test_missing_or_unlisted_ruler_is_one_line(tmp_path):
    ruler.write_rulers(tmp_path, {ruler.RANDOM: ruler.random_arrays(0)})
    with pytest.raises(UserError, match=f"no checksum recorded in {tmp_path / ruler.SUMS}"):
        ruler.digit_ruler(tmp_path)
    (tmp_path / ruler.RANDOM).unlink()
    with pytest.raises(UserError, match="ruler not found"):
        ruler.random_ruler(tmp_path)


# A fixed set of samples through the metrics, in a fresh process (TensorFlow imported, so its
# oneDNN switch is live): the printed numbers must not depend on TF_ENABLE_ONEDNN_OPTS.
_METRICS_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
sys.path.insert(0, {repo!r})
from src.config import parse_params
from src import evaluate as ev
from src.metrics import ruler
from src.metrics.classifier import classifier_score
from src.metrics.frechet import feature_stats, frechet_distance
tf.constant(1.0) + 1.0
rng = np.random.default_rng(0)
digits = rng.random((200, 28, 28, 1), dtype=np.float32)
other = np.clip(digits + rng.normal(0, 0.3, digits.shape), 0, 1).astype(np.float32)
net = ruler.digit_ruler(ruler.RULERS)
fa, pa = net.features_and_probs(digits)
fb, pb = net.features_and_probs(other)
out = {{"fid": frechet_distance(*feature_stats(fa), *feature_stats(fb)), "score": classifier_score(pb)}}
ev_params = parse_params({{"evaluate": {{"num_samples": 100, "bootstrap": 10, "kid_subsets": 4,
                                       "kid_subset_size": 50, "swd_patches_per_image": 8,
                                       "swd_projections": 32}}}}).evaluate
colour = rng.random((100, 16, 16, 3), dtype=np.float32)
m = ev.folder_metrics(ev_params, colour, np.clip(colour + 0.1, 0, 1), real=colour[::-1].copy(),
                      net=ruler.random_ruler(ruler.RULERS), log=lambda m: None)
out.update({{k: v for k, v in m.items() if isinstance(v, float)}})
print(json.dumps({{k: float(f"{{v:.6g}}") for k, v in out.items()}}, sort_keys=True))
"""


def test_same_metrics_with_onednn_on_and_off():
    results = {}
    for flag in ("0", "1"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run([sys.executable, "-c", _METRICS_SCRIPT.format(repo=str(REPO))], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[flag] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"fid", "score", "fd_random", "swd", "kd_random"} <= set(results["0"])
    assert results["0"] == results["1"]


def test_retraining_writes_new_sums_and_says_old_numbers_are_not_comparable(tmp_path):
    mnist = tmp_path / "mnist"
    (x, y), (xt, yt) = draw_digits(300, seed=1), draw_digits(100, seed=2)
    write_mnist(mnist, (x, y.astype(np.uint8)), (xt, yt.astype(np.uint8)))
    params = parse_params({"data": {"mnist_dir": str(mnist)},
                           "evaluate": {"classifier": {"epochs": 1, "batch_size": 64, "seed": 3}}})
    folder = tmp_path / "rulers"
    ruler.write_rulers(folder, {ruler.DIGITS: {"x": np.zeros(1, np.float32)}, ruler.RANDOM: ruler.random_arrays(0)})
    old = ruler.recorded_sums(folder)
    said = []
    new = ruler.retrain(params, folder, log=said.append)
    assert new == ruler.recorded_sums(folder) and new[ruler.DIGITS] != old[ruler.DIGITS]
    assert new[ruler.RANDOM] != old[ruler.RANDOM]  # seed 3, not 0
    text = "\n".join(said)
    assert new[ruler.DIGITS] in text and f"(was {old[ruler.DIGITS]})" in text
    assert "NOT comparable" in text
    ruler.digit_ruler(folder)  # the new one loads: its sha256 is recorded
