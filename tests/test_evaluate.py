"""End-to-end tests of src/evaluate.py with stand-ins for MNIST, the generator and the shards.

No MNIST, no /work/shared, no downloads: the collaborators evaluate() calls (_load_mnist,
_load_generator, _generate, _open_shards, load_inception) are monkeypatched.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import draw_digits  # noqa: E402

from src import evaluate as ev
from src.config import parse_params
from src.errors import UserError
from src.metrics import classifier as cls
from src.metrics import inception

FEW = {"num_samples": 200, "batch_size": 100, "kid_subsets": 10, "kid_subset_size": 50,
       "swd_patches_per_image": 8, "swd_projections": 32, "curve_samples": 100}


class StubGenerator:
    """Draws digits; a snapshot 'epoch' controls how noisy they are (later = cleaner)."""

    def __init__(self, noise: float, size: int = 28, channels: int = 1):
        self.noise, self.size, self.channels = noise, size, channels

    def generate(self, n, seed):
        images, _ = draw_digits(n, seed=seed + 99, size=self.size)
        x = images.astype(np.float32) / 127.5 - 1.0
        x = x + np.random.default_rng(seed).normal(0, self.noise, x.shape).astype(np.float32)
        return np.repeat(np.clip(x, -1, 1)[..., None], self.channels, axis=-1)


def _patch_generator(monkeypatch, size=28, channels=1):
    def load(params, path):
        name = str(path)
        if "epoch" in name:
            epoch = int(name.rsplit("_", 1)[1].split(".")[0])
            return StubGenerator(1.0 / epoch, size, channels)
        return StubGenerator(0.05, size, channels)

    monkeypatch.setattr(ev, "_load_generator", load)
    monkeypatch.setattr(ev, "_generate", lambda g, n, latent_dim, seed, batch_size: g.generate(n, seed))


def _fake_outputs(out, train_log=True):
    (out / "snapshots").mkdir(parents=True)
    (out / "generator.keras").write_bytes(b"stub")
    for epoch in (1, 2, 4):
        (out / "snapshots" / f"generator_epoch_{epoch:04d}.npz").write_bytes(b"stub")
    if train_log:
        (out / "train_log").mkdir()
        (out / "train_log" / "metrics.tsv").write_text(
            "epoch\tstep\td_loss\tg_loss\td_acc_real\td_acc_fake\timages_per_sec\n"
            "1\t10\t1.2\t0.8\t0.61\t0.55\t100\n2\t20\t1.1\t0.9\t0.72\t0.66\t110\n")


@pytest.fixture(scope="module")
def mnist_stub():
    train = draw_digits(400, seed=1)
    test = draw_digits(300, seed=2)
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory, mnist_stub):
    from src.config import ClassifierParams

    (x, y), (xt, yt) = mnist_stub["train"], mnist_stub["test"]
    model, _ = cls.train_classifier(x, y, xt, yt, ClassifierParams(epochs=1, batch_size=32, learning_rate=3e-3), 0)
    path = tmp_path_factory.mktemp("cls") / "classifier.keras"
    model.save(path)
    return path


def test_mnist_metrics_curve_and_determinism(tmp_path, monkeypatch, mnist_stub, classifier_file):
    out = tmp_path / "outputs"
    _fake_outputs(out)
    (out / "classifier").mkdir()
    (out / "classifier" / "classifier.keras").write_bytes(classifier_file.read_bytes())
    monkeypatch.setattr(ev, "_load_mnist", lambda d, split: mnist_stub[split])
    _patch_generator(monkeypatch)
    params = parse_params({"evaluate": FEW})

    metrics = ev.evaluate(params, outputs_dir=out, log=lambda m: None)
    first = (out / "metrics.json").read_bytes()
    assert json.loads(first) == metrics
    for key in ("fid", "kid", "kid_std", "classifier_score", "coverage", "class_kl", "fid_real", "kid_real",
                "kid_real_std", "classifier_score_real", "coverage_real", "class_kl_real", "fid_noise",
                "swd", "swd_real", "swd_level_28", "swd_real_level_28"):
        assert isinstance(metrics[key], (int, float)), key
    assert all(not isinstance(v, (dict, list)) for v in metrics.values())  # flat
    assert metrics["num_samples"] == 200 and metrics["reference"] == "mnist-test"
    assert metrics["feature_net"] == "mnist-cnn"
    assert metrics["d_acc_real"] == 0.72 and metrics["d_acc_fake"] == 0.66
    assert metrics["fid_noise"] > metrics["fid_real"]
    assert metrics["swd"] > 0 and metrics["swd_real"] > 0
    assert 1 <= metrics["coverage"] <= 10

    rows = (out / "eval_curve.tsv").read_text().splitlines()
    assert rows[0] == "epoch\tfid" and [r.split("\t")[0] for r in rows[1:]] == ["1", "2", "4"]
    fids = [float(r.split("\t")[1]) for r in rows[1:]]
    assert fids[0] > fids[2]  # the stub's later snapshots are less noisy

    ev.evaluate(params, outputs_dir=out, log=lambda m: None)
    assert (out / "metrics.json").read_bytes() == first  # same inputs, same bytes


def test_missing_classifier_is_a_user_error(tmp_path, monkeypatch, mnist_stub):
    out = tmp_path / "outputs"
    _fake_outputs(out, train_log=False)
    monkeypatch.setattr(ev, "_load_mnist", lambda d, split: mnist_stub[split])
    with pytest.raises(UserError, match="stages/classifier.py"):
        ev.evaluate(parse_params({"evaluate": FEW}), outputs_dir=out, log=lambda m: None)


def test_folder_data_swd_and_note_without_inception(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    _fake_outputs(out, train_log=False)
    images, _ = draw_digits(500, seed=3, size=32)
    data = np.repeat(images[..., None].astype(np.float32) / 127.5 - 1.0, 3, axis=-1)
    shards = [data[:300], data[300:]]
    monkeypatch.setattr(ev, "_open_shards", lambda d: ({"range": [-1, 1]}, shards))
    monkeypatch.setattr(inception, "load_inception", lambda weights: None)
    _patch_generator(monkeypatch, size=32, channels=3)
    folder = tmp_path / "images"
    folder.mkdir()
    params = parse_params({"data": {"source": "folder", "folder": str(folder), "image_size": 32, "channels": 3},
                           "evaluate": FEW})

    metrics = ev.evaluate(params, outputs_dir=out, log=lambda m: None)
    assert "fid" not in metrics and "kid" not in metrics and "inception" in metrics["note"].lower()
    assert metrics["num_samples"] == 200
    assert set(k for k in metrics if k.startswith("swd")) == {"swd", "swd_level_32", "swd_level_16", "swd_real",
                                                              "swd_real_level_32", "swd_real_level_16"}
    assert metrics["swd_real"] > 0
    rows = (out / "eval_curve.tsv").read_text().splitlines()
    assert rows[0] == "epoch\tswd" and len(rows) == 4


def test_gather_across_shards():
    shards = [np.arange(5, dtype=np.float32)[:, None], np.arange(5, 12, dtype=np.float32)[:, None]]
    idx = np.array([11, 0, 6, 4, 5])
    assert ev._gather(shards, idx).ravel().tolist() == [11, 0, 6, 4, 5]
