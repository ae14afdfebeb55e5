"""Tests of the sample-quality metrics on synthetic data (no MNIST, no downloads)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import draw_digits
from src.errors import UserError
from src.metrics import inception
from src.metrics.classifier import class_coverage, classifier_score
from src.metrics.frechet import feature_stats, frechet_distance, frechet_from_features
from src.metrics.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from src.metrics.swd import laplacian_pyramid, level_sizes, swd


# ---------------------------------------------------------------- synthetic data and features
def mmd2_biased(x: np.ndarray, y: np.ndarray) -> float:
    """The biased V-statistic (diagonal included), to compare the unbiased estimate with."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean() - 2.0 * polynomial_kernel(x, y).mean())


def blur(images: np.ndarray, radius: float) -> np.ndarray:
    if radius == 0:
        return images
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius)))
                     for im in images])


_RNG = np.random.default_rng(1234)
_FILTERS = _RNG.standard_normal((5, 5, 12)).astype(np.float32) / 5.0
_BIAS = _RNG.standard_normal(12).astype(np.float32) * 0.1


def random_conv_features(images_u8: np.ndarray) -> np.ndarray:
    """A fixed random conv net: 12 5x5 filters, ReLU, 4x4 average pooling grid -> 192 features."""
    x = images_u8.astype(np.float32) / 255.0
    n = x.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(1, 2)).reshape(n * 576, 25)
    fmap = np.maximum(windows @ _FILTERS.reshape(25, 12) + _BIAS, 0.0)
    return fmap.reshape(n, 4, 6, 4, 6, 12).mean(axis=(2, 4)).reshape(n, -1).astype(np.float64)


@pytest.fixture(scope="module")
def digits():
    images, labels = draw_digits(1200, seed=0, varied=True)
    return images, labels


@pytest.fixture(scope="module")
def digit_features(digits):
    return random_conv_features(digits[0])


# ---------------------------------------------------------------- Frechet distance
def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_full_covariance_matches_eigenvalues_of_product():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu = rng.normal(size=6)
    # Tr sqrt(S1 S2) = sum of sqrt of the (real, positive) eigenvalues of S1 S2
    tr = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    expected = np.trace(s1) + np.trace(s2) - 2 * tr + mu @ mu
    assert frechet_distance(mu, s1, np.zeros(6), s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_identical_sets_is_zero_and_rank_deficient_is_fine(digits):
    f = random_conv_features(digits[0][:100])  # 100 samples, 192 dims: singular covariance
    assert frechet_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    mu, s = feature_stats(f)
    assert mu.dtype == np.float64 and s.shape == (192, 192)


def test_frechet_increases_with_noise_and_blur_and_is_large_for_noise(digits, digit_features):
    images = digits[0]
    ref = digit_features[:600]
    other = images[600:]
    clean = frechet_from_features(random_conv_features(other), ref)
    rng = np.random.default_rng(5)
    by_noise = []
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.4):
        noisy = np.clip(other / 255.0 + rng.normal(0, sigma, other.shape), 0, 1)
        by_noise.append(frechet_from_features(random_conv_features((noisy * 255).astype(np.uint8)), ref))
    by_blur = [frechet_from_features(random_conv_features(blur(other, r)), ref) for r in (0, 0.5, 1, 2, 3)]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    assert all(a < b for a, b in zip(by_blur, by_blur[1:])), by_blur
    uniform = (rng.random(other.shape) * 255).astype(np.uint8)
    noise_fid = frechet_from_features(random_conv_features(uniform), ref)
    assert noise_fid > 20 * clean and noise_fid > by_blur[-1]


# ---------------------------------------------------------------- KID
def test_kid_near_zero_for_two_halves_and_positive_for_noise(digit_features):
    f = digit_features
    kid, std = kernel_inception_distance(f[:600], f[600:], subsets=20, subset_size=200, seed=0)
    noise = random_conv_features((np.random.default_rng(0).random((600, 28, 28)) * 255).astype(np.uint8))
    kid_noise, _ = kernel_inception_distance(noise, f[600:], subsets=20, subset_size=200, seed=0)
    assert abs(kid) < max(4 * std, 1e-3 * kid_noise)
    assert kid_noise > 100 * max(abs(kid), std)


