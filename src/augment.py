"""Differentiable augmentation of every image the discriminator sees, and its adaptive strength.

Small folders (hundreds to a few thousand images) are where a GAN's discriminator memorises
the real set and training collapses. Two remedies from the literature, both here:

- DiffAugment (Zhao et al. 2020): colour, translation and cutout, written as plain
  differentiable ops, applied to real *and* generated images in the discriminator's and
  the generator's update, so the generator's gradient flows through the augmentation and
  it never learns to produce augmented-looking images.
- Adaptive discriminator augmentation (Karras et al. 2020, ADA): each image is augmented
  with probability ``p``; ``p`` moves towards a target of the overfitting heuristic
  ``r_t = E[sign(D(real))]`` (0 when D cannot tell the real images apart from the fakes,
  1 when it is sure of every real one).

Every random draw is stateless, from a seed that the train step derives from
``(common.seed, step)``: the same step augments the same way, so a resumed run sees
exactly the images an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf


@dataclass(frozen=True)
class Augmenter:
    """``policy``: which ops (names of :data:`AUGMENT_OPS`); ``value_range``: the data range.

    ``translation`` shifts by up to ``translation_ratio`` of the side; ``cutout`` blanks a
    square of ``cutout_ratio`` of the side. Vacated and cut-out pixels take the middle of
    the value range (grey), as DiffAugment's zeros do for data in [-1, 1].
    """
    policy: tuple[str, ...]
    value_range: tuple[float, float]
    translation_ratio: float = 0.125
    cutout_ratio: float = 0.5
    # ``p`` is fixed at 1 (DiffAugment without ADA): every op applies to every image, so the
    # per-image choice is left out of the graph. Same values; on a CPU whose convolutions are
    # fast that choice (a select per op, forward and backward) was a tenth of the train step.
    always: bool = False

    def __call__(self, images: tf.Tensor, p: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment ``images`` (B, H, W, C); each op applies to each image with probability ``p``.

        ``seed`` is a stateless seed (shape [2], int64). ``p`` = 0 returns ``images``
        unchanged (the same tensor values, bit for bit).
        """
        if not self.policy:
            return images
        dtype = images.dtype
        x = tf.cast(images, tf.float32)
        batch = tf.shape(x)[0]
        p = tf.cast(p, tf.float32)
        for i, name in enumerate(self.policy):
            op_seed = tf.random.experimental.stateless_fold_in(seed, i)
            apply_seed, draw_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
            augmented = AUGMENT_OPS[name](x, draw_seed, self)
            if not self.always:
                chosen = tf.random.stateless_uniform([batch, 1, 1, 1], seed=apply_seed) < p
                augmented = tf.where(chosen, augmented, x)
            x = augmented
        return tf.cast(x, dtype)


# -- the ops: each ``op(x, seed, augmenter)`` on float32 images, all draws per image ---------
AUGMENT_OPS: dict[str, Callable[[tf.Tensor, tf.Tensor, Augmenter], tf.Tensor]] = {}


def augment_op(name: str):
    """Decorator: add an op to :data:`AUGMENT_OPS` as ``name`` (``train.augment.policy`` names
    them; ``config.AUGMENT_POLICIES`` lists the accepted names, checked equal by a test)."""
    def add(op):
        if name in AUGMENT_OPS:
            raise ValueError(f"augmentation op {name!r} registered twice")
        AUGMENT_OPS[name] = op
        return op
    return add


@augment_op("color")
def color(x, seed, aug: Augmenter):
    """Brightness, saturation and contrast."""
    lo, hi = aug.value_range
    half = (hi - lo) / 2.0
    s = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    batch = tf.shape(x)[0]
    u = [tf.random.stateless_uniform([batch, 1, 1, 1], seed=k) for k in s]
    x = x + (u[0] - 0.5) * half                               # brightness
    grey = tf.reduce_mean(x, axis=3, keepdims=True)
    x = (x - grey) * (u[1] * 2.0) + grey                      # saturation
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * (u[2] + 0.5) + mean                   # contrast


@augment_op("translation")
def translation(x, seed, aug: Augmenter):
    """A shift by up to ``translation_ratio`` of the side, the fill moved in."""
    shape = tf.shape(x)
    batch, h, w = shape[0], shape[1], shape[2]
    sy, sx = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    max_y = tf.cast(tf.cast(h, tf.float32) * aug.translation_ratio + 0.5, tf.int32)
    max_x = tf.cast(tf.cast(w, tf.float32) * aug.translation_ratio + 0.5, tf.int32)
    ty = tf.random.stateless_uniform([batch, 1], seed=sy, minval=-max_y, maxval=max_y + 1, dtype=tf.int32)
    tx = tf.random.stateless_uniform([batch, 1], seed=sx, minval=-max_x, maxval=max_x + 1, dtype=tf.int32)
    # Pad one pixel of fill on every side, then gather each output row/column from its
    # shifted source, clipped into the pad: a shifted image with the fill moved in.
    fill = sum(aug.value_range) / 2.0
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=fill)
    rows = tf.clip_by_value(tf.range(h)[None, :] - ty + 1, 0, h + 1)           # (B, H)
    cols = tf.clip_by_value(tf.range(w)[None, :] - tx + 1, 0, w + 1)           # (B, W)
    x = tf.gather(padded, rows, axis=1, batch_dims=1)                          # (B, H, W+2, C)
    return tf.gather(x, cols, axis=2, batch_dims=1)                            # (B, H, W, C)


@augment_op("cutout")
def cutout(x, seed, aug: Augmenter):
    """A square of ``cutout_ratio`` of the side set to the fill."""
    shape = tf.shape(x)
    batch, h, w = shape[0], shape[1], shape[2]
    size_y = tf.cast(tf.cast(h, tf.float32) * aug.cutout_ratio + 0.5, tf.int32)
    size_x = tf.cast(tf.cast(w, tf.float32) * aug.cutout_ratio + 0.5, tf.int32)
    sy, sx = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    # The square's centre may sit anywhere, so it is clipped at the borders (as DiffAugment).
    cy = tf.random.stateless_uniform([batch, 1, 1], seed=sy, minval=0, maxval=h + (1 - size_y % 2), dtype=tf.int32)
    cx = tf.random.stateless_uniform([batch, 1, 1], seed=sx, minval=0, maxval=w + (1 - size_x % 2), dtype=tf.int32)
    y = tf.range(h)[None, :, None]
    xx = tf.range(w)[None, None, :]
    inside = ((y >= cy - size_y // 2) & (y < cy - size_y // 2 + size_y)
              & (xx >= cx - size_x // 2) & (xx < cx - size_x // 2 + size_x))
    fill = sum(aug.value_range) / 2.0
    return tf.where(inside[..., None], tf.constant(fill, x.dtype), x)


def next_probability(p: float, r_t: float, target: float, images: int, speed_images: float) -> float:
    """ADA's update: move ``p`` by ``images / speed_images`` towards more augmentation when
    ``r_t`` (the mean sign of D on real images since the last update) is above ``target``,
    and towards less when below; clipped to [0, 1].

    ``speed_images`` is how many training images it takes to move ``p`` from 0 to 1 when
    the heuristic stays on one side of the target (ADA's ``ada_kimg`` * 1000).
    """
    step = images / speed_images
    if r_t > target:
        p += step
    elif r_t < target:
        p -= step
    return min(max(p, 0.0), 1.0)
