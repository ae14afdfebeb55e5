"""The terms added to any loss: R1 (train.r1_gamma: its value, its lazy schedule), FastGAN's
reconstruction (train.reconstruction: its value, its decoder trained with D) and LeCam
(train.lecam: its value, its moving averages), each reaching the discriminator's update
inside the compiled chunk."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_params
from src import runtime
from src.losses import LossInputs, LossOptions, get_loss, lecam_penalty, r1_penalty, reconstruction_error
from src.training_loop import build_gan

W = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype(np.float32)


def _linear_critic(images, training=True):
    """D(x) = <w, x>: its input gradient is w for every image, so R1 is exactly ||w||^2."""
    return tf.reduce_sum(images * W, axis=[1, 2, 3])[:, None]


def _inputs(step):
    real = tf.constant(np.random.default_rng(1).uniform(size=(5, 4, 4, 3)).astype(np.float32))
    fake = tf.constant(np.random.default_rng(2).uniform(size=(5, 4, 4, 3)).astype(np.float32))
    return LossInputs(_linear_critic, real, fake, _linear_critic(real), _linear_critic(fake),
                      tf.constant([0, 0], tf.int64), None, tf.constant(step, tf.int64))


def test_r1_penalty_is_the_squared_input_gradient_norm():
    x = _inputs(0)
    assert float(r1_penalty(x.discriminator, x.real)) == pytest.approx(float(np.sum(W ** 2)), rel=1e-5)


@pytest.mark.parametrize("loss", ["nsgan", "hinge", "wgan-gp"])
def test_lazy_r1_is_added_every_k_steps_weighted_by_k(loss):
    gamma, every = 0.5, 4
    plain = get_loss(loss, LossOptions())
    with_r1 = get_loss(loss, LossOptions(r1_gamma=gamma, r1_every=every))
    for step in range(6):
        x = _inputs(step)
        extra = float(with_r1.d_loss(x)) - float(plain.d_loss(x))
        expected = gamma / 2 * every * float(np.sum(W ** 2)) if step % every == 0 else 0.0
        assert extra == pytest.approx(expected, rel=1e-4, abs=1e-5), step
        assert float(with_r1.g_loss(x)) == float(plain.g_loss(x))


def _d_after_two_steps(**train):
    params = tiny_params(model={"arch": "dcgan"}, train={"loss": "hinge", "steps_per_call": 2, **train})
    runtime.configure(params.train, params.common.seed)
    gan = build_gan(params, tf.distribute.get_strategy())
    b, s, c = params.train.batch_size, params.data.image_size, params.data.channels
    real = np.random.default_rng(0).uniform(-1, 1, (2 * b, s, s, c)).astype(np.float32)
    sums, bad = gan.train_chunk(tf.constant(real), 0)
    assert bad == -1 and np.isfinite(list(sums.values())).all()
    return [v.numpy() for v in gan.discriminator.trainable_variables], sums["d_loss"]


def test_r1_reaches_the_discriminator_update_in_the_compiled_chunk():
    plain, d_plain = _d_after_two_steps()
    lazy, d_lazy = _d_after_two_steps(r1_gamma=10.0, r1_every=2)  # step 0 is due, step 1 is not
    assert d_lazy > d_plain  # the penalty is in the logged loss
    assert any(not np.allclose(a, b) for a, b in zip(plain, lazy))
    again, _ = _d_after_two_steps(r1_gamma=10.0, r1_every=2)
    assert all(np.array_equal(a, b) for a, b in zip(lazy, again))  # deterministic


def test_reconstruction_term_is_the_weighted_error_against_the_half_size_real_images():
    x = _inputs(0)
    redrawn = tf.constant(np.random.default_rng(3).uniform(size=(5, 2, 2, 3)).astype(np.float32))
    target = x.real.numpy().reshape(5, 2, 2, 2, 2, 3).mean(axis=(2, 4))  # 2x2 average pooling
    expected = float(np.mean((redrawn.numpy() - target) ** 2))
    assert float(reconstruction_error(redrawn, x.real)) == pytest.approx(expected, rel=1e-5)
    plain = get_loss("hinge", LossOptions())
    both = get_loss("hinge", LossOptions(reconstruction=3.0))
    seen = LossInputs(*[getattr(x, f) for f in ("discriminator", "real", "fake", "real_logits", "fake_logits",
                                                "seed", "labels", "step")], reconstruction=redrawn)
    assert float(both.d_loss(seen)) - float(plain.d_loss(seen)) == pytest.approx(3.0 * expected, rel=1e-4)
    assert float(both.d_loss(x)) == pytest.approx(float(plain.d_loss(x)))  # no decoder: nothing added
    assert float(both.g_loss(seen)) == float(plain.g_loss(seen))


def _reconstructing_gan(weight):
    params = tiny_params(model={"arch": "dcgan", "dcgan": {"dropout": 0.0}},
                         train={"loss": "hinge", "steps_per_call": 8, "reconstruction": weight})
    runtime.configure(params.train, params.common.seed)
    return params, build_gan(params, tf.distribute.get_strategy())


def test_reconstruction_trains_a_decoder_with_the_discriminator():
    """The decoder's weights are in D's update and in the checkpointed state, and a few
    compiled steps on one batch make its redrawing of that batch better."""
    params, gan = _reconstructing_gan(10.0)
    _, plain = _reconstructing_gan(0.0)
    decoder = [v for v in gan.reconstructor.trainable_variables
               if all(v is not w for w in gan.discriminator.trainable_variables)]
    assert decoder and plain.reconstructor is None
    assert len(gan.state_variables()) > len(plain.state_variables())
    b, s, c = params.train.batch_size, params.data.image_size, params.data.channels
    batch = np.random.default_rng(0).uniform(-1, 1, (b, s, s, c)).astype(np.float32)

    def error():
        redrawn = gan.reconstructor(batch, training=False)[1]
        return float(reconstruction_error(redrawn, tf.constant(batch)))

    before, weights_before = error(), [v.numpy() for v in decoder]
    for start in range(0, 40, 8):
        sums, bad = gan.train_chunk(tf.constant(np.tile(batch, (8, 1, 1, 1))), start)
        assert bad == -1
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(weights_before, decoder))
    assert error() < 0.85 * before


def test_lecam_penalty_pulls_only_reals_above_the_fake_average_and_fakes_below_the_real_one():
    real = tf.constant([[2.0], [-1.0], [0.5]])
    fake = tf.constant([[-3.0], [1.0]])
    # mean_fake 0.0: reals 2.0 and 0.5 are above it; mean_real 0.5: fake -3.0 is below it
    expected = (2.0 ** 2 + 0.5 ** 2) / 3 + 3.5 ** 2 / 2
    assert float(lecam_penalty(real, fake, 0.5, 0.0)) == pytest.approx(expected)
    assert float(lecam_penalty(tf.constant([[-1.0]]), tf.constant([[1.0]]), -2.0, 2.0)) == 0.0


@pytest.mark.parametrize("loss", ["nsgan", "hinge", "wgan-gp"])
def test_lecam_adds_its_weighted_term_against_moving_averages_it_keeps_as_state(loss):
    weight, decay = 0.3, 0.9
    plain = get_loss(loss, LossOptions())
    lecam = get_loss(loss, LossOptions(lecam=weight, lecam_decay=decay, r1_gamma=0.5, r1_every=4))
    assert dict(plain.state) == {}
    assert sorted(lecam.state) == ["lecam/mean_fake", "lecam/mean_real"]  # kept beside R1
    averages = np.zeros(2)
    for step in (1, 2, 3):  # steps R1 is not due at: the difference is LeCam alone
        x = _inputs(step)
        real, fake = x.real_logits.numpy(), x.fake_logits.numpy()
        averages = decay * averages + (1 - decay) * np.array([real.mean(), fake.mean()])
        extra = float(lecam.d_loss(x)) - float(plain.d_loss(x))
        expected = weight * (np.mean(np.maximum(real - averages[1], 0) ** 2)
                             + np.mean(np.maximum(averages[0] - fake, 0) ** 2))
        assert extra == pytest.approx(expected, rel=1e-4, abs=1e-6), step
        assert float(lecam.state["lecam/mean_real"].numpy()) == pytest.approx(averages[0], rel=1e-5)
        assert float(lecam.state["lecam/mean_fake"].numpy()) == pytest.approx(averages[1], rel=1e-5)
        assert float(lecam.g_loss(x)) == float(plain.g_loss(x))


def test_lecam_reaches_the_discriminator_update_and_the_checkpoint():
    plain, _ = _d_after_two_steps()
    lecam, _ = _d_after_two_steps(lecam=100.0, lecam_decay=0.5)
    assert any(not np.allclose(a, b) for a, b in zip(plain, lecam))
    params = tiny_params(model={"arch": "dcgan"}, train={"loss": "hinge", "lecam": 0.3})
    runtime.configure(params.train, params.common.seed)
    gan = build_gan(params, tf.distribute.get_strategy())
    b, s, c = params.train.batch_size, params.data.image_size, params.data.channels
    state = gan.state_variables()
    assert {"loss/lecam/mean_real", "loss/lecam/mean_fake"} <= set(state)
    gan.train_chunk(tf.constant(np.random.default_rng(0).uniform(-1, 1, (b, s, s, c)).astype(np.float32)), 0)
    assert float(state["loss/lecam/mean_real"].numpy()) != 0.0  # moved by the step


def test_loss_options_read_every_field_from_the_train_params_key_of_its_name():
    params = tiny_params(train={"label_smoothing": 0.1, "gp_weight": 5.0, "r1_gamma": 0.2, "r1_every": 8,
                                "reconstruction": 2.0, "lecam": 0.3, "lecam_decay": 0.9})
    assert LossOptions.from_train(params.train) == LossOptions(label_smoothing=0.1, gp_weight=5.0, r1_gamma=0.2,
                                                               r1_every=8, reconstruction=2.0, lecam=0.3,
                                                               lecam_decay=0.9)
