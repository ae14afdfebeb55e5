"""GAN losses on discriminator logits.

Each loss is a pair of functions: ``d_loss(real_logits, fake_logits)`` and
``g_loss(fake_logits)``, averaged over the local batch. ``nsgan`` is the original
scripts' binary cross-entropy with the non-saturating generator loss, computed from
logits (``softplus``) so that it never takes the log of 0.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf


class GANLoss(NamedTuple):
    d_loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    g_loss: Callable[[tf.Tensor], tf.Tensor]
    uses_gradient_penalty: bool


def nsgan(label_smoothing: float = 0.0) -> GANLoss:
    """Binary cross-entropy; real labels are ``1 - label_smoothing`` (one-sided smoothing)."""
    real_label = 1.0 - label_smoothing

    def d_loss(real, fake):
        real_term = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(real), real_label), logits=real)
        return tf.reduce_mean(real_term) + tf.reduce_mean(tf.nn.softplus(fake))

    def g_loss(fake):
        return tf.reduce_mean(tf.nn.softplus(-fake))

    return GANLoss(d_loss, g_loss, False)


def hinge() -> GANLoss:
    def d_loss(real, fake):
        return tf.reduce_mean(tf.nn.relu(1.0 - real)) + tf.reduce_mean(tf.nn.relu(1.0 + fake))

    def g_loss(fake):
        return -tf.reduce_mean(fake)

    return GANLoss(d_loss, g_loss, False)


def wasserstein() -> GANLoss:
    """The WGAN critic loss; the gradient penalty is added by the train step."""
    def d_loss(real, fake):
        return tf.reduce_mean(fake) - tf.reduce_mean(real)

    def g_loss(fake):
        return -tf.reduce_mean(fake)

    return GANLoss(d_loss, g_loss, True)


def gradient_penalty(discriminator, real: tf.Tensor, fake: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """WGAN-GP: mean of (||grad D(x_hat)|| - 1)^2 at points x_hat between real and fake.

    The interpolation weights are drawn uniformly in [0, 1], one per image, from ``seed``.
    """
    batch = tf.shape(real)[0]
    alpha = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seed, dtype=real.dtype)
    mixed = real + alpha * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        logits = discriminator(mixed, training=True)
    grads = tf.cast(tape.gradient(logits, mixed), tf.float32)
    norms = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]) + 1e-12)
    return tf.reduce_mean(tf.square(norms - 1.0))


def get_loss(name: str, label_smoothing: float = 0.0) -> GANLoss:
    if name == "nsgan":
        return nsgan(label_smoothing)
    if name == "hinge":
        return hinge()
    if name == "wgan-gp":
        return wasserstein()
    raise ValueError(f"unknown loss {name!r}")  # params validation rules this out
