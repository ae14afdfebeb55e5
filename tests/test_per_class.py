"""Per-class quality of a conditional generator in metrics.json (cond_accuracy, intra_*, per_class).

Tiny data, no MNIST and no downloads: MNIST is a stand-in of "bar digits" (digit d is a bright
bar at rows 3 + 2d and 4 + 2d) read by a stub digit ruler that knows that code, so the
answers are known; folder data are class_blobs with a real conditional generator written
by the training's own writers.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import REPO, class_blobs, tiny_raw, write_processed
from src import best_snapshot, snapshots
from src import evaluate as ev
from src.config import parse_params
from src.errors import UserError
from src.keras_file import save_model
from src.metrics import ruler
from src.metrics.frechet import frechet_from_features
from src.metrics.registry import SPLIT, stream_seed
from src.networks import ClassEmbedding, build_generator

RULERS = REPO / "data" / "rulers"
PER_CLASS_KEYS = ("per_class", "intra_", "cond_accuracy")
FEW = {"num_samples": 100, "batch_size": 50, "kid_subsets": 4, "kid_subset_size": 40, "bootstrap": 30,
       "swd_patches_per_image": 8, "swd_projections": 32, "curve_samples": 60, "inception_weights": "off"}


def _per_class_keys(metrics: dict) -> list[str]:
    return [key for key in metrics if key.startswith(PER_CLASS_KEYS)]


def _assert_interval(value, ci, spread=True):
    assert set(ci) == {"lo", "hi"} and ci["lo"] <= value <= ci["hi"], (value, ci)
    if spread:
        assert ci["hi"] > ci["lo"], ci


# ---------------------------------------------------------------- MNIST: bar digits and a ruler that reads them
def bar(digit: int) -> np.ndarray:
    """Digit ``digit`` in the stand-in code, unit range (28, 28)."""
    img = np.zeros((28, 28), np.float32)
    img[3 + 2 * digit:5 + 2 * digit] = 1.0
    return img


def bar_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.stack([bar(d) for d in labels]) + rng.normal(0, 0.15, (n, 28, 28))
    return np.clip(images * 255, 0, 255).astype(np.uint8), labels


class BarRuler:
    """The digit ruler's interface: features are the 28 row means, the class is the bar's row."""

    def features_and_probs(self, images, batch_size=500):
        profile = np.asarray(images, np.float64)[..., 0].mean(axis=2)
        digit = np.clip((np.argmax(profile, axis=1) - 3) // 2, 0, 9)
        probs = np.full((len(images), 10), 0.01)
        probs[np.arange(len(images)), digit] = 0.91
        return profile.astype(np.float32), probs.astype(np.float32)


def bar_generator(latent_dim: int, names: list[str] | None, draws=lambda name: int(name)) -> keras.Model:
    """A conditional Keras generator whose class k draws bar digit ``draws(names[k])`` (plus a
    little of the latent); ``names`` None: an unconditional one drawing bar digits by z."""
    z = keras.Input((latent_dim,), name="latent")
    jitter = keras.layers.Dense(784, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(0, 0.1, 1))
    if names is None:
        digit = keras.layers.Dense(784, kernel_initializer=keras.initializers.RandomNormal(0, 0.3, 2))(z)
        return keras.Model(z, keras.layers.Reshape((28, 28, 1))(keras.layers.Add()([digit, jitter(z)])))
    label = keras.Input((), dtype="int32", name="label")
    table = ClassEmbedding(names, 784, name="class_embedding")
    image = keras.layers.Reshape((28, 28, 1))(keras.layers.Add()([table(label), jitter(z)]))
    model = keras.Model([z, label], image, name="generator")
    table.set_weights([np.stack([bar(draws(name)).ravel() * 2 - 1 for name in names])])
    return model


@pytest.fixture
def mnist_run(tmp_path, monkeypatch):
    """A function: evaluate (MNIST, bar digits) a given generator; returns the metrics."""
    out = tmp_path / "outputs"
    (out / "snapshots").mkdir(parents=True)
    (out / "generator.keras").write_bytes(b"stub")
    for epoch in (1, 2):
        (out / "snapshots" / f"generator_epoch_{epoch:04d}.npz").write_bytes(b"stub")
    data = {"train": bar_digits(300, 1), "test": bar_digits(200, 2)}
    monkeypatch.setattr(ev, "_load_mnist", lambda d, split: data[split])
    monkeypatch.setattr(ruler, "digit_ruler", lambda folder: BarRuler())
    monkeypatch.setattr(best_snapshot, "export_generator", lambda params, snapshot, path: path.write_bytes(b"x"))
    params = parse_params({"model": {"latent_dim": 8}, "evaluate": FEW})

    def run(generator):
        monkeypatch.setattr(ev, "_load_generator", lambda params, path: generator)
        return ev.evaluate(params, outputs_dir=out, log=lambda m: None), out
    return run


def test_cond_accuracy_is_one_for_the_asked_digit_and_zero_for_a_wrong_one(mnist_run):
    # class index k is digit names[k]: read by name, not by index (reversed, no index is its digit)
    names = [str(d) for d in reversed(range(10))]
    right, out = mnist_run(bar_generator(8, names))
    assert right["cond_accuracy"] == 1.0 and right["cond_accuracy_real"] == 1.0
    _assert_interval(right["cond_accuracy"], right["cond_accuracy_ci95"], spread=False)
    assert sorted(right["per_class"]) == [str(d) for d in range(10)]
    for digit, entry in right["per_class"].items():
        assert entry["count"] == 10 and entry["count_ref"] > 2 and entry["count_real"] > 2  # a balanced mix
        assert entry["cond_accuracy"] == 1.0
        for key in ("fid", "fid_real"):
            _assert_interval(entry[key], entry[key + "_ci95"])
    for key in ("intra_fid", "intra_fid_real"):
        _assert_interval(right[key], right[key + "_ci95"])
        per_class = [entry[key.replace("intra_", "")] for entry in right["per_class"].values()]
        assert right[key] == pytest.approx(np.mean(per_class), rel=1e-5)
    assert "per_class_note" not in right
    rows = (out / "eval_curve.tsv").read_text().splitlines()
    assert rows[0] == "epoch\tfid" and len(rows) == 3  # the conditional snapshots draw too

    wrong, _ = mnist_run(bar_generator(8, names, draws=lambda name: (int(name) + 1) % 10))
    assert wrong["cond_accuracy"] == 0.0 and wrong["cond_accuracy_real"] == 1.0
    assert all(entry["cond_accuracy"] == 0.0 for entry in wrong["per_class"].values())
    # every digit is there in both mixes, so the overall FID barely moves; per class it shows
    assert wrong["intra_fid"] > 10 * right["intra_fid"]
    assert wrong["intra_fid_ci95"]["lo"] > right["intra_fid_ci95"]["hi"]
    assert wrong["fid"] < 2 * right["fid"] + 0.05
    assert wrong["intra_fid_real"] == right["intra_fid_real"]


def test_a_conditional_mnist_generator_needs_the_ten_digits(mnist_run):
    with pytest.raises(UserError) as err:
        mnist_run(bar_generator(8, list("abcdefghij"), draws=lambda name: 0))
    assert "\n" not in str(err.value) and "ten digit classes" in str(err.value)


def test_unconditional_runs_get_no_per_class_keys(mnist_run):
    metrics, out = mnist_run(bar_generator(8, None))
    assert "fid" in metrics and "classifier_score" in metrics
    assert _per_class_keys(metrics) == [] and "per_class_note" not in metrics
    assert _per_class_keys(json.loads((out / "metrics.json").read_text())) == []


# ---------------------------------------------------------------- folders: class_blobs and a real generator
CLASSES = ["top", "bottom", "left", "small", "tiny"]
FOLDER = {**FEW, "bootstrap": 10}  # 256-d features: each bootstrap replicate costs two 256x256 eigh per class


def _folder_run(tmp_path, monkeypatch):
    """Labelled class_blobs (40 images, 16 per half) where class 'small' has 2 images in each
    half and 'tiny' 1 in each (and 1 unused); a conditional dcgan generator whose classes are
    in another order than the data's, with two snapshots."""
    params = parse_params(tiny_raw(data={"folder": str(tmp_path), "labels": "subfolders"},
                                   evaluate={**FOLDER, "num_samples": 16, "kid_subset_size": 8}))
    images, labels, _ = class_blobs(40, 8, 1, params.data.value_range)
    order = np.random.default_rng(stream_seed(params.evaluate, SPLIT)).permutation(40)
    half = min(params.evaluate.num_samples, 20)
    for index in order[[0, 1, half, half + 1]]:
        labels[index], images[index] = 3, -1.0
        images[index][:, -3:] = 1.0
    for index in order[[2, half + 2, 2 * half]]:
        labels[index], images[index] = 4, -1.0
    processed = write_processed(tmp_path / "processed", images, params.data.value_range, labels=labels,
                                classes=CLASSES)
    out = tmp_path / "outputs"
    generator_classes = list(reversed(CLASSES))
    keras.utils.set_random_seed(0)
    for epoch in (1, 2):
        snapshots.save(out / "snapshots", epoch, build_generator(params.model, params.data, generator_classes))
    save_model(build_generator(params.model, params.data, generator_classes), out / "generator.keras")
    asked = []
    real_generate = ev._generate
    monkeypatch.setattr(ev, "_generate", lambda g, n, latent_dim, seed, batch_size, labels=None: (
        asked.append(labels), real_generate(g, n, latent_dim, seed, batch_size, labels))[1])
    metrics = ev.evaluate(params, outputs_dir=out, processed_dir=processed, log=lambda m: None, rulers=RULERS)
    half_a = labels[order[:half]]
    return metrics, out, asked, half_a, generator_classes


