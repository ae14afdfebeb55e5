"""GAN losses, one registry entry each: ``train.loss`` names one of :data:`LOSSES`.

A loss is a pair of functions of one :class:`LossInputs`: ``d_loss(x)`` for the
discriminator and ``g_loss(x)`` for the generator, each a scalar averaged over the local
batch. The inputs carry everything a loss may need, so a loss that looks at more than
the logits (a gradient penalty, R1, a consistency term) lives here entirely: the
discriminator itself, the real and generated images it saw, their logits, a stateless
seed for the loss's own random draws, and the class labels (None: unconditional).

To add a loss, write a builder that returns a :class:`GANLoss` and decorate it with
``@register_loss("name")``; ``config.LOSS_NAMES`` lists the names ``params.yaml`` accepts
(``tests/test_registries.py`` checks the two agree). R1 (``train.r1_gamma``), FastGAN's
reconstruction (``train.reconstruction``) and LeCam (``train.lecam``) are not losses of their
own but terms :func:`get_loss` adds to any loss's ``d_loss`` (:func:`with_r1`,
:func:`with_reconstruction`, :func:`with_lecam`). A term that keeps state between steps
holds it in ``GANLoss.state`` (name -> variable), which checkpoints save and resume restores. ``nsgan`` is the original scripts'
binary cross-entropy with the non-saturating generator loss, computed from logits
(``softplus``) so that it never takes the log of 0.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import tensorflow as tf


@dataclass(frozen=True)
class LossInputs:
    """What one step hands a loss (tensors of the local batch, on one replica)."""
    discriminator: Any          # the Keras discriminator: called as discriminator(images, training=True)
    real: tf.Tensor             # the real images D saw (augmented when augmentation is on)
    fake: tf.Tensor             # the generated images D saw
    real_logits: tf.Tensor
    fake_logits: tf.Tensor
    seed: tf.Tensor             # a stateless seed, shape [2], for the loss's own draws
    labels: tf.Tensor | None = None  # class labels of the batch (None: unconditional)
    step: tf.Tensor | None = None    # the global step (int64), for terms applied every k steps
    reconstruction: tf.Tensor | None = None  # D's decoder's redrawing of ``real`` at half size (None: no decoder)


class GANLoss(NamedTuple):
    d_loss: Callable[[LossInputs], tf.Tensor]
    g_loss: Callable[[LossInputs], tf.Tensor]
    state: Mapping[str, tf.Variable] = MappingProxyType({})  # variables carried between steps (checkpointed)


@dataclass(frozen=True)
class LossOptions:
    """The loss settings of ``train``: each builder reads the ones it uses."""
    label_smoothing: float = 0.0
    gp_weight: float = 10.0
    r1_gamma: float = 0.0       # 0 = no R1 term
    r1_every: int = 16          # lazy R1: computed every this many steps, weighted by it
    reconstruction: float = 0.0  # 0 = no reconstruction term
    lecam: float = 0.0          # 0 = no LeCam term
    lecam_decay: float = 0.99   # LeCam: decay of the moving averages of D's outputs, per step

    @classmethod
    def from_train(cls, train: Any) -> LossOptions:
        """The options from ``params.train``, each read from the key of its own name (so a new
        term needs its field here and its key in ``config.TrainParams``, nothing in between)."""
        return cls(**{f.name: getattr(train, f.name) for f in fields(cls)})


LOSSES: dict[str, Callable[[LossOptions], GANLoss]] = {}


def register_loss(name: str):
    """Decorator: add a builder ``(LossOptions) -> GANLoss`` to :data:`LOSSES` as ``name``."""
    def add(builder):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        LOSSES[name] = builder
        return builder
    return add


def get_loss(name: str, options: LossOptions = LossOptions()) -> GANLoss:
    """The loss ``name`` with ``options``, plus the R1 term when ``options.r1_gamma`` > 0, the
    reconstruction term when ``options.reconstruction`` > 0 and the LeCam term when
    ``options.lecam`` > 0 (its variables are made here: call it under the strategy's scope)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}")  # params validation rules this out
    loss = LOSSES[name](options)
    if options.r1_gamma > 0:
        loss = with_r1(loss, options.r1_gamma, options.r1_every)
    if options.reconstruction > 0:
        loss = with_reconstruction(loss, options.reconstruction)
    if options.lecam > 0:
        loss = with_lecam(loss, options.lecam, options.lecam_decay)
    return loss


def r1_penalty(discriminator, real: tf.Tensor) -> tf.Tensor:
    """R1 (Mescheder et al. 2018): mean over the batch of ||grad_x D(x)||^2 at the real images
    D saw (augmented, as in StyleGAN2-ADA)."""
    with tf.GradientTape() as tape:
        tape.watch(real)
        # Per image, the mean over D's logits (one, or its own and model.features' heads).
        total = tf.reduce_sum(tf.reduce_mean(tf.cast(discriminator(real, training=True), tf.float32), axis=-1))
    grads = tf.cast(tape.gradient(total, real), tf.float32)
    return tf.reduce_mean(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]))


