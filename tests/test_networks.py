"""Generator and discriminator shapes and output ranges for both families at several sizes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_params
from src.config import dcgan_sides
from src.errors import UserError
from src.keras_file import save_model
from src.networks import (SelfAttention, SNConv2D, SNDense, _spectral_normalized, build_discriminator,
                          build_generator, load_generator)

SIZES = [  # (image_size, channels, g_filters, d_filters)
    (28, 1, [16, 8], [8, 16]),
    (32, 3, [16, 8, 8], [8, 16]),
    (64, 3, [16, 8, 8, 4], [4, 8, 16]),
    (128, 3, [16, 8, 8, 4, 4], [4, 8, 8, 16]),
    (256, 3, [8, 8, 4, 4, 4, 4], [4, 4, 8, 8]),
]


@pytest.mark.parametrize("arch", ["dcgan", "mlp"])
@pytest.mark.parametrize("size,channels,g_filters,d_filters", SIZES)
@pytest.mark.parametrize("value_range", [[-1, 1], [0, 1]])
def test_shapes_and_ranges(arch, size, channels, g_filters, d_filters, value_range):
    if arch == "mlp" and size > 64:
        pytest.skip("the MLP GAN is meant for small images")
    params = tiny_params(data={"image_size": size, "channels": channels, "range": value_range},
                         model={"arch": arch, "dcgan": {"g_filters": g_filters, "d_filters": d_filters}})
    generator = build_generator(params.model, params.data)
    discriminator = build_discriminator(params.model, params.data)
    z = np.random.default_rng(0).standard_normal((3, params.model.latent_dim)).astype(np.float32) * 10
    images = np.asarray(generator(z, training=False))
    assert images.shape == (3, size, size, channels)
    lo, hi = value_range
    assert images.min() >= lo and images.max() <= hi
    assert images.dtype == np.float32
    logits = np.asarray(discriminator(images, training=False))
    assert logits.shape == (3, 1) and np.isfinite(logits).all()


def test_last_activation_follows_range():
    tanh = build_generator(*_sections(tiny_params(data={"range": [-1, 1]})))
    sigmoid = build_generator(*_sections(tiny_params(data={"range": [0, 1]})))
    assert tanh.layers[-1].get_config()["activation"] == "tanh"
    assert sigmoid.layers[-1].get_config()["activation"] == "sigmoid"


def _sections(params):
    return params.model, params.data


# ---------------------------------------------------------------------------- small-folder options
@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize("size,channels,g_filters,d_filters", SIZES[1:3])
def test_resize_upsampling_and_discriminator_options(upsample, size, channels, g_filters, d_filters):
    params = tiny_params(data={"image_size": size, "channels": channels, "range": [0, 1]},
                         model={"dcgan": {"g_filters": g_filters, "d_filters": d_filters, "upsample": upsample,
                                          "spectral_norm": True, "minibatch_std": True, "d_residual": True,
                                          "dropout": 0.0}})
    generator = build_generator(params.model, params.data)
    assert not any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in generator.layers)
    assert sum(isinstance(layer, keras.layers.UpSampling2D) for layer in generator.layers) == len(g_filters)
    z = np.random.default_rng(0).standard_normal((3, params.model.latent_dim)).astype(np.float32)
    images = np.asarray(generator(z, training=False))
    assert images.shape == (3, size, size, channels) and images.min() >= 0 and images.max() <= 1
    logits = np.asarray(build_discriminator(params.model, params.data)(images, training=True))
    assert logits.shape == (3, 1) and np.isfinite(logits).all()


def test_transposed_upsampling_is_the_default():
    generator = build_generator(*_sections(tiny_params()))
    assert sum(isinstance(layer, keras.layers.Conv2DTranspose) for layer in generator.layers) == 2


@pytest.mark.parametrize("block_convs", [0, 2])
def test_generator_block_convs_add_depth_at_each_inner_resolution(block_convs):
    """``g_block_convs`` 3x3 convolutions after each inner upsampling, at that block's width
    and resolution; the image layer and the output shape stay as they were."""
    params = tiny_params(model={"dcgan": {"g_block_convs": block_convs}})
    generator = build_generator(*_sections(params))
    extra = [layer for layer in generator.layers
             if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose)]
    inner = params.model.dcgan.g_filters[1:]
    assert [layer.filters for layer in extra] == [f for f in inner for _ in range(block_convs)]
    assert all(layer.kernel_size == (3, 3) for layer in extra)
    z = np.random.default_rng(0).standard_normal((2, params.model.latent_dim)).astype(np.float32)
    assert np.asarray(generator(z, training=False)).shape == (2, params.data.image_size, params.data.image_size,
                                                              params.data.channels)


def test_self_attention_starts_as_the_identity_and_then_mixes_positions():
    """gamma 0 (its start): the block returns its input. gamma 1: changing one position of one
    image changes that image's output at every position (each reads every other) and leaves
    the other image of the batch as it was."""
    keras.utils.set_random_seed(0)
    block = SelfAttention()
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 16)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(block(x)), x)
    block.gamma.assign(1.0)
    y = np.asarray(block(x))
    x2 = x.copy()
    x2[0, 0, 0] += 1.0
    y2 = np.asarray(block(x2))
    moved = np.abs(y2[0] - x2[0] - (y[0] - x[0])).max(axis=-1)  # the attended part alone
    assert (moved > 1e-6).all()
    np.testing.assert_array_equal(y2[1], y[1])


@pytest.mark.parametrize("size, g_filters, d_filters", [(8, [16, 8], [8, 16]), (32, [32, 16, 8], [8, 16, 32]),
                                                       (28, [16, 8], [8, 16, 32])])
def test_attention_goes_at_its_side_in_both_networks_and_config_knows_the_sides(size, g_filters, d_filters):
    """Every side config offers for both networks (``dcgan_sides``) builds one attention block
    in each network, reading feature maps of exactly that side; any other value is one line
    naming the key, before a network is built."""
    def params_for(side):
        return tiny_params(data={"image_size": size},
                           model={"dcgan": {"g_filters": g_filters, "d_filters": d_filters, "attention": side}})
    g_sides, d_sides = dcgan_sides(size, params_for(0).model.dcgan)
    both = sorted(set(g_sides) & set(d_sides))
    assert both  # each case has a side in common
    for side in both:
        for network in (build_generator(*_sections(params_for(side))), build_discriminator(*_sections(params_for(side)))):
            blocks = [layer for layer in network.layers if isinstance(layer, SelfAttention)]
            assert [block.input.shape[1] for block in blocks] == [side]
    for side in sorted(set(g_sides) ^ set(d_sides)) + [3, size]:
        with pytest.raises(UserError, match=rf"^params key 'model\.dcgan\.attention' must be 0 or a feature-map side "
                                            rf".*; got {side}$"):
            params_for(side)


def test_self_attention_in_the_discriminator_is_spectrally_normalized_with_spectral_norm():
    """``spectral_norm`` reaches D's attention: each matrix is divided by its largest singular
    value (estimated by the power iteration, which converges over training calls), and the
    block computes with those matrices; the generator's attention stays plain."""
    params = tiny_params(model={"dcgan": {"attention": 4, "spectral_norm": True}})
    discriminator = build_discriminator(*_sections(params))
    (block,) = [layer for layer in discriminator.layers if isinstance(layer, SelfAttention)]
    (g_block,) = [layer for layer in build_generator(*_sections(params)).layers if isinstance(layer, SelfAttention)]
    assert block.spectral_norm and not g_block.spectral_norm and len(block.non_trainable_weights) == 4
    block.gamma.assign(1.0)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, int(block.query.shape[0]))).astype(np.float32)
    for _ in range(60):
        block(x, training=True)
    normalized = [np.asarray(w) for w in block.matrices(training=False)]
    for w in normalized:
        assert np.linalg.svd(w, compute_uv=False)[0] == pytest.approx(1.0, abs=1e-3)
    plain = SelfAttention()
    plain(x)
    for name, w in zip(SelfAttention.MATRICES, normalized):
        getattr(plain, name).assign(w)
    plain.gamma.assign(1.0)
    np.testing.assert_allclose(np.asarray(block(x, training=False)), np.asarray(plain(x)), rtol=1e-5, atol=1e-5)