def test_folder_per_class_metrics_of_a_conditional_generator(tmp_path, monkeypatch):
    metrics, out, asked, half_a, generator_classes = _folder_run(tmp_path, monkeypatch)
    # the generator is asked for half A's classes in order, by name in its own class order
    to_generator = np.array([generator_classes.index(name) for name in CLASSES])
    np.testing.assert_array_equal(asked[0], to_generator[half_a])
    assert [len(a) for a in asked[1:3]] == [16, 16]  # the curve: both snapshots, conditional too
    np.testing.assert_array_equal(asked[1], to_generator[half_a])
    assert len((out / "eval_curve.tsv").read_text().splitlines()) == 3 and metrics["best_epoch"] in (1, 2)
    # the best snapshot on the full ruler: asked for the same classes (again only if it is not the final one)
    assert len(asked) == (3 if metrics["best_epoch"] == 2 else 4), metrics["best_epoch"]
    for request in asked[3:]:
        np.testing.assert_array_equal(request, to_generator[half_a])
    assert {"best_swd", "best_fd_random", "best_intra_swd", "best_intra_fd_random"} <= set(metrics)

    per_class = metrics["per_class"]
    assert sorted(per_class) == sorted(CLASSES)
    assert per_class["small"] == {**per_class["small"], "count": 2, "count_ref": 2, "count_real": 2}
    assert per_class["tiny"] == {"count": 1, "count_ref": 1, "count_real": 1}  # counts only
    assert "'tiny'" in metrics["per_class_note"] and "small" not in metrics["per_class_note"]
    measured = [name for name, entry in per_class.items() if "swd" in entry]
    assert "small" in measured and "tiny" not in measured and len(measured) >= 3
    for name in measured:
        entry = per_class[name]
        assert entry["count"] == entry["count_ref"]  # as many generated images of a class as half A has
        for key in ("swd", "swd_real", "fd_random", "fd_random_real"):
            _assert_interval(entry[key], entry[key + "_ci95"], spread=False)
    for key in ("swd", "swd_real", "fd_random", "fd_random_real"):
        values = [per_class[name][key] for name in measured]
        assert metrics["intra_" + key] == pytest.approx(np.mean(values), rel=1e-5)
        _assert_interval(metrics["intra_" + key], metrics[f"intra_{key}_ci95"])
    for key in ("swd", "fd_random", "kd_random"):  # the usual metrics, on the matched mix
        _assert_interval(metrics[key], metrics[key + "_ci95"])