def with_r1(loss: GANLoss, gamma: float, every: int) -> GANLoss:
    """``loss`` with ``gamma / 2`` times the R1 penalty added to the discriminator's loss.

    Lazy (StyleGAN2): with ``every`` > 1 the penalty, a second backward pass through D, is
    computed only at steps divisible by ``every`` and weighted by ``every`` there, so its
    average pull is the same at a fraction of the cost.
    """
    def d_loss(x: LossInputs):
        base = loss.d_loss(x)
        if every == 1 or x.step is None:
            return base + (gamma / 2) * r1_penalty(x.discriminator, x.real)
        due = tf.equal(tf.math.floormod(tf.cast(x.step, tf.int64), every), 0)
        term = tf.cond(due, lambda: (gamma / 2 * every) * r1_penalty(x.discriminator, x.real),
                       lambda: tf.constant(0.0, tf.float32))
        return base + term

    return loss._replace(d_loss=d_loss)


def reconstruction_error(reconstruction: tf.Tensor, real: tf.Tensor) -> tf.Tensor:
    """Mean squared error between D's decoder's output and ``real`` 2x average-pooled to its size."""
    target = tf.nn.avg_pool2d(tf.cast(real, tf.float32), 2, 2, "VALID")
    return tf.reduce_mean(tf.square(tf.cast(reconstruction, tf.float32) - target))


def with_reconstruction(loss: GANLoss, weight: float) -> GANLoss:
    """``loss`` with ``weight`` times D's reconstruction error on the real images added to the
    discriminator's loss (FastGAN's self-supervision, Liu et al. 2021: a D that must redraw
    what it saw keeps describing the image, not only what tells it from a fake, which small
    folders need). A step without a decoder (``x.reconstruction`` None) adds nothing."""
    def d_loss(x: LossInputs):
        base = loss.d_loss(x)
        if x.reconstruction is None:
            return base
        return base + weight * reconstruction_error(x.reconstruction, x.real)

    return loss._replace(d_loss=d_loss)


def lecam_penalty(real_logits: tf.Tensor, fake_logits: tf.Tensor, mean_real, mean_fake) -> tf.Tensor:
    """LeCam (Tseng et al. 2021): mean of relu(D(x) - mean_fake)^2 over the real logits plus
    mean of relu(mean_real - D(G(z)))^2 over the generated ones, where ``mean_real`` and
    ``mean_fake`` are moving averages of D's outputs. It only pulls a real logit that rises
    above the fakes' average, or a fake one that falls below the reals', so D cannot
    drift into the confident outputs that mean it has memorized a small folder."""
    real = tf.cast(real_logits, tf.float32)
    fake = tf.cast(fake_logits, tf.float32)
    return (tf.reduce_mean(tf.square(tf.nn.relu(real - mean_fake)))
            + tf.reduce_mean(tf.square(tf.nn.relu(mean_real - fake))))