def test_a_generator_with_attention_saves_and_loads_as_keras_file(tmp_path):
    """The exported ``.keras`` generator with a SelfAttention block (gamma moved off 0, so the
    block matters) loads back through ``load_generator`` and draws the same images."""
    params = tiny_params(model={"dcgan": {"attention": 4}})
    generator = build_generator(*_sections(params))
    (block,) = [layer for layer in generator.layers if isinstance(layer, SelfAttention)]
    block.gamma.assign(0.7)
    save_model(generator, tmp_path / "generator.keras")
    loaded = load_generator(params, tmp_path / "generator.keras")
    z = np.random.default_rng(1).standard_normal((3, params.model.latent_dim)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(z, training=False)), np.asarray(generator(z, training=False)))


def test_self_attention_under_mixed_bfloat16_computes_in_bfloat16_close_to_float32():
    """Under mixed_bfloat16 the block's output is bfloat16, within bfloat16's rounding of the
    float32 block with the same weights, and its gradients are finite."""
    x = np.random.default_rng(2).normal(size=(2, 4, 4, 16)).astype(np.float32)
    full = SelfAttention()
    full(x)
    full.gamma.assign(1.0)
    expected = np.asarray(full(x))
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        half = SelfAttention()
        half(x)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    half.set_weights(full.get_weights())
    with tf.GradientTape() as tape:
        y = half(x)
        loss = tf.reduce_sum(tf.cast(y, "float32") ** 2)
    assert y.dtype == tf.bfloat16
    grads = tape.gradient(loss, half.trainable_weights)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    np.testing.assert_allclose(np.asarray(tf.cast(y, "float32")), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("inner, image", [("transpose", "bilinear"), ("nearest", "transpose")])
def test_the_last_upsampling_can_differ_from_the_others(inner, image):
    """``upsample_image`` sets only the upsampling into the image (the layer with the image's
    channels); the blocks before keep ``upsample``."""
    params = tiny_params(model={"dcgan": {"upsample": inner, "upsample_image": image}})
    generator = build_generator(*_sections(params))
    convs = [layer for layer in generator.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    transposed = [isinstance(layer, keras.layers.Conv2DTranspose) for layer in convs]
    assert transposed == [inner == "transpose"] * (len(convs) - 1) + [image == "transpose"]
    assert convs[-1].filters == params.data.channels
    resized = [layer.interpolation for layer in generator.layers if isinstance(layer, keras.layers.UpSampling2D)]
    assert resized == [inner] * (len(convs) - 1) * (inner != "transpose") + [image] * (image != "transpose")
    z = np.random.default_rng(0).standard_normal((2, params.model.latent_dim)).astype(np.float32)
    assert np.asarray(generator(z, training=False)).shape == (2, params.data.image_size, params.data.image_size,
                                                              params.data.channels)


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_spectral_norm_bounds_the_largest_singular_value(layer):
    """After a few power iterations the kernel actually used has spectral norm 1, whatever
    the scale of the stored weights; the stored weights are left as they are."""
    keras.utils.set_random_seed(0)  # the initial weights and u: not whatever the worker ran before
    rng = np.random.default_rng(0)
    if layer == "dense":
        sn, x = SNDense(7), rng.normal(size=(4, 5)).astype(np.float32)
    else:
        sn, x = SNConv2D(6, 3, padding="same"), rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    sn.build(x.shape)
    sn.kernel.assign(sn.kernel * 25.0)
    stored = np.array(sn.kernel.numpy())
    for _ in range(100):  # power iteration: converges as fast as the top two singular values are apart
        sn(x, training=True)
    w = stored.reshape(-1, stored.shape[-1])
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    used = np.asarray(_spectral_normalized(sn.kernel, sn.sn_u, False)).reshape(w.shape)
    assert sigma > 2
    # power iteration estimates sigma: within 0.3% after 100 steps for every init tried (30 seeds)
    assert np.linalg.svd(used, compute_uv=False)[0] == pytest.approx(1.0, rel=5e-3)
    np.testing.assert_array_equal(sn.kernel.numpy(), stored)


@pytest.mark.parametrize("minibatch_std", [False, True])
def test_minibatch_std_makes_d_see_the_batch(minibatch_std):
    params = tiny_params(model={"dcgan": {"minibatch_std": minibatch_std, "dropout": 0.0}})
    discriminator = build_discriminator(params.model, params.data)
    images = np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    alone = np.asarray(discriminator(images[:1], training=False))[0]
    in_batch = np.asarray(discriminator(images, training=False))[0]
    assert np.allclose(alone, in_batch, atol=1e-6) is (not minibatch_std)


@pytest.mark.parametrize("residual", [False, True])
def test_residual_discriminator_has_a_shortcut_around_each_block(residual):
    """With every 4x4 block convolution zeroed, only the shortcuts can carry the image to the
    logit: a residual D still tells two images apart, a plain one cannot."""
    params = tiny_params(model={"dcgan": {"d_residual": residual, "dropout": 0.0}})
    discriminator = build_discriminator(params.model, params.data)
    blocks = [layer for layer in discriminator.layers
              if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (params.model.dcgan.kernel_size,) * 2]
    shortcuts = [layer for layer in discriminator.layers
                 if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1)]
    assert len(blocks) == len(params.model.dcgan.d_filters)
    assert len(shortcuts) == (len(blocks) if residual else 0)
    for layer in blocks:
        layer.kernel.assign(np.zeros(layer.kernel.shape, np.float32))
        layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    images = np.random.default_rng(2).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    logits = np.asarray(discriminator(images, training=False))
    assert np.isfinite(logits).all()
    assert bool(abs(logits[0, 0] - logits[1, 0]) > 1e-4) is residual
