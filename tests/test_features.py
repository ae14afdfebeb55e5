"""Heads on a frozen pretrained network beside the discriminator (``model.features``, src/features.py).

No test downloads anything: each writes a backbone's weights to a local file of its own (a
seeded random network stands in for ImageNet's) and points ``model.features.weights`` at it;
the download path is exercised with Keras's fetch made to fail, as it does offline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import keras
import pytest
import tensorflow as tf

from conftest import run_stage, tiny_params
from src import checkpoint, features
from src.errors import UserError
from src.networks import build_discriminator, build_generator, build_reconstructor
from src.weights import network_variables
from test_resume import PATHS, _assert_same_state, _final_state, _resume_after_losing_the_last_checkpoint

BACKBONE = "mobilenet_v2_035"  # the smallest: the heads' mechanics are the same for every entry


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each test runs in its own folder: model.features.weights is relative, under data/weights/."""
    monkeypatch.chdir(tmp_path)


def _weights_file(folder, seed=3, backbone=BACKBONE, size=32):
    """A seeded random backbone's weights in ``folder``/data/weights/; returns the path relative
    to ``folder`` (the working folder, as params.yaml names it) and the network."""
    keras.utils.set_random_seed(seed)
    net = features.BACKBONES[backbone].build((size, size, 3), None)
    for layer in net.layers:  # EfficientNet: its normalization as ImageNet's file holds it (std where variance goes)
        if isinstance(layer, keras.layers.Normalization):
            layer.adapt_mean.assign(list(features._IMAGENET_MEAN))
            layer.adapt_variance.assign(list(features._IMAGENET_STD))
            layer.finalize_state()
    path = Path("data") / "weights" / f"{backbone}_{seed}.weights.h5"
    (folder / path.parent).mkdir(parents=True, exist_ok=True)
    net.save_weights(folder / path)
    return path, net


def _features(weights, **extra):
    return {"features": {"backbone": BACKBONE, "weights": str(weights), "input_size": 32, "channels": 8, **extra}}


def _backbone_of(discriminator):
    return discriminator.get_layer("features_backbone")


def test_the_discriminator_reads_the_local_weights_and_trains_only_its_heads(tmp_path):
    path, source = _weights_file(tmp_path)
    params = tiny_params(model=_features(path))
    keras.utils.set_random_seed(11)  # another seed: a backbone left at its random init would differ
    d = build_discriminator(params.model, params.data)
    backbone = _backbone_of(d)
    for got, want in zip(backbone.weights, source.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    images = tf.random.uniform((4, 8, 8, 1), -1.0, 1.0, seed=1)
    assert tuple(d(images).shape) == (4, 4)  # D's own logit and one per head
    frozen = {id(v) for v in backbone.weights}
    assert d.trainable_variables and not frozen & {id(v) for v in d.trainable_variables}

    before = {id(v): v.numpy().copy() for v in d.variables}
    optimizer = keras.optimizers.Adam(1e-2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.relu(1.0 - d(images, training=True)))
    optimizer.apply_gradients(zip(tape.gradient(loss, d.trainable_variables), d.trainable_variables))
    moved = {id(v) for v in d.variables if not np.array_equal(before[id(v)], v.numpy())}
    heads = {id(v) for v in d.trainable_variables if "features_" in v.path}
    assert heads and heads <= moved  # every head weight learned
    assert not moved & frozen  # the pretrained network did not (BatchNorm statistics included)


def test_the_generator_learns_through_the_frozen_network(tmp_path):
    path, _ = _weights_file(tmp_path)
    params = tiny_params(model=_features(path))
    d = build_discriminator(params.model, params.data)
    images = tf.random.uniform((2, 8, 8, 1), -1.0, 1.0, seed=2)
    with tf.GradientTape() as tape:
        tape.watch(images)
        head_logits = d(images, training=True)[:, 1:]  # the heads alone
        total = tf.reduce_sum(head_logits)
    grads = tape.gradient(total, images).numpy()
    assert np.all(np.isfinite(grads)) and np.abs(grads).sum() > 0


def test_with_classes_and_the_decoder_the_heads_sit_beside_d(tmp_path):
    path, _ = _weights_file(tmp_path)
    params = tiny_params(model={**_features(path), "dcgan": {"g_filters": [16, 8], "d_filters": [8, 16]}})
    d = build_discriminator(params.model, params.data, num_classes=3)
    logits = d([tf.zeros((2, 8, 8, 1)), tf.constant([0, 2])])
    assert tuple(logits.shape) == (2, 4)
    plain = tiny_params(model={"dcgan": {"d_filters": [8, 16]}})
    own = build_discriminator(plain.model, plain.data)
    reconstructor = build_reconstructor(build_discriminator(params.model, params.data), params.model, params.data)
    # The decoder starts from D's own last maps (2x2x16 here), not from a head's.
    decoder_input = [layer for layer in reconstructor.layers if isinstance(layer, keras.layers.UpSampling2D)][0]
    assert tuple(decoder_input.input.shape[1:]) == tuple(own.get_layer(index=-3).output.shape[1:])


def test_checkpoint_keys_name_the_pretrained_networks_own_layers(tmp_path):
    path, _ = _weights_file(tmp_path)
    params = tiny_params(model=_features(path))
    d = build_discriminator(params.model, params.data)
    keys = network_variables(d, "discriminator")
    assert len(keys) == len(d.variables)
    assert "discriminator/features_backbone/Conv1/kernel" in keys
    assert "discriminator/features_0_project/kernel" in keys


@pytest.mark.parametrize("backbone", ["mobilenet_v2_035", "efficientnet_b0"])
def test_a_local_file_gives_the_discriminator_the_download_gives(tmp_path, monkeypatch, backbone):
    """The offline path is the same network: Keras's fetch is pointed at the local file, so
    weights "" (download) and weights FILE load the same bytes; the two discriminators must
    agree (EfficientNet builds without its ImageNet rescaling when loading from a path)."""
    path, _ = _weights_file(tmp_path, backbone=backbone)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", lambda *args, **kwargs: str(path))
    images = tf.random.uniform((3, 8, 8, 1), -1.0, 1.0, seed=4)
    logits = []
    for weights in ("", path):
        params = tiny_params(model={"features": {"backbone": backbone, "weights": str(weights), "input_size": 32,
                                                 "channels": 8, "spectral_norm": False}})
        keras.utils.set_random_seed(5)  # the same heads and the same D of its own
        logits.append(build_discriminator(params.model, params.data)(images, training=True).numpy())
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-6)