def with_lecam(loss: GANLoss, weight: float, decay: float) -> GANLoss:
    """``loss`` with ``weight`` times :func:`lecam_penalty` added to the discriminator's loss.

    The two moving averages (``lecam/mean_real``, ``lecam/mean_fake``: start 0, ``decay`` per
    discriminator step, as the authors' code) are variables in ``state``, so a checkpoint
    carries them and a resumed run continues them exactly. Each step first folds in its
    batch means (no gradient), then measures against the updated averages. With several
    replicas the first replica's batch updates them (replicas see different batches but
    keep the same value).
    """
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    mean_real = tf.Variable(0.0, trainable=False, dtype=tf.float32, aggregation=first, name="lecam_mean_real")
    mean_fake = tf.Variable(0.0, trainable=False, dtype=tf.float32, aggregation=first, name="lecam_mean_fake")

    def d_loss(x: LossInputs):
        base = loss.d_loss(x)
        for average, logits in ((mean_real, x.real_logits), (mean_fake, x.fake_logits)):
            batch_mean = tf.stop_gradient(tf.reduce_mean(tf.cast(logits, tf.float32)))
            average.assign(decay * average + (1.0 - decay) * batch_mean)
        return base + weight * lecam_penalty(x.real_logits, x.fake_logits, mean_real, mean_fake)

    return loss._replace(d_loss=d_loss, state={**loss.state, "lecam/mean_real": mean_real,
                                                "lecam/mean_fake": mean_fake})


@register_loss("nsgan")
def nsgan(options: LossOptions) -> GANLoss:
    """Binary cross-entropy; real labels are ``1 - label_smoothing`` (one-sided smoothing)."""
    real_label = 1.0 - options.label_smoothing

    def d_loss(x: LossInputs):
        real_term = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(x.real_logits), real_label),
                                                            logits=x.real_logits)
        return tf.reduce_mean(real_term) + tf.reduce_mean(tf.nn.softplus(x.fake_logits))

    def g_loss(x: LossInputs):
        return tf.reduce_mean(tf.nn.softplus(-x.fake_logits))

    return GANLoss(d_loss, g_loss)


@register_loss("hinge")
def hinge(options: LossOptions) -> GANLoss:
    def d_loss(x: LossInputs):
        return tf.reduce_mean(tf.nn.relu(1.0 - x.real_logits)) + tf.reduce_mean(tf.nn.relu(1.0 + x.fake_logits))

    def g_loss(x: LossInputs):
        return -tf.reduce_mean(x.fake_logits)

    return GANLoss(d_loss, g_loss)


@register_loss("wgan-gp")
def wgan_gp(options: LossOptions) -> GANLoss:
    """The WGAN critic loss plus ``gp_weight`` times the gradient penalty."""
    def d_loss(x: LossInputs):
        critic = tf.reduce_mean(x.fake_logits) - tf.reduce_mean(x.real_logits)
        return critic + options.gp_weight * gradient_penalty(x.discriminator, x.real, x.fake, x.seed)

    def g_loss(x: LossInputs):
        return -tf.reduce_mean(x.fake_logits)

    return GANLoss(d_loss, g_loss)


def gradient_penalty(discriminator, real: tf.Tensor, fake: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """WGAN-GP: mean of (||grad D(x_hat)|| - 1)^2 at points x_hat between real and fake.

    The interpolation weights are drawn uniformly in [0, 1], one per image, from ``seed``.
    """
    batch = tf.shape(real)[0]
    alpha = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seed, dtype=real.dtype)
    mixed = real + alpha * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        logits = tf.reduce_mean(discriminator(mixed, training=True), axis=-1)  # one critic value per image
    grads = tf.cast(tape.gradient(logits, mixed), tf.float32)
    norms = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]) + 1e-12)
    return tf.reduce_mean(tf.square(norms - 1.0))
