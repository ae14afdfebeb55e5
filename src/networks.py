"""Generator and discriminator builders for both model families, and generator loading.

Both families follow the original scripts, with their sizes taken from ``params.yaml``:

- ``mlp``: the MNIST MLP GAN. Generator: latent -> Dense/LeakyReLU/BatchNorm blocks ->
  Dense to pixels -> reshape. Discriminator: Flatten -> Dense/LeakyReLU blocks -> 1.
- ``dcgan``: the convolutional GAN. Generator: latent -> Dense -> reshape -> stride-2
  Conv2DTranspose blocks with BatchNorm -> image. Discriminator: stride-2 Conv2D blocks
  with LeakyReLU and Dropout -> 1. Options for small folders (``model.dcgan``):
  ``upsample: nearest|bilinear`` (resize, then a 3x3 convolution: no checkerboard),
  ``spectral_norm`` (every discriminator weight divided by its largest singular value,
  Miyato et al. 2018) and ``minibatch_std`` (the spread of D's features over the batch
  as one more feature map, Karras et al. 2018: a collapsed generator is easy to spot).

:data:`NETWORKS` registers the families by the name ``model.arch`` gives: a new family is
two builders and one entry there (and its section of settings in ``model``).
Discriminators return logits (the losses apply the sigmoid in a numerically stable way).
The generator's last activation follows the data range: tanh for [-1, 1], sigmoid for
[0, 1]. Final layers run in float32 so that mixed precision keeps outputs and logits exact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import keras
import numpy as np
from keras import layers, ops

from src.atomic import load_arrays
from src.weights import assign, network_variables
from src.config import DataParams, ModelParams, Params
from src.errors import UserError


def output_activation(data: DataParams) -> str:
    return "tanh" if data.value_range[0] < 0 else "sigmoid"


def _mlp_generator(model: ModelParams, data: DataParams) -> keras.Model:
    p = model.mlp
    shape = (data.image_size, data.image_size, data.channels)
    z = keras.Input((model.latent_dim,), name="latent")
    x = z
    for units in p.g_units:
        x = layers.Dense(units)(x)
        x = layers.LeakyReLU(negative_slope=p.leaky_slope)(x)
        x = layers.BatchNormalization(momentum=p.bn_momentum)(x)
    x = layers.Dense(int(np.prod(shape)))(x)
    x = layers.Activation(output_activation(data), dtype="float32")(x)
    return keras.Model(z, layers.Reshape(shape, dtype="float32")(x), name="generator")


def _mlp_discriminator(model: ModelParams, data: DataParams) -> keras.Model:
    p = model.mlp
    image = keras.Input((data.image_size, data.image_size, data.channels), name="image")
    x = layers.Flatten()(image)
    for units in p.d_units:
        x = layers.Dense(units)(x)
        x = layers.LeakyReLU(negative_slope=p.leaky_slope)(x)
    return keras.Model(image, layers.Dense(1, dtype="float32")(x), name="discriminator")


# ---------------------------------------------------------------------------- layers
def _spectral_normalized(kernel, u, training):
    """``kernel`` / its largest singular value, estimated by one power iteration from ``u``.

    ``u`` (1, out) persists across steps (updated only when training), so one iteration a
    step tracks the singular vector as the weights move. Gradients flow through the
    division, not through the power iteration (as in the paper's reference code).
    """
    w = ops.reshape(ops.cast(kernel, "float32"), (-1, kernel.shape[-1]))     # (in, out)
    u_value = ops.stop_gradient(ops.convert_to_tensor(u))
    v = _l2_normalize(ops.matmul(u_value, ops.transpose(w)))                   # (1, in)
    u_new = ops.stop_gradient(_l2_normalize(ops.matmul(v, w)))                # (1, out)
    v = ops.stop_gradient(v)
    sigma = ops.sum(ops.matmul(v, w) * u_new)
    if training:
        u.assign(u_new)
    return ops.cast(kernel / sigma, kernel.dtype)


def _l2_normalize(x):
    return x / ops.sqrt(ops.sum(ops.square(x)) + 1e-12)


class _SpectralNorm:
    """Adds the power-iteration vector ``sn_u`` (1, outputs) after the wrapped layer's build."""

    def build(self, input_shape):
        super().build(input_shape)
        outputs = self.kernel.shape[-1]
        self.sn_u = self.add_weight(shape=(1, outputs), initializer="random_normal", trainable=False,
                                    name="sn_u", aggregation="only_first_replica")

    def _normalized_kernel(self, training):
        return _spectral_normalized(self.kernel, self.sn_u, training)


class SNConv2D(_SpectralNorm, layers.Conv2D):
    """Conv2D whose kernel is spectrally normalized in every call."""

    def call(self, inputs, training=None):
        outputs = self.convolution_op(inputs, self._normalized_kernel(training))
        return ops.add(outputs, ops.reshape(self.bias, (1, 1, 1, self.filters))) if self.use_bias else outputs


class SNDense(_SpectralNorm, layers.Dense):
    """Dense whose kernel is spectrally normalized in every call."""

    def call(self, inputs, training=None):
        x = ops.matmul(inputs, self._normalized_kernel(training))
        return ops.add(x, self.bias) if self.bias is not None else x


class MinibatchStdDev(layers.Layer):
    """Appends one feature map: the mean over features of the std over the batch."""

    def call(self, x):
        x32 = ops.cast(x, "float32")
        std = ops.sqrt(ops.var(x32, axis=0) + 1e-8)
        feature = ops.ones_like(x32[..., :1]) * ops.mean(std)
        return ops.concatenate([x, ops.cast(feature, x.dtype)], axis=-1)


# ---------------------------------------------------------------------------- dcgan
def _dcgan_generator(model: ModelParams, data: DataParams) -> keras.Model:
    p = model.dcgan
    start = data.image_size // 2 ** len(p.g_filters)

    def activation(x):
        if p.g_activation == "relu":
            return layers.ReLU()(x)
        return layers.LeakyReLU(negative_slope=p.leaky_slope)(x)

    z = keras.Input((model.latent_dim,), name="latent")
    x = layers.Dense(start * start * p.g_filters[0], use_bias=False)(z)
    x = activation(layers.BatchNormalization(momentum=p.bn_momentum)(x))
    x = layers.Reshape((start, start, p.g_filters[0]))(x)
    def upsample(x, filters, **kwargs):
        if p.upsample == "transpose":
            return layers.Conv2DTranspose(filters, p.kernel_size, strides=2, padding="same", **kwargs)(x)
        x = layers.UpSampling2D(2, interpolation=p.upsample)(x)
        return layers.Conv2D(filters, 3, padding="same", **kwargs)(x)

    for filters in p.g_filters[1:]:
        x = upsample(x, filters, use_bias=False)
        x = activation(layers.BatchNormalization(momentum=p.bn_momentum)(x))
    x = upsample(x, data.channels, dtype="float32")
    image = layers.Activation(output_activation(data), dtype="float32")(x)
    return keras.Model(z, image, name="generator")


def _dcgan_discriminator(model: ModelParams, data: DataParams) -> keras.Model:
    p = model.dcgan
    image = keras.Input((data.image_size, data.image_size, data.channels), name="image")
    conv, dense = (SNConv2D, SNDense) if p.spectral_norm else (layers.Conv2D, layers.Dense)
    x = image
    for i, filters in enumerate(p.d_filters):
        if p.minibatch_std and i == len(p.d_filters) - 1:
            x = MinibatchStdDev()(x)
        x = conv(filters, p.kernel_size, strides=2, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=p.leaky_slope)(x)
        if p.dropout > 0:
            x = layers.Dropout(p.dropout)(x)
    x = layers.Flatten()(x)
    return keras.Model(image, dense(1, dtype="float32")(x), name="discriminator")


class NetworkFamily(NamedTuple):
    """A generator and a discriminator builder, each ``(model, data) -> keras.Model``.

    The generator maps latents (B, latent_dim) to images (B, size, size, channels) in the
    data range; the discriminator maps images to logits (B, 1), float32.
    """
    generator: Callable[[ModelParams, DataParams], keras.Model]
    discriminator: Callable[[ModelParams, DataParams], keras.Model]


# ``model.arch`` names one of these (``config.ARCHS`` lists the accepted names, checked equal by a
# test); a family's own settings live in the ``model`` section under its name.
NETWORKS: dict[str, NetworkFamily] = {
    "mlp": NetworkFamily(_mlp_generator, _mlp_discriminator),
    "dcgan": NetworkFamily(_dcgan_generator, _dcgan_discriminator),
}


def build_generator(model: ModelParams, data: DataParams) -> keras.Model:
    """latent (B, latent_dim) -> images (B, size, size, channels) in the data range."""
    return NETWORKS[model.arch].generator(model, data)


def build_discriminator(model: ModelParams, data: DataParams) -> keras.Model:
    """images (B, size, size, channels) -> logits (B, 1), float32."""
    return NETWORKS[model.arch].discriminator(model, data)


# ---------------------------------------------------------------------------- weights
def variables_to_arrays(model: keras.Model, prefix: str) -> dict[str, np.ndarray]:
    """Every variable of ``model`` (weights, BatchNorm statistics, dropout seed state), keyed
    by its path as checkpoints key it (``g/dense/kernel``: see src/weights.py)."""
    return {key: np.asarray(var.numpy()) for key, var in network_variables(model, prefix).items()}


def assign_from_arrays(model: keras.Model, arrays: dict[str, np.ndarray], prefix: str, source: str) -> None:
    """Assign each array of ``arrays`` to the variable of ``model`` with its key; a missing,
    unexpected or misshapen array is a one-line UserError naming ``source``."""
    assign(network_variables(model, prefix), arrays, source, what="generator file")


def load_generator(params: Params, path: str | Path) -> keras.Model:
    """The generator described by ``params`` with weights from ``path``.

    ``path`` is a snapshot ``.npz`` written by training or the exported ``.keras`` model.
    A missing or corrupt file, or one made for another architecture, is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: generator file not found (run the train stage first)")
    generator = build_generator(params.model, params.data)
    if path.suffix == ".keras":
        try:
            loaded = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a damaged archive
            raise UserError(f"{path}: cannot load the generator ({type(exc).__name__})") from None
        arrays = variables_to_arrays(loaded, "g")
    else:
        try:
            arrays = load_arrays(path)
        except Exception as exc:  # zipfile/numpy errors for truncated or foreign files
            raise UserError(f"{path}: cannot read the generator snapshot ({type(exc).__name__})") from None
    assign_from_arrays(generator, arrays, "g", str(path))
    expected = (params.data.image_size, params.data.image_size, params.data.channels)
    if tuple(generator.output_shape[1:]) != expected:
        raise UserError(f"{path}: generator makes images of shape {generator.output_shape[1:]}, "
                        f"params.yaml expects {expected}")
    return generator
