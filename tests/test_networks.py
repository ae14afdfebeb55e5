"""Generator and discriminator shapes and output ranges for both families at several sizes."""
import numpy as np
import pytest

from conftest import tiny_params
from src.networks import build_discriminator, build_generator

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