def test_efficientnets_dropout_is_off_when_d_trains(tmp_path):
    path, _ = _weights_file(tmp_path, backbone="efficientnet_b0")
    params = tiny_params(model={"features": {"backbone": "efficientnet_b0", "weights": str(path), "input_size": 32,
                                             "channels": 8, "spectral_norm": False}})
    d = build_discriminator(params.model, params.data)
    images = tf.random.uniform((3, 8, 8, 1), -1.0, 1.0, seed=6)
    heads = [d(images, training=True).numpy()[:, 1:] for _ in range(2)]  # D's own logit has its own dropout
    np.testing.assert_array_equal(heads[0], heads[1])


def test_penalties_read_the_mean_logit():
    """R1 and WGAN-GP of a D whose four logits are one logit four times equal those of that
    one logit: the penalties weigh the mean discriminator, as the losses do."""
    from src.losses import gradient_penalty, r1_penalty
    image = keras.Input((8, 8, 1))
    one = keras.layers.Dense(1)(keras.layers.Flatten()(image))
    single = keras.Model(image, one)
    four = keras.Model(image, keras.layers.Concatenate()([one, one, one, one]))
    real = tf.random.uniform((4, 8, 8, 1), seed=7)
    fake = tf.random.uniform((4, 8, 8, 1), seed=8)
    np.testing.assert_allclose(r1_penalty(four, real).numpy(), r1_penalty(single, real).numpy(), rtol=1e-6)
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_allclose(gradient_penalty(four, real, fake, seed).numpy(),
                               gradient_penalty(single, real, fake, seed).numpy(), rtol=1e-6)


def test_another_file_at_the_same_path_starts_training_fresh(tmp_path):
    path, _ = _weights_file(tmp_path)
    params = tiny_params(model=_features(path))
    manifest = {"shards": [{"sha256": "0" * 64}]}
    before = checkpoint.fingerprint(params, manifest)
    assert checkpoint.fingerprint(params, manifest) == before
    other, _ = _weights_file(tmp_path, seed=4)
    path.write_bytes(other.read_bytes())
    assert checkpoint.fingerprint(params, manifest) != before


@pytest.mark.parametrize("weights", ["/abs/data/weights/x.h5", "weights/x.h5", "data/weights/../x.h5",
                                     "data/weights/x.pth", "data/weights"])
def test_the_weights_file_must_be_a_h5_under_data_weights(weights):
    """dvc.yaml lists data/weights as train's dependency: a file elsewhere would be read unlisted."""
    with pytest.raises(UserError, match=r"model\.features\.weights.*data/weights/"):
        tiny_params(model=_features(weights))


def test_a_missing_file_or_a_failed_download_is_one_line_naming_the_key(tmp_path, monkeypatch):
    missing = tiny_params(model=_features("data/weights/nowhere.h5"))
    with pytest.raises(UserError, match=r"model\.features\.weights.*nowhere\.h5.*does not exist"):
        build_discriminator(missing.model, missing.data)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/weights.h5: None -- no network\nmore")
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    download = tiny_params(model=_features(""))
    with pytest.raises(UserError) as info:
        build_discriminator(download.model, download.data)
    message = str(info.value)
    assert "model.features.backbone" in message and "model.features.weights" in message
    assert "URL fetch failure" in message and "\n" not in message

    broken = Path("data/weights/broken.h5")
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not an h5 file")
    bad = tiny_params(model=_features(broken))
    with pytest.raises(UserError, match=r"model\.features\.weights.*could not load.*broken\.h5"):
        build_discriminator(bad.model, bad.data)


def test_train_with_the_heads_resumes_to_the_same_weights(project, tmp_path, tmp_path_factory):
    path, _ = _weights_file(tmp_path)  # inside the project (its folder is tmp_path): copied with its data/
    straight = project(model=_features(path), train={"epochs": 2, "loss": "hinge"})
    result = run_stage(straight, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    reference = _final_state(straight)
    assert any(key.startswith("discriminator/features_backbone/") for key in reference)
    other = _resume_after_losing_the_last_checkpoint(straight, tmp_path_factory.mktemp("resumed"))
    _assert_same_state(reference, _final_state(other))


def test_train_without_the_weights_stops_with_one_line(project, tmp_path):
    folder = project(model=_features("data/weights/absent.weights.h5"))
    result = run_stage(folder, "train")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "model.features.weights" in last and "absent.weights.h5" in last
    assert "Traceback" not in result.stderr
    assert not checkpoint.list_checkpoints(folder / PATHS["checkpoints"])
