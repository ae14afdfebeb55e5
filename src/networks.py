"""Generator and discriminator builders for both model families, and generator loading.

Both families follow the original scripts, with their sizes taken from ``params.yaml``:

- ``mlp``: the MNIST MLP GAN. Generator: latent -> Dense/LeakyReLU/BatchNorm blocks ->
  Dense to pixels -> reshape. Discriminator: Flatten -> Dense/LeakyReLU blocks -> 1.
- ``dcgan``: the convolutional GAN. Generator: latent -> Dense -> reshape -> stride-2
  Conv2DTranspose blocks with BatchNorm -> image. Discriminator: stride-2 Conv2D blocks
  with LeakyReLU and Dropout -> 1. Options for small folders (``model.dcgan``):
  ``upsample: nearest|bilinear`` (resize, then a 3x3 convolution: no checkerboard),
  ``spectral_norm`` (every discriminator weight divided by its largest singular value,
  Miyato et al. 2018), ``minibatch_std`` (the spread of D's features over the batch
  as one more feature map, Karras et al. 2018: a collapsed generator is easy to spot) and
  ``d_residual`` (each D block's output plus a shortcut, its input 2x average-pooled
  through a 1x1 convolution, summed with weight 1/sqrt(2) as in StyleGAN2's residual D;
  the shortcut costs a sixteenth of the block's 4x4 convolution), ``g_block_convs`` (3x3
  convolutions after each inner generator upsampling: more depth at the same width) and
  ``attention`` (SAGAN's self-attention in both networks at that feature-map side).

:data:`NETWORKS` registers the families by the name ``model.arch`` gives: a new family is
two builders and one entry there (and its section of settings in ``model``).
Discriminators return logits (the losses apply the sigmoid in a numerically stable way).
The generator's last activation follows the data range: tanh for [-1, 1], sigmoid for
[0, 1]. Final layers run in float32 so that mixed precision keeps outputs and logits exact.

Classes (labelled data, ``data.labels``) are one concept threaded through both families, as
``c`` in StyleGAN2-ADA, where 0 classes means unconditional and builds exactly the networks
above. With ``classes`` (their names, by index) the generator takes ``[latent, label]``: a
learned class vector (:class:`ClassEmbedding`, ``model.class_embedding`` long, carrying the
class names into every saved generator) is concatenated to the latent. The discriminator
takes ``[image, label]`` and adds a projection term to its logit (Miyato and Koyama 2018,
:class:`Projection`): ``D(x, y) = w . phi(x) + embed(y) . phi(x)``, where ``phi(x)`` is
the features its last layer reads. :func:`generator_classes` reads the names back from a
generator; :func:`src.sampling.run_generator` calls a generator of either kind.
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
from src.features import HEAD_PREFIX, with_feature_heads  # it reads this module's spectral-norm layers when called
from src.snapshots import CLASSES_KEY  # a snapshot .npz's class names (absent: unconditional)


def output_activation(data: DataParams) -> str:
    return "tanh" if data.value_range[0] < 0 else "sigmoid"


# ---------------------------------------------------------------------------- classes
@keras.saving.register_keras_serializable(package="gan")
class ClassEmbedding(layers.Embedding):
    """The generator's class vectors: an Embedding that also holds the class names (in its
    config, so they travel inside every ``.keras`` file and ``generate`` knows them)."""

    def __init__(self, class_names, output_dim, **kwargs):
        kwargs.pop("input_dim", None)
        super().__init__(input_dim=len(class_names), output_dim=output_dim, **kwargs)
        self.class_names = [str(name) for name in class_names]

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names)}


class Projection(layers.Layer):
    """The projection discriminator's class term: ``sum(embed(label) * features)``, float32.

    ``spectral_norm`` divides the embedding by its largest singular value, as the paper
    does with every weight of a spectrally normalized discriminator.
    """

    def __init__(self, num_classes: int, spectral_norm: bool = False, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.num_classes, self.spectral_norm = num_classes, spectral_norm

    def build(self, input_shape):
        features = input_shape[0][-1]
        self.embeddings = self.add_weight(shape=(self.num_classes, features), initializer="glorot_uniform",
                                          name="embeddings")
        if self.spectral_norm:
            self.sn_u = _power_vector(self, features)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "spectral_norm": self.spectral_norm}

    def call(self, inputs, training=None):
        features, labels = inputs
        table = _spectral_normalized(self.embeddings, self.sn_u, training) if self.spectral_norm else self.embeddings
        vectors = ops.take(table, ops.cast(ops.reshape(labels, (-1,)), "int32"), axis=0)
        return ops.sum(ops.cast(features, "float32") * vectors, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)


def _label_input():
    return keras.Input((), dtype="int32", name="label")


def _conditioned_latent(model: ModelParams, classes: tuple[str, ...]):
    """The generator's inputs and what its first layer reads: the latent, or with classes
    ``[latent, label]`` and the latent with the class vector concatenated."""
    z = keras.Input((model.latent_dim,), name="latent")
    if not classes:
        return z, z
    label = _label_input()
    vector = ClassEmbedding(list(classes), model.class_embedding, name="class_embedding")(label)
    return [z, label], layers.Concatenate()([z, vector])


def _logit_head(inputs, features, num_classes: int, dense, spectral_norm: bool = False) -> keras.Model:
    """The discriminator's logit from ``features``: one linear unit, plus with classes the projection term."""
    logit = dense(1, dtype="float32")(features)
    if not num_classes:
        return keras.Model(inputs, logit, name="discriminator")
    label = _label_input()
    class_term = Projection(num_classes, spectral_norm, name="projection")([features, label])
    return keras.Model([inputs, label], layers.Add(dtype="float32")([logit, class_term]), name="discriminator")


