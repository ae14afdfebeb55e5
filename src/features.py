"""A second opinion for the discriminator: heads on a frozen pretrained image network (``model.features``).

On a few thousand pictures a discriminator trained from scratch learns to tell them from
fakes by what little those pictures share, overfits, and stops teaching the generator
(docs/roofline.md measures where that leaves a 1,432-picture folder). Projected GAN (Sauer et
al. 2021) and Vision-aided GAN (Kumari et al. 2022) give the discriminator features learned
on ImageNet instead: the network stays frozen and only small heads on its feature maps train,
which lifted their small-data results well beyond what augmentation alone reached.

Here, with ``model.features.backbone`` set, :func:`with_feature_heads` wraps the family's
discriminator (either family, with or without classes): the image it sees (augmented, as
always) is mapped to [0, 1], repeated to three channels if grey, resized to
``model.features.input_size`` and scaled as the backbone expects; the backbone's feature maps
at three depths (strides 4, 8 and 16) each feed a head (a 1x1 convolution to
``model.features.channels``, LeakyReLU, stride-2 4x4 convolutions down to 4x4, one linear
logit, spectrally normalized unless ``model.features.spectral_norm`` is false, as Projected
GAN's). The discriminator then returns logits of shape (B, 4): its own and the three heads'.
Every loss averages over all of them, so each head is a discriminator of its own with the
same loss, as in both papers; the generator is differentiated through the frozen network. The
penalties (R1, WGAN-GP's) take the gradient of the mean logit; the train log's ``d_acc``, ADA's
overfitting heuristic and LeCam's moving averages pool all four logits.

Weights: Keras downloads the ImageNet weights once (into ``~/.keras/models``) when
``model.features.weights`` is "", or loads the local no-top weights file it names (keep it
under ``data/weights/``, which the train stage lists as a dependency; params validation
rejects a file elsewhere, which training would read unlisted). Neither there is a
one-line error naming the key, never a silent random network.

:data:`BACKBONES` registers the networks by the name ``model.features.backbone`` gives
(``config.FEATURE_BACKBONES`` lists them, checked equal by a test): a new one is one entry.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Callable, NamedTuple

import keras
from keras import layers

from src.config import DataParams, FeaturesParams
from src.errors import UserError

WEIGHTS_KEY = "model.features.weights"
HEAD_PREFIX = "features_"  # names of the heads' layers (build_reconstructor skips them)


class Backbone(NamedTuple):
    """A no-top Keras application: ``build(input_shape, weights)``; what it expects of pixels
    in [0, 1] (``x * scale + offset``, a number or one per channel); the layers whose outputs
    the heads read; and (None: the same) the scale and offset when the weights come from a
    local file rather than ``weights="imagenet"``, for an application that builds differently then."""
    build: Callable[[tuple[int, int, int], str], keras.Model]
    scale: float | tuple[float, ...]
    offset: float | tuple[float, ...]
    taps: tuple[str, ...]
    file_scale: tuple[float, ...] | None = None
    file_offset: tuple[float, ...] | None = None

    def pixels(self, from_file: bool):
        """``(scale, offset)`` for pixels in [0, 1]."""
        if from_file and self.file_scale is not None:
            return self.file_scale, self.file_offset
        return self.scale, self.offset


def _mobilenet_v2(alpha: float):
    def build(shape, weights):
        return keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=weights)
    return build


def _efficientnet_b0(shape, weights):
    # Rescaling and normalization are inside the model: it reads pixels in [0, 255].
    return keras.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=weights)


# EfficientNet's ImageNet file holds the standard deviations where its Normalization layer
# expects variances; with weights="imagenet" Keras appends a Rescaling by 1/sqrt(std) per
# channel to make up for it, but not when the same file is loaded from a path. Mapping pixels
# p in [0, 1] to 255 (k p + (1 - k) mean), k = 1/sqrt(std), gives the file the same features.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_K = tuple(1.0 / math.sqrt(s) for s in _IMAGENET_STD)
_EFFICIENTNET_FILE_SCALE = tuple(255.0 * k for k in _K)
_EFFICIENTNET_FILE_OFFSET = tuple(255.0 * (1.0 - k) * m for k, m in zip(_K, _IMAGENET_MEAN))


# The last feature map at strides 4, 8 and 16 of each (the expansions before each stride-2 block).
_MOBILENET_TAPS = ("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")

BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(_mobilenet_v2(1.0), 2.0, -1.0, _MOBILENET_TAPS),
    "mobilenet_v2_035": Backbone(_mobilenet_v2(0.35), 2.0, -1.0, _MOBILENET_TAPS),
    "efficientnet_b0": Backbone(_efficientnet_b0, 255.0, 0.0,
                                ("block3a_expand_activation", "block4a_expand_activation", "block6a_expand_activation"),
                                _EFFICIENTNET_FILE_SCALE, _EFFICIENTNET_FILE_OFFSET),
}


def load_backbone(features: FeaturesParams) -> keras.Model:
    """The backbone of ``features`` with its pretrained weights: the local file
    ``features.weights`` names, or (when it is "") the Keras download of ImageNet's.
    A UserError naming the params key when neither can be had."""
    spec = BACKBONES[features.backbone]
    shape = (features.input_size, features.input_size, 3)
    path = features.weights
    if path and not os.path.isfile(path):
        raise UserError(f"params key '{WEIGHTS_KEY}' names '{path}', which does not exist (a no-top "
                        f"{features.backbone} weights file, or \"\" for the Keras download)")
    try:
        with warnings.catch_warnings():  # MobileNetV2's note that its ImageNet weights were made at 224
            warnings.filterwarnings("ignore", message=".*Weights for input shape.*", category=UserWarning)
            return spec.build(shape, path or "imagenet")
    except Exception as exc:  # noqa: BLE001 - any failure to get the weights is the user's to fix
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if path:
            raise UserError(f"params key '{WEIGHTS_KEY}': could not load {features.backbone} weights "
                            f"from '{path}' ({reason})") from None
        raise UserError(f"params key 'model.features.backbone': could not download the ImageNet weights of "
                        f"{features.backbone} ({reason}); set '{WEIGHTS_KEY}' to a local no-top weights "
                        "file (docs/training.md)") from None


def with_feature_heads(discriminator: keras.Model, features: FeaturesParams, data: DataParams,
                       leaky_slope: float = 0.2) -> keras.Model:
    """``discriminator`` (logits (B, 1)) with the frozen backbone's heads beside it: the same
    inputs, logits (B, 1 + 3), float32. Its own layers are shared, not copied."""
    from src.networks import SNConv2D, SNDense  # networks imports this module when it builds

    spec = BACKBONES[features.backbone]
    backbone = load_backbone(features)
    for layer in backbone.layers:  # an outer training=True call reaches them despite training=False below
        if isinstance(layer, layers.Dropout):
            layer.rate = 0.0
    taps = keras.Model(backbone.input, [backbone.get_layer(name).output for name in spec.taps],
                       name=f"{HEAD_PREFIX}backbone")
    taps.trainable = False
    image = discriminator.inputs[0]
    lo, hi = data.value_range
    x = layers.Rescaling(1.0 / (hi - lo), offset=-lo / (hi - lo), name=f"{HEAD_PREFIX}unit")(image)
    if data.channels == 1:
        x = layers.Concatenate(name=f"{HEAD_PREFIX}rgb")([x, x, x])
    x = layers.Resizing(features.input_size, features.input_size, interpolation="bilinear",
                        name=f"{HEAD_PREFIX}resize")(x)
    scale, offset = spec.pixels(from_file=bool(features.weights))
    x = layers.Rescaling(scale, offset=offset, name=f"{HEAD_PREFIX}scale")(x)
    maps = taps(x, training=False)  # frozen (trainable False): BatchNorm in inference mode
    conv, dense = (SNConv2D, SNDense) if features.spectral_norm else (layers.Conv2D, layers.Dense)
    logits = [discriminator.outputs[0]]
    for i, h in enumerate(maps):
        name = f"{HEAD_PREFIX}{i}"
        h = conv(features.channels, 1, name=f"{name}_project")(h)
        h = layers.LeakyReLU(negative_slope=leaky_slope, name=f"{name}_act")(h)
        down = 0
        while h.shape[1] > 4:
            h = conv(features.channels, 4, strides=2, padding="same", name=f"{name}_down{down}")(h)
            h = layers.LeakyReLU(negative_slope=leaky_slope, name=f"{name}_down{down}_act")(h)
            down += 1
        h = layers.Flatten(name=f"{name}_flatten")(h)
        logits.append(dense(1, dtype="float32", name=f"{name}_logit")(h))
    out = layers.Concatenate(dtype="float32", name=f"{HEAD_PREFIX}logits")(logits)
    inputs = discriminator.inputs if len(discriminator.inputs) > 1 else image
    return keras.Model(inputs, out, name="discriminator")