def test_folder_metrics_per_class_values_and_a_wrong_class_mix():
    """Per class, the Frechet distance is that of the class's rows; images drawn as the wrong
    class leave the overall numbers unchanged and raise the per-class ones."""
    params = parse_params(tiny_raw(evaluate={**FOLDER, "kid_subset_size": 8}))
    images, labels, names = class_blobs(72, 8, 1, (0, 1), seed=4)
    ref, real, fake = images[:24], images[24:48], images[48:72]
    lab = {"ref": labels[:24], "_real": labels[24:48], "": labels[48:72]}
    net = ruler.random_ruler(RULERS)
    right = ev.folder_metrics(params.evaluate, ref, fake, real, net=net, log=lambda m: None, labels=lab, classes=names)
    for c, name in enumerate(names):
        want = frechet_from_features(net.features(fake[lab[""] == c]), net.features(ref[lab["ref"] == c]))
        assert right["per_class"][name]["fd_random"] == pytest.approx(want, rel=1e-9)
    assert right["intra_fd_random"] == pytest.approx(np.mean([e["fd_random"] for e in right["per_class"].values()]))
    shifted = {**lab, "": (lab[""] + 1) % 3}
    wrong = ev.folder_metrics(params.evaluate, ref, fake, real, net=net, log=lambda m: None, labels=shifted,
                              classes=names)
    assert wrong["fd_random"] == right["fd_random"] and wrong["swd"] == right["swd"]
    assert wrong["intra_fd_random"] > 5 * right["intra_fd_random"] and wrong["intra_swd"] > 2 * right["intra_swd"]
    assert wrong["intra_fd_random_real"] == right["intra_fd_random_real"]
    plain = ev.folder_metrics(params.evaluate, ref, fake, real, net=net, log=lambda m: None)
    assert _per_class_keys(plain) == [] and {k: v for k, v in right.items() if k in plain} == plain


def test_a_conditional_best_snapshot_is_scored_on_the_same_classes(tmp_path, monkeypatch):
    """When the best snapshot is not the final one, evaluate draws it for half A's classes
    again (by name, in its own class order) and measures it per class as well."""
    monkeypatch.setattr(best_snapshot, "choose", lambda rows: min(rows))  # the earliest epoch: 1, not the final 2
    metrics, out, asked, half_a, generator_classes = _folder_run(tmp_path, monkeypatch)
    assert metrics["best_epoch"] == 1 and len(asked) == 4
    to_generator = np.array([generator_classes.index(name) for name in CLASSES])
    np.testing.assert_array_equal(asked[3], to_generator[half_a])
    assert metrics["best_intra_swd"] != metrics["intra_swd"]  # another generator's images
    assert not [key for key in metrics if key.startswith("best_") and "_real" in key]
