"""Differentiable augmentation: identity at p = 0, seeded draws, gradients, the adaptive probability."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import blob_images, tiny_params, write_processed
from src import runtime
from src.augment import Augmenter, next_probability
from src.gan import Draw
from src.losses import LossInputs
from src.config import AUGMENT_POLICIES
from src.train_log import read_rows
from src.training_loop import TrainPaths, build_gan, train

ALL = tuple(AUGMENT_POLICIES)


def _images(n=6, size=16, channels=3, value_range=(0.0, 1.0), seed=0):
    lo, hi = value_range
    return tf.constant(np.random.default_rng(seed).uniform(lo, hi, (n, size, size, channels)).astype(np.float32))


def _seed(a, b=0):
    return tf.constant([a, b], tf.int64)


@pytest.mark.parametrize("policy", [(name,) for name in ALL] + [ALL])
def test_probability_zero_is_the_identity(policy):
    x = _images()
    out = Augmenter(policy, (0.0, 1.0))(x, tf.constant(0.0), _seed(1))
    np.testing.assert_array_equal(out.numpy(), x.numpy())


@pytest.mark.parametrize("policy", [(name,) for name in ALL])
def test_each_op_changes_every_image_at_probability_one(policy):
    x = _images()
    out = Augmenter(policy, (0.0, 1.0))(x, tf.constant(1.0), _seed(1)).numpy()
    changed = np.abs(out - x.numpy()).reshape(len(out), -1).max(axis=1) > 0
    # Translation may draw a zero shift for an image; over 6 images most must move.
    assert changed.sum() >= (4 if policy == ("translation",) else 6)


def test_same_seed_same_augmentation_other_seed_other():
    aug = Augmenter(ALL, (-1.0, 1.0))
    x = _images(value_range=(-1.0, 1.0))
    a = aug(x, tf.constant(0.5), _seed(3, 10)).numpy()
    b = aug(x, tf.constant(0.5), _seed(3, 10)).numpy()
    c = aug(x, tf.constant(0.5), _seed(3, 11)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_translation_moves_content_and_fills_with_the_middle_of_the_range():
    x = np.zeros((8, 16, 16, 1), np.float32)
    x[:, 8, 8, 0] = 1.0
    out = Augmenter(("translation",), (-1.0, 1.0))(tf.constant(x - 0.5), tf.constant(1.0), _seed(5)).numpy()
    for img in out:
        peak = np.argwhere(img[..., 0] == 0.5)
        assert len(peak) == 1
        dy, dx = peak[0] - 8
        assert abs(dy) <= 2 and abs(dx) <= 2      # 1/8 of 16 pixels
        values = set(np.unique(img).tolist())
        assert values <= {-0.5, 0.5, 0.0}          # shifted content, plus fill 0 (the middle of [-1, 1])


def test_cutout_blanks_at_most_a_half_side_square():
    x = np.full((16, 16, 16, 3), 0.25, np.float32)
    out = Augmenter(("cutout",), (0.0, 1.0))(tf.constant(x), tf.constant(1.0), _seed(7)).numpy()
    blanked = (out[..., 0] == 0.5).reshape(16, -1).sum(axis=1)
    assert blanked.max() <= 64 and blanked.max() == 64 and blanked.min() > 0


@pytest.mark.parametrize("policy", [(name,) for name in ALL])
def test_gradients_flow_through_each_op(policy):
    x = tf.Variable(_images())
    weights = tf.constant(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        y = Augmenter(policy, (0.0, 1.0))(x, tf.constant(1.0), _seed(2))
        loss = tf.reduce_sum(y * weights)
    grad = tape.gradient(loss, x).numpy()
    assert np.isfinite(grad).all()
    assert (np.abs(grad).reshape(len(grad), -1).sum(axis=1) > 0).all()


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_always_leaves_out_the_choice_and_gives_the_same_values_and_gradients(value_range):
    """At p = 1 without ADA the per-image choice is left out (``always``): the same images and
    the same gradients as the general path, and the selects it costs are gone from the graph."""
    x = tf.Variable(_images(value_range=value_range))
    weights = tf.constant(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))

    def run(aug):
        with tf.GradientTape() as tape:
            y = aug(x, tf.constant(1.0), _seed(4, 2))
            loss = tf.reduce_sum(y * weights)
        return y.numpy(), tape.gradient(loss, x).numpy()

    general, always = Augmenter(ALL, value_range), Augmenter(ALL, value_range, always=True)
    (y0, g0), (y1, g1) = run(general), run(always)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(g1, g0)
    assert not np.array_equal(y1, x.numpy())

    def selects(aug):
        graph = tf.function(lambda: aug(x, tf.constant(1.0), _seed(4, 2))).get_concrete_function().graph
        return sum(op.type == "SelectV2" for op in graph.get_operations())
    assert selects(always) == selects(general) - len(ALL) >= 0


@pytest.mark.parametrize("augment, always", [
    ({"probability": 1.0}, True),
    ({"probability": 0.5}, False),
    ({"probability": 1.0, "adaptive": True}, False),  # ADA moves p between calls
])
def test_build_gan_leaves_out_the_choice_only_when_p_is_fixed_at_one(augment, always):
    params = tiny_params(data={"channels": 3, "range": [0, 1]}, train={"augment": {"policy": list(ALL), **augment}})
    runtime.configure(params.train, params.common.seed)
    assert build_gan(params, tf.distribute.get_strategy()).augmenter.always is always


def test_generator_receives_gradients_through_the_augmentation():
    params = tiny_params(data={"channels": 3, "range": [0, 1]},
                         train={"augment": {"policy": list(ALL), "probability": 1.0}})
    runtime.configure(params.train, params.common.seed)
    gan = build_gan(params, tf.distribute.get_strategy())
    z = tf.random.stateless_normal([4, params.model.latent_dim], seed=[0, 1])

    @tf.function
    def g_grads():
        with tf.GradientTape() as tape:
            fake = gan.augment(gan.generator(z, training=True), tf.constant(0, tf.int64), Draw.AUGMENT_FAKE)
            logits = gan.discriminator(fake, training=True)
            loss = gan.loss.g_loss(LossInputs(gan.discriminator, fake, fake, logits, logits, tf.constant([0, 0], tf.int64)))
        return tape.gradient(loss, gan.generator.trainable_variables)

    grads = g_grads()
    kernels = [g for g, v in zip(grads, gan.generator.trainable_variables) if "kernel" in v.path]
    assert kernels and all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in kernels)


def test_next_probability_moves_towards_the_target_and_clips():
    assert next_probability(0.5, 0.9, 0.6, 1000, 10_000) == pytest.approx(0.6)
    assert next_probability(0.5, 0.1, 0.6, 1000, 10_000) == pytest.approx(0.4)
    assert next_probability(0.5, 0.6, 0.6, 1000, 10_000) == 0.5
    assert next_probability(0.95, 1.0, 0.6, 1000, 10_000) == 1.0
    assert next_probability(0.05, -1.0, 0.6, 1000, 10_000) == 0.0


@pytest.mark.parametrize("d_learning_rate", [1e-2, 1e-8], ids=["d-overfits", "d-frozen"])
def test_adaptive_probability_rises_only_when_d_overfits(tmp_path, d_learning_rate):
    """Eight images and a frozen generator: a learning D soon tells every real image apart
    (r_t -> 1), so p must climb; a frozen D stays near chance and p must not."""
    params = tiny_params(
        data={"folder": str(tmp_path)},
        train={"epochs": 6, "steps_per_epoch": 4, "batch_size": 8,
               "g_optimizer": {"learning_rate": 1e-8}, "d_optimizer": {"learning_rate": d_learning_rate},
               "augment": {"policy": ["translation"], "probability": 0.0, "adaptive": True,
                           "target": 0.6, "speed_kimg": 0.2}})
    write_processed(tmp_path / "p", blob_images(8))
    paths = TrainPaths(tmp_path / "c", tmp_path / "s", tmp_path / "log", tmp_path / "g.keras", tmp_path / "e.json")
    train(params, tmp_path / "p", paths)
    p = [row["augment_p"] for row in read_rows(paths.log).values()]
    assert len(p) == 6
    if d_learning_rate > 1e-3:
        assert p[-1] > 0.3 and p[-1] > p[0]
    else:
        assert p[-1] < 0.1


def test_the_ratios_come_from_params():
    """``train.augment.cutout_ratio`` and ``translation_ratio`` reach the Augmenter the training loop builds."""
    from conftest import tiny_params
    from src.training_loop import build_augmenter

    aug = build_augmenter(tiny_params(train={"augment": {"policy": ["cutout"], "cutout_ratio": 0.25,
                                                         "translation_ratio": 0.0625}}))
    assert (aug.cutout_ratio, aug.translation_ratio) == (0.25, 0.0625)
    x = np.full((16, 16, 16, 3), 0.25, np.float32)
    out = aug(tf.constant(x), tf.constant(1.0), _seed(7)).numpy()
    fill = sum(aug.value_range) / 2  # the middle of the data's range
    blanked = (out[..., 0] == fill).reshape(16, -1).sum(axis=1)  # a quarter of 16 pixels: squares of 4x4 at most
    assert blanked.max() == 16 and blanked.min() > 0