def generator_classes(generator: keras.Model) -> list[str]:
    """The class names of ``generator`` by index ([] when unconditional)."""
    for layer in generator.layers:
        if isinstance(layer, ClassEmbedding):
            return list(layer.class_names)
    return []


def discriminator_classes(discriminator: keras.Model) -> int:
    """How many classes ``discriminator`` tells apart (0 when unconditional)."""
    return next((layer.num_classes for layer in discriminator.layers if isinstance(layer, Projection)), 0)


# ---------------------------------------------------------------------------- mlp
def _mlp_generator(model: ModelParams, data: DataParams, classes: tuple[str, ...] = ()) -> keras.Model:
    p = model.mlp
    shape = (data.image_size, data.image_size, data.channels)
    z, x = _conditioned_latent(model, classes)
    for units in p.g_units:
        x = layers.Dense(units)(x)
        x = layers.LeakyReLU(negative_slope=p.leaky_slope)(x)
        x = layers.BatchNormalization(momentum=p.bn_momentum)(x)
    x = layers.Dense(int(np.prod(shape)))(x)
    x = layers.Activation(output_activation(data), dtype="float32")(x)
    return keras.Model(z, layers.Reshape(shape, dtype="float32")(x), name="generator")


def _mlp_discriminator(model: ModelParams, data: DataParams, num_classes: int = 0) -> keras.Model:
    p = model.mlp
    image = keras.Input((data.image_size, data.image_size, data.channels), name="image")
    x = layers.Flatten()(image)
    for units in p.d_units:
        x = layers.Dense(units)(x)
        x = layers.LeakyReLU(negative_slope=p.leaky_slope)(x)
    return _logit_head(image, x, num_classes, layers.Dense)


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


def _power_vector(layer: layers.Layer, outputs: int, name: str = "sn_u"):
    """The persistent (1, ``outputs``) vector of :func:`_spectral_normalized`'s power iteration,
    a non-trainable weight of ``layer`` (one copy across replicas)."""
    return layer.add_weight(shape=(1, outputs), initializer="random_normal", trainable=False, name=name,
                            aggregation="only_first_replica")


def _l2_normalize(x):
    return x / ops.sqrt(ops.sum(ops.square(x)) + 1e-12)


class _SpectralNorm:
    """Adds the power-iteration vector ``sn_u`` (1, outputs) after the wrapped layer's build."""

    def build(self, input_shape):
        super().build(input_shape)
        outputs = self.kernel.shape[-1]
        self.sn_u = _power_vector(self, outputs)

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