def test_kid_is_unbiased_at_small_subset_sizes():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4000, 16)), rng.normal(size=(4000, 16))
    kid, spread = kernel_inception_distance(x, y, subsets=400, subset_size=8, seed=1)
    assert abs(kid) < 4 * spread / np.sqrt(400)  # subsets of 8 from 4,000 barely overlap: the mean's error
    sub = np.random.default_rng(2)
    biased = np.array([mmd2_biased(x[sub.choice(4000, 8, replace=False)], y[sub.choice(4000, 8, replace=False)])
                       for _ in range(400)])
    assert biased.mean() > 10 * biased.std(ddof=1) / np.sqrt(400)  # the V-statistic is clearly positive


def test_kid_is_seeded_and_mmd_symmetric():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(300, 5)), rng.normal(0.5, 1, size=(300, 5))
    assert kernel_inception_distance(x, y, 10, 50, seed=7) == kernel_inception_distance(x, y, 10, 50, seed=7)
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_unbiased(y, x))
    assert mmd2_unbiased(x, y) > 0.1


# ---------------------------------------------------------------- classifier score and coverage
def test_classifier_score_and_coverage_extremes():
    eye = np.eye(10)
    balanced = np.repeat(eye, 50, axis=0) * 0.999 + 0.0001
    single = np.tile(eye[3] * 0.999 + 0.0001, (500, 1))
    assert classifier_score(balanced) == pytest.approx(10.0, rel=0.02)
    assert classifier_score(single) == pytest.approx(1.0, abs=1e-6)
    assert class_coverage(balanced, 0.02) == (10, pytest.approx(0.0, abs=1e-12))
    covered, kl = class_coverage(single, 0.02)
    assert covered == 1 and kl == pytest.approx(np.log(10))
    assert classifier_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)  # unconfident = no score


def _template_probs(images: np.ndarray, templates: np.ndarray) -> np.ndarray:
    d = ((images[:, None].astype(np.float32) / 255 - templates[None]) ** 2).sum(axis=(2, 3))
    logits = -(d - d.min(axis=1, keepdims=True)) * 2.0
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_collapsed_set_scores_worse_than_diverse(digits, digit_features):
    images, labels = digits
    templates = np.stack([images[:600][labels[:600] == k].mean(axis=0) / 255 for k in range(10)])
    ref = digit_features[:600]
    diverse = images[600:]
    collapsed = np.repeat(images[600:601], 600, axis=0)
    fid_div = frechet_from_features(digit_features[600:], ref)
    fid_col = frechet_from_features(random_conv_features(collapsed), ref)
    p_div, p_col = _template_probs(diverse, templates), _template_probs(collapsed, templates)
    assert fid_col > 5 * fid_div
    assert classifier_score(p_col) < 1.01 < 3 < classifier_score(p_div)
    assert class_coverage(p_col)[0] == 1 and class_coverage(p_div)[0] == 10


# ---------------------------------------------------------------- SWD
def test_swd_pyramid_levels():
    assert level_sizes(28) == [28] and level_sizes(64) == [64, 32, 16] and level_sizes(33) == [33, 17]
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    levels = laplacian_pyramid(x)
    assert [lv.shape[1] for lv in levels] == [32, 16]
    for size in (32, 33):
        flat = np.full((2, size, size, 1), 0.7, np.float32)  # no detail: residuals are zero
        levels = laplacian_pyramid(flat)
        assert np.abs(levels[0]).max() < 1e-5 and np.allclose(levels[-1], 0.7, atol=1e-5)


@pytest.mark.parametrize("shape", [(120, 28, 28, 1), (40, 32, 32, 3), (30, 20, 20, 1)])
def test_swd_zero_for_identical_and_larger_for_noise(shape):
    rng = np.random.default_rng(0)
    images, _ = draw_digits(2 * shape[0], seed=1, size=shape[1], varied=True)
    images = np.repeat(images[..., None].astype(np.float32) / 255, shape[3], axis=-1)
    a, b = images[:shape[0]], images[shape[0]:]
    noise = rng.random(a.shape, dtype=np.float32)
    same, halves, vs_noise = swd(a, [a, b, noise], patches_per_image=16, projections=64, seed=0)
    assert same["mean"] == pytest.approx(0.0, abs=1e-9)
    assert len(vs_noise["levels"]) == len(level_sizes(shape[1]))
    assert vs_noise["mean"] > 2 * halves["mean"] > 0
    again = swd(a, [b], patches_per_image=16, projections=64, seed=0)[0]
    assert again == halves


# ---------------------------------------------------------------- Inception (no network)
def test_inception_missing_local_file_names_the_key(tmp_path):
    with pytest.raises(UserError, match="evaluate.inception_weights"):
        inception.load_inception(str(tmp_path / "nope.h5"))


