"""The model pair: generator, discriminator, their optimizers and EMA weights, with a compiled step.

Shaped like keras-io's ``GAN(discriminator, generator, latent_dim)``: a :class:`GAN`
receives its networks, its optimizers and the few numbers its step needs, never the whole
params (:func:`src.training_loop.build_gan` makes them from params). So a test can run one
step on two small Keras models of its own.

:meth:`GAN.train_step` is the maths of one step and returns named results (the train
log's columns, :data:`STEP_RESULTS`). :meth:`GAN.train_chunk` runs ``steps_per_call`` of
them on every replica inside one compiled call (:meth:`GAN._replica_chunk`) and returns
their sums by name, and the first step whose loss is not finite. Every random draw inside
a step is stateless, from ``(seed, step, purpose, replica)`` (:class:`Draw` names the
purposes), so a resumed run draws what an uninterrupted one would.

Classes: a conditional pair (networks built with classes, :mod:`src.networks`) trains on
``(images, labels)`` chunks. The generated half of each step gets the real batch's labels,
so the generator draws the classes as often as the data holds them, and the
discriminator (and every loss, the gradient penalty included) sees each image with its
label. Unconditional pairs run exactly the step they always ran.
"""
from __future__ import annotations

import enum
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from src import checkpoint, weights
from src.augment import Augmenter
from src.losses import GANLoss, LossInputs
from src.quiet import filtered_stderr

# The named results of a step, in the train log's column order.
STEP_RESULTS = ("d_loss", "g_loss", "d_acc_real", "d_acc_fake")


class Draw(enum.IntEnum):
    """The purposes of a step's random draws: each gets its own stream (the numbers are
    part of the checkpoint format: changing one changes every draw after a resume)."""
    LATENTS = 1        # the generator's input noise
    LOSS = 2           # the loss's own draws (the gradient penalty's mixing weights)
    AUGMENT_REAL = 3   # the augmentation of the real images
    AUGMENT_FAKE = 4   # the augmentation of the generated images
    MIRROR = 5         # which real images are x-flipped