@keras.saving.register_keras_serializable(package="gan")
class SelfAttention(layers.Layer):
    """SAGAN's self-attention block (Zhang et al. 2019): every position of a feature map
    reads every other, ``x + gamma * attend(x)``, with query and key at 1/8 of the channels,
    value at 1/2 and ``gamma`` starting at 0 (the block starts as the identity). Under mixed
    precision the attention logits and their softmax are float32. With ``spectral_norm`` (the
    discriminator's ``model.dcgan.spectral_norm``) each of the four matrices is spectrally
    normalized, as in SAGAN."""

    MATRICES = ("query", "key", "value", "out")

    def __init__(self, spectral_norm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.spectral_norm = spectral_norm

    def get_config(self):
        return {**super().get_config(), "spectral_norm": self.spectral_norm}

    def build(self, input_shape):
        channels = int(input_shape[-1])
        inner, value = max(1, channels // 8), max(1, channels // 2)
        shapes = {"query": (channels, inner), "key": (channels, inner), "value": (channels, value),
                  "out": (value, channels)}
        init = keras.initializers.GlorotUniform()
        for name in self.MATRICES:
            setattr(self, name, self.add_weight(shape=shapes[name], initializer=init, name=name))
        self.gamma = self.add_weight(shape=(), initializer="zeros", name="gamma")
        if self.spectral_norm:
            for name in self.MATRICES:
                setattr(self, f"{name}_sn_u", _power_vector(self, shapes[name][1], f"{name}_sn_u"))

    def matrices(self, training=None):
        """The four matrices as the block uses them (spectrally normalized when asked)."""
        if not self.spectral_norm:
            return [getattr(self, name) for name in self.MATRICES]
        return [_spectral_normalized(getattr(self, name), getattr(self, f"{name}_sn_u"), training)
                for name in self.MATRICES]

    def call(self, x, training=None):
        _, height, width, channels = x.shape
        query, key, value, out = (ops.cast(w, x.dtype) for w in self.matrices(training))
        flat = ops.reshape(x, (-1, height * width, channels))
        q, k, v = (ops.matmul(flat, w) for w in (query, key, value))
        logits = ops.matmul(ops.cast(q, "float32"), ops.transpose(ops.cast(k, "float32"), (0, 2, 1)))
        weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        attended = ops.matmul(ops.matmul(weights, v), out)
        return x + ops.cast(self.gamma, x.dtype) * ops.reshape(attended, (-1, height, width, channels))


def _attend_at(x, side: int, spectral_norm: bool = False):
    """``x`` through a :class:`SelfAttention` block when its feature maps are ``side`` wide
    (``model.dcgan.attention``; config checks that both networks have that side)."""
    return SelfAttention(spectral_norm)(x) if x.shape[1] == side else x


# ---------------------------------------------------------------------------- dcgan
def _dcgan_generator(model: ModelParams, data: DataParams, classes: tuple[str, ...] = ()) -> keras.Model:
    p = model.dcgan
    start = data.image_size // 2 ** len(p.g_filters)

    def activation(x):
        if p.g_activation == "relu":
            return layers.ReLU()(x)
        return layers.LeakyReLU(negative_slope=p.leaky_slope)(x)

    def bn_act(x):
        return activation(layers.BatchNormalization(momentum=p.bn_momentum)(x))

    def upsample(x, filters, how, **kwargs):
        if how == "transpose":
            return layers.Conv2DTranspose(filters, p.kernel_size, strides=2, padding="same", **kwargs)(x)
        x = layers.UpSampling2D(2, interpolation=how)(x)
        return layers.Conv2D(filters, 3, padding="same", **kwargs)(x)

    z, x = _conditioned_latent(model, classes)
    x = bn_act(layers.Dense(start * start * p.g_filters[0], use_bias=False)(x))
    x = layers.Reshape((start, start, p.g_filters[0]))(x)
    for filters in p.g_filters[1:]:
        x = bn_act(upsample(x, filters, p.upsample, use_bias=False))
        for _ in range(p.g_block_convs):  # more depth at this resolution, same width
            x = bn_act(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))
        x = _attend_at(x, p.attention)
    x = upsample(x, data.channels, p.upsample if p.upsample_image == "same" else p.upsample_image, dtype="float32")
    image = layers.Activation(output_activation(data), dtype="float32")(x)
    return keras.Model(z, image, name="generator")


def _dcgan_discriminator(model: ModelParams, data: DataParams, num_classes: int = 0) -> keras.Model:
    p = model.dcgan
    image = keras.Input((data.image_size, data.image_size, data.channels), name="image")
    conv, dense = (SNConv2D, SNDense) if p.spectral_norm else (layers.Conv2D, layers.Dense)
    x = image
    for i, filters in enumerate(p.d_filters):
        if p.minibatch_std and i == len(p.d_filters) - 1:
            x = MinibatchStdDev()(x)
        block_input = x
        x = conv(filters, p.kernel_size, strides=2, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=p.leaky_slope)(x)
        if p.d_residual:
            shortcut = layers.AveragePooling2D(2, padding="same")(block_input)
            shortcut = conv(filters, 1, use_bias=False)(shortcut)
            x = layers.Rescaling(float(np.sqrt(0.5)))(layers.Add()([x, shortcut]))
        x = _attend_at(x, p.attention, p.spectral_norm)
        if p.dropout > 0:
            x = layers.Dropout(p.dropout)(x)
    x = layers.Flatten()(x)
    return _logit_head(image, x, num_classes, dense, p.spectral_norm)


class NetworkFamily(NamedTuple):
    """A generator and a discriminator builder.

    ``generator(model, data, classes)`` maps latents (B, latent_dim) to images (B, size,
    size, channels) in the data range; ``discriminator(model, data, num_classes)`` maps
    images to logits (B, 1), float32. With classes (names; a count for D) both also take
    an int32 label (B,) as a second input: build them with :func:`_conditioned_latent` and
    :func:`_logit_head`, and 0 classes builds the unconditional networks unchanged.
    """
    generator: Callable[[ModelParams, DataParams], keras.Model]
    discriminator: Callable[[ModelParams, DataParams], keras.Model]


# ``model.arch`` names one of these (``config.ARCHS`` lists the accepted names, checked equal by a
# test); a family's own settings live in the ``model`` section under its name.
NETWORKS: dict[str, NetworkFamily] = {
    "mlp": NetworkFamily(_mlp_generator, _mlp_discriminator),
    "dcgan": NetworkFamily(_dcgan_generator, _dcgan_discriminator),
}


def build_generator(model: ModelParams, data: DataParams, classes=()) -> keras.Model:
    """latent (B, latent_dim) -> images (B, size, size, channels) in the data range;
    with ``classes`` (names by index) ``[latent, label (B,) int32]`` -> images."""
    return NETWORKS[model.arch].generator(model, data, tuple(classes))


def build_discriminator(model: ModelParams, data: DataParams, num_classes: int = 0) -> keras.Model:
    """images (B, size, size, channels) -> logits (B, 1), float32; with ``num_classes``
    ``[images, label (B,) int32]`` -> logits. With ``model.features.backbone`` set, the heads
    on a frozen pretrained network join in (:mod:`src.features`): logits (B, 4)."""
    discriminator = NETWORKS[model.arch].discriminator(model, data, num_classes)
    if model.features.backbone == "none":
        return discriminator
    slope = model.dcgan.leaky_slope if model.arch == "dcgan" else model.mlp.leaky_slope
    return with_feature_heads(discriminator, model.features, data, slope)


def build_reconstructor(discriminator: keras.Model, model: ModelParams, data: DataParams) -> keras.Model:
    """``discriminator`` with a second output: FastGAN's self-supervised decoder (Liu et al.
    2021, scaled down). From the feature maps D's last block made of an image, nearest 2x
    upsampling and 3x3 convolutions (a quarter of those maps' channels, halving at each
    step, at least 8; LeakyReLU of ``model.dcgan.leaky_slope``) redraw the image at half its side; ``train.reconstruction`` weighs
    its error on the real images in D's loss (:func:`src.losses.with_reconstruction`).

    Returns a model with D's inputs and outputs ``[logits, reconstruction]`` that shares
    D's layers: D alone (the fake images, the penalties) skips the decoder's cost.
    """
    flatten = next((layer for layer in discriminator.layers if isinstance(layer, layers.Flatten)
                    and not layer.name.startswith(HEAD_PREFIX)), None)  # not a pretrained network's head
    if flatten is None or len(flatten.input.shape) != 4:
        raise UserError("params key 'train.reconstruction' needs a convolutional discriminator (model.arch dcgan)")
    x = flatten.input
    side, channels = x.shape[1], x.shape[-1]
    target = data.image_size // 2
    if target % side or (target // side) & (target // side - 1):
        raise UserError(f"params key 'train.reconstruction': D's last feature maps ({side}x{side}) cannot be "
                        f"upsampled by powers of 2 to half the image side ({target})")
    width = max(channels // 4, 8)
    while side < target:
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = layers.Conv2D(width, 3, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=model.dcgan.leaky_slope)(x)
        side, width = side * 2, max(width // 2, 8)
    reconstruction = layers.Conv2D(data.channels, 3, padding="same", dtype="float32", name="reconstruction")(x)
    outputs = discriminator.outputs + [reconstruction]
    inputs = discriminator.inputs if len(discriminator.inputs) > 1 else discriminator.inputs[0]
    return keras.Model(inputs, outputs, name="discriminator")


# ---------------------------------------------------------------------------- weights
def variables_to_arrays(model: keras.Model, prefix: str) -> dict[str, np.ndarray]:
    """Every variable of ``model`` (weights, BatchNorm statistics, dropout seed state), keyed
    by its path as checkpoints key it (``g/dense/kernel``: see src/weights.py)."""
    return {key: np.asarray(var.numpy()) for key, var in network_variables(model, prefix).items()}


def assign_from_arrays(model: keras.Model, arrays: dict[str, np.ndarray], prefix: str, source: str) -> None:
    """Assign each array of ``arrays`` to the variable of ``model`` with its key; a missing,
    unexpected or misshapen array is a one-line UserError naming ``source``."""
    assign(network_variables(model, prefix), arrays, source, what="generator file")


def snapshot_arrays(generator: keras.Model) -> dict[str, np.ndarray]:
    """What a generator snapshot ``.npz`` holds: every variable (:func:`variables_to_arrays`)
    and, for a conditional generator, its class names under :data:`CLASSES_KEY`."""
    arrays = variables_to_arrays(generator, "g")
    classes = generator_classes(generator)
    if classes:
        arrays[CLASSES_KEY] = np.array(classes, dtype=str)
    return arrays


def load_generator(params: Params, path: str | Path) -> keras.Model:
    """The generator described by ``params`` with weights (and class names) from ``path``.

    ``path`` is a snapshot ``.npz`` written by training or the exported ``.keras`` model;
    the file says whether the generator is conditional and names its classes. A missing or
    corrupt file, or one made for another architecture, is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: generator file not found (run the train stage first)")
    if path.suffix == ".keras":
        try:
            loaded = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a damaged archive
            raise UserError(f"{path}: cannot load the generator ({type(exc).__name__})") from None
        arrays, classes = variables_to_arrays(loaded, "g"), generator_classes(loaded)
    else:
        try:
            arrays = load_arrays(path)
        except Exception as exc:  # zipfile/numpy errors for truncated or foreign files
            raise UserError(f"{path}: cannot read the generator snapshot ({type(exc).__name__})") from None
        names = arrays.pop(CLASSES_KEY, None)
        classes = [str(name) for name in names] if names is not None else []
    generator = build_generator(params.model, params.data, classes)
    assign_from_arrays(generator, arrays, "g", str(path))
    expected = (params.data.image_size, params.data.image_size, params.data.channels)
    if tuple(generator.output_shape[1:]) != expected:
        raise UserError(f"{path}: generator makes images of shape {generator.output_shape[1:]}, "
                        f"params.yaml expects {expected}")
    return generator