def test_inception_download_failure_returns_none(monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: no network (mocked)")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    assert inception.load_inception("") is None


def test_inception_preprocess_gray_to_rgb_in_minus_one_one():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
    out = np.asarray(inception.preprocess(x, (-1.0, 1.0)))
    assert out.shape == (2, 299, 299, 3) and out.dtype == np.float32
    assert out.min() >= -1.0001 and out.max() <= 1.0001
    assert np.allclose(out[..., 0], out[..., 2])


def test_over_draws_means_each_number_and_takes_its_interval_from_the_draws():
    """evaluate.draws: each number is the mean of the draws, its _ci95 mean +- t x sd / sqrt(K),
    never narrower than the draws' own half-widths / sqrt(K), inside the hull of their
    intervals; a figure no draw moves keeps its own interval; counts equal in every draw stay;
    per_class is averaged key by key over the draws that have the key."""
    from src.metrics.intervals import over_draws, t975

    def draw(fd, fd_ci, kid, kid_ci, swd, score, score_ci, classes, note):
        return {"fd": fd, "fd_ci95": dict(zip(("lo", "hi"), fd_ci)), "kid": kid,
                "kid_ci95": dict(zip(("lo", "hi"), kid_ci)), "swd": swd, "swd_ci95": {"lo": swd - 2, "hi": swd + 2},
                "fid_real": 1.5, "fid_real_ci95": {"lo": 1.2, "hi": 1.8},
                "score": score, "score_ci95": dict(zip(("lo", "hi"), score_ci)),
                "num_samples": 100, "per_class_note": note, "per_class": classes}
    draws = [draw(1.0, (0.5, 1.5), -0.01, (-0.08, 0.06), 10.0, 9.0, (8.5, 9.5),
                  {"a": {"swd": 10.0, "count": 3}, "b": {"swd": 4.0, "count": 5}}, "class c left out"),
             draw(2.0, (1.2, 2.8), 0.03, (-0.02, 0.08), 10.01, 9.5, (9.0, 10.0),
                  {"a": {"swd": 12.0, "count": 4}}, "class b left out"),
             draw(6.0, (5.0, 7.0), 0.01, (-0.05, 0.07), 10.02, 9.9, (9.4, 10.0),
                  {"a": {"swd": 14.0, "count": 5}, "b": {"swd": 6.0, "count": 5}, "c": {"swd": 1.0, "count": 2}},
                  "class c left out")]
    out = over_draws(draws)
    assert list(out) == list(draws[0])
    assert out["fd"] == pytest.approx(3.0) and out["kid"] == pytest.approx(0.01)
    # fd: the t-interval 3 +- 6.6 is cut to the hull of the draws' intervals, [0.5, 7]
    assert out["fd_ci95"] == pytest.approx({"lo": 0.5, "hi": 7.0})
    kid_half = t975(2) * np.std([-0.01, 0.03, 0.01], ddof=1) / np.sqrt(3)  # inside the hull: KID may be < 0
    assert out["kid_ci95"] == pytest.approx({"lo": 0.01 - kid_half, "hi": 0.01 + kid_half})
    assert out["kid_ci95"]["lo"] < 0
    # swd: three draws that happen to agree: the draws' own half-width 2 / sqrt(3), not ~0
    assert out["swd_ci95"] == pytest.approx({"lo": 10.01 - 2 / np.sqrt(3), "hi": 10.01 + 2 / np.sqrt(3)})
    assert out["fid_real_ci95"] == {"lo": 1.2, "hi": 1.8}  # the same images in every draw: its own interval
    assert out["score_ci95"] == pytest.approx({"lo": 8.5, "hi": 10.0})  # bounded as the draws' are
    assert out["num_samples"] == 100 and isinstance(out["num_samples"], int)
    assert out["per_class_note"] == "class c left out; class b left out"
    assert out["per_class"] == {"a": {"swd": pytest.approx(12.0), "count": pytest.approx(4.0)},
                                "b": {"swd": pytest.approx(5.0), "count": 5},
                                "c": {"swd": 1.0, "count": 2}}
    assert over_draws(draws[:1]) == draws[0]
    # moved by float noise only (a thousandth of its own half-width): its own interval
    still = over_draws([{"x": 5.0, "x_ci95": {"lo": 4.0, "hi": 6.0}}, {"x": 5.0005, "x_ci95": {"lo": 4.1, "hi": 6.1}}])
    assert still["x_ci95"] == {"lo": 4.0, "hi": 6.0}