class GAN:
    """Generator, discriminator, EMA weights and both optimizers, with a compiled step.

    ``batch_size`` is the global batch (over all replicas); ``d_steps`` > 1 updates the
    generator only every ``d_steps``-th step; ``ema_decay`` None switches the weight
    average off (the exported generator then has the trained weights). ``ema_generator`` is
    a second copy of the generator's architecture that receives the averaged weights for
    export. ``reconstructor`` (or None) is the discriminator with FastGAN's decoder as a
    second output (:func:`src.networks.build_reconstructor`): the real images go through it,
    its decoder trains with D, and the loss sees its output as ``reconstruction``.
    ``augmenter`` (or None) augments what the discriminator sees with probability
    ``augment_p``, which the loop may change between calls (:attr:`augment_p` is a variable
    the step reads). ``mirror`` x-flips each real image with probability 1/2 before anything
    else sees it (the generator learns the mirrored pictures too). Networks and optimizers must have been made under ``strategy``'s scope.
    """

    def __init__(self, discriminator: keras.Model, generator: keras.Model, latent_dim: int, *,
                 d_optimizer: keras.optimizers.Optimizer, g_optimizer: keras.optimizers.Optimizer,
                 loss: GANLoss, batch_size: int, seed: int, ema_generator: keras.Model,
                 ema_decay: float | None = None, d_steps: int = 1,
                 augmenter: Augmenter | None = None, augment_p: float = 0.0, mirror: bool = False,
                 jit_compile: bool = False, strategy: tf.distribute.Strategy | None = None, reconstructor: keras.Model | None = None):
        self.discriminator, self.generator, self.ema_generator = discriminator, generator, ema_generator
        # D with its self-supervised decoder as a second output (shares D's layers), or None.
        self.reconstructor = reconstructor
        self._d_model = reconstructor if reconstructor is not None else discriminator  # what D's optimizer trains
        self.conditional = len(generator.inputs) > 1  # takes [latent, label]
        self.latent_dim = latent_dim
        self.d_opt, self.g_opt = d_optimizer, g_optimizer
        self.loss = loss
        self.batch_size, self.seed, self.d_steps = batch_size, seed, d_steps
        self.ema_decay = ema_decay
        self.augmenter = augmenter
        self.mirror = mirror
        self.jit_compile = jit_compile
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        with self.strategy.scope():
            self.g_opt.build(self.generator.trainable_variables)
            self.d_opt.build(self._d_model.trainable_variables)
            # Plain tf.Variables so that replicas may update them in step (each computes the same value).
            self.ema = [tf.Variable(v.value, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for v in self.generator.trainable_variables]
            # The augmentation probability: read by the step, set between compiled calls.
            self.augment_p = tf.Variable(augment_p, trainable=False, dtype=tf.float32,
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._chunk_fn = None
        self._traced: set = set()  # static step counts the compiled chunk has been traced for

    # -- random draws (replica context) -------------------------------------------------------
    def draw_seed(self, step, purpose: Draw) -> tf.Tensor:
        """The stateless seed (shape [2]) of ``purpose``'s draws at ``step`` on this replica."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.experimental.stateless_fold_in(seed, int(purpose) * 4096 + tf.cast(replica, tf.int64))

    def latents(self, step, batch) -> tf.Tensor:
        """The generator's input noise at ``step``: (batch, latent_dim), standard normal."""
        return tf.random.stateless_normal([batch, self.latent_dim], seed=self.draw_seed(step, Draw.LATENTS))

    def mirrored(self, real, step):
        """``real`` with each image x-flipped with probability 1/2 (the draws of ``step``),
        or ``real`` itself when mirroring is off."""
        if not self.mirror:
            return real
        flip = tf.random.stateless_uniform([tf.shape(real)[0], 1, 1, 1], seed=self.draw_seed(step, Draw.MIRROR)) < 0.5
        return tf.where(flip, tf.reverse(real, axis=[2]), real)

    def set_learning_rates(self, g_rate: float, d_rate: float) -> None:
        """The optimizers' learning rates from now on (between compiled calls: the step reads
        their variables)."""
        for opt, rate in ((self.g_opt, g_rate), (self.d_opt, d_rate)):
            inner = getattr(opt, "inner_optimizer", opt)  # a LossScaleOptimizer's own
            inner.learning_rate.assign(np.float32(rate))

    def augment(self, images, step, purpose: Draw):
        """What D sees: ``images`` augmented with the draws of ``purpose`` at ``step``."""
        if self.augmenter is None:
            return images
        return self.augmenter(images, self.augment_p, self.draw_seed(step, purpose))

    # -- one step (replica context) -------------------------------------------------------
    def train_step(self, real, step, labels=None, update_generator: bool = True) -> dict[str, tf.Tensor]:
        """One step on one real batch; returns :data:`STEP_RESULTS` by name.

        Both networks are updated from one forward pass (the original two-tape step): each
        tape differentiates only its own network's variables, so the discriminator's update
        never touches the generator and the other way round. ``update_generator`` False
        updates the discriminator alone (``g_loss`` is then 0). ``labels`` (int32 (B,);
        None: unconditional) condition both networks: the generated images get the real
        batch's labels.
        """
        z = self.latents(step, tf.shape(real)[0])
        real = self.augment(self.mirrored(real, step), step, Draw.AUGMENT_REAL)
        critic = self.critic(labels)
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            g_input = z if labels is None else [z, labels]
            fake = self.augment(self.generator(g_input, training=True), step, Draw.AUGMENT_FAKE)  # G's gradient flows through
            real_logits, reconstruction = self._real_forward(real, labels)
            seen = LossInputs(critic, real, fake, real_logits, critic(fake, training=True),
                              self.draw_seed(step, Draw.LOSS), labels, step, reconstruction)
            d_loss = self.loss.d_loss(seen)
            g_loss = self.loss.g_loss(seen) if update_generator else tf.constant(0.0)
            d_scaled = self.d_opt.scale_loss(d_loss / self.replicas)
            g_scaled = self.g_opt.scale_loss(g_loss / self.replicas) if update_generator else None
        d_vars, g_vars = self._d_model.trainable_variables, self.generator.trainable_variables
        d_grads = d_tape.gradient(d_scaled, d_vars)
        g_grads = g_tape.gradient(g_scaled, g_vars) if update_generator else None
        self.d_opt.apply_gradients(zip(d_grads, d_vars))
        if update_generator:
            self.g_opt.apply_gradients(zip(g_grads, g_vars))
            self._update_ema(step)
        return {"d_loss": d_loss, "g_loss": g_loss,
                "d_acc_real": tf.reduce_mean(tf.cast(seen.real_logits > 0, tf.float32)),
                "d_acc_fake": tf.reduce_mean(tf.cast(seen.fake_logits < 0, tf.float32))}

    def _real_forward(self, real, labels=None):
        """D's logits of the real batch and, with a decoder, its reconstruction (else None),
        from one forward pass."""
        if self.reconstructor is None:
            return self.critic(labels)(real, training=True), None
        logits, reconstruction = self.reconstructor(real if labels is None else [real, labels], training=True)
        return logits, reconstruction

    def critic(self, labels=None):
        """The discriminator as a function of images alone, ``(images, training) -> logits``:
        the Keras model itself, or with ``labels`` one that passes them beside the images
        (what :class:`~src.losses.LossInputs` hands a loss, so a penalty needs no labels of its own)."""
        if labels is None:
            return self.discriminator

        def conditioned(images, training=True):
            return self.discriminator([images, labels], training=training)
        return conditioned

    def d_step(self, real, step, labels=None) -> dict[str, tf.Tensor]:
        """Update the discriminator only."""
        return self.train_step(real, step, labels, update_generator=False)

    joint_step = train_step  # the name of the original two-tape step

    def _update_ema(self, step):
        if self.ema_decay is None:
            return
        # Warm-up: early on, the average follows the weights closely (as tf.train.ExponentialMovingAverage).
        s = tf.cast(step, tf.float32)
        decay = tf.minimum(self.ema_decay, (1.0 + s) / (10.0 + s))
        for avg, var in zip(self.ema, self.generator.trainable_variables):
            avg.assign(decay * avg + (1.0 - decay) * tf.cast(var.value, avg.dtype))

    # -- one compiled call ------------------------------------------------------------------
    def _one_step(self, real, step, labels=None, g_step=None):
        """A joint step, or a discriminator-only one when ``d_steps`` > 1 and this is not the
        d_steps-th step. ``g_step`` is given (a Python bool) when the loop is unrolled, so no
        sync point sits inside a tf.cond."""
        if self.d_steps == 1 or g_step is True:
            return self.train_step(real, step, labels)
        if g_step is False:
            return self.d_step(real, step, labels)
        return tf.cond((step + 1) % self.d_steps == 0,
                       lambda: self.train_step(real, step, labels), lambda: self.d_step(real, step, labels))

    def _replica_chunk(self, batch, start_step, static_steps):
        """Run the steps of one chunk over ``batch``: images of shape (k * b, H, W, C), or
        for a conditional pair ``(images, labels)`` with labels (k * b,); return the sums of
        :data:`STEP_RESULTS` (a vector in that order) and the first non-finite step.

        With one replica the steps run in a ``tf.range`` loop (one small graph, any k).
        With several, gradient all-reduces may not sit inside graph control flow, so the
        ``static_steps`` steps are unrolled instead.
        """
        b = self.batch_size // self.replicas
        images, labels = batch if self.conditional else (batch, None)
        images = tf.reshape(images, tf.concat([[-1, b], tf.shape(images)[1:]], axis=0))
        if labels is not None:
            labels = tf.reshape(tf.cast(labels, tf.int32), [-1, b])
        dtype = self.discriminator.compute_dtype
        sums = tf.zeros([len(STEP_RESULTS)], tf.float32)
        first_bad = tf.constant(-1, tf.int64)
        if static_steps is None:
            indices, g_steps = tf.range(tf.shape(images, out_type=tf.int64)[0]), None
        else:
            indices = range(static_steps)
            g_steps = [(i + 1) % self.d_steps == 0 for i in indices]
        for i in indices:
            step = start_step + i
            results = self._one_step(tf.cast(images[i], dtype), step, None if labels is None else labels[i],
                                     None if g_steps is None else g_steps[i])
            values = tf.stack([tf.cast(results[name], tf.float32) for name in STEP_RESULTS])
            finite = tf.reduce_all(tf.math.is_finite(values[:2]))  # the two losses
            first_bad = tf.where((first_bad < 0) & ~finite, step, first_bad)
            sums += values
        return sums, first_bad

    def train_chunk(self, dist_images, start_step: int, steps: int | None = None) -> tuple[dict[str, float], int]:
        """Run one chunk of ``steps`` steps on every replica (``dist_images``: the chunk's
        images, or ``(images, labels)`` for a conditional pair).

        Returns the sums over the chunk of :data:`STEP_RESULTS` by name (mean over
        replicas), and the first step with a non-finite loss (-1 if none).
        """
        if self._chunk_fn is None:
            def chunk(images, start, static_steps):
                sums, bad = self.strategy.run(self._replica_chunk, args=(images, start, static_steps))
                first_bad = tf.reduce_max(tf.stack(self.strategy.experimental_local_results(bad)))
                return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, sums, axis=None), first_bad
            self._chunk_fn = tf.function(chunk, jit_compile=self.jit_compile, reduce_retracing=True)
        static_steps = steps if self.replicas > 1 else None
        args = (dist_images, tf.constant(start_step, tf.int64), static_steps)
        if static_steps in self._traced:
            sums, bad = self._chunk_fn(*args)
        else:  # tracing and Grappler run now; Grappler may log one harmless "remapper failed" error
            with filtered_stderr():
                sums, bad = self._chunk_fn(*args)
            self._traced.add(static_steps)
        return dict(zip(STEP_RESULTS, sums.numpy())), int(bad.numpy())

    # -- state ------------------------------------------------------------------------------
    def sync_ema_model(self) -> keras.Model:
        """The EMA generator as a Keras model: averaged weights, BatchNorm statistics copied."""
        source = self.ema if self.ema_decay is not None else self.generator.trainable_variables
        trainable = {id(v): i for i, v in enumerate(self.generator.trainable_variables)}
        for var, target in zip(self.generator.variables, self.ema_generator.variables):
            i = trainable.get(id(var))
            value = source[i] if i is not None else var
            target.assign(value.numpy() if hasattr(value, "numpy") else value)
        return self.ema_generator

    def state_variables(self) -> dict[str, Any]:
        """Every variable a checkpoint holds, keyed by its path (see :mod:`src.checkpoint`)."""
        g = weights.network_variables(self.generator, "generator")
        d = weights.network_variables(self._d_model, "discriminator")
        g_key = {id(var): key for key, var in g.items()}
        g_trained = {g_key[id(var)]: var for var in self.generator.trainable_variables}
        d_key = {id(var): key for key, var in d.items()}
        d_trained = {d_key[id(var)]: var for var in self._d_model.trainable_variables}
        ema = {f"ema/{key}": avg for avg, key in zip(self.ema, g_trained)}
        loss_state = {f"loss/{key}": var for key, var in self.loss.state.items()}
        return {**g, **d, **ema, **loss_state,
                **checkpoint.optimizer_variables(self.g_opt, "g_opt", g_trained),
                **checkpoint.optimizer_variables(self.d_opt, "d_opt", d_trained)}

    def load_state(self, arrays: dict[str, np.ndarray], source: str) -> None:
        """Load a checkpoint's arrays; a UserError naming ``source`` if any key or shape differs."""
        weights.assign(self.state_variables(), arrays, source)
