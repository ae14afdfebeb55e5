"""End-to-end tests of src/evaluate.py with stand-ins for MNIST, the generator and the shards.

No MNIST, no /work/shared, no downloads: the collaborators evaluate() calls (_load_mnist,
_load_generator, _generate, _open_shards, load_inception) are monkeypatched.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import draw_digits  # noqa: E402

from src import best_snapshot
from src import evaluate as ev
from src.config import parse_params
from src.dataset import ShardReader
from src.errors import UserError
from src.metrics import classifier as cls
from src.metrics import inception
from src.metrics import ruler

FEW = {"num_samples": 200, "batch_size": 100, "kid_subsets": 10, "kid_subset_size": 50, "bootstrap": 10,
       "swd_patches_per_image": 8, "swd_projections": 32, "curve_samples": 100}


class StubGenerator:
    """Draws digits; a snapshot 'epoch' controls how noisy they are (later = cleaner).
    Unconditional: no class embedding among its (no) layers."""

    layers = ()

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
    # the best snapshot's export loads the real network; a stub snapshot is copied as is
    monkeypatch.setattr(best_snapshot, "export_generator", lambda params, snapshot, path: path.write_bytes(
        snapshot.read_bytes()))
    monkeypatch.setattr(ev, "_generate", lambda g, n, latent_dim, seed, batch_size, labels=None: g.generate(n, seed))


def _fake_outputs(out, train_log=True):
    (out / "snapshots").mkdir(parents=True)
    (out / "generator.keras").write_bytes(b"stub")
    for epoch in (1, 2, 4):
        (out / "snapshots" / f"generator_epoch_{epoch:04d}.npz").write_bytes(b"stub")
    if train_log:  # DVCLive's summary: the last epoch's values
        (out / "train_log").mkdir()
        (out / "train_log" / "metrics.json").write_text(json.dumps(
            {"step": 2, "d_loss": 1.1, "g_loss": 0.9, "d_acc_real": 0.72, "d_acc_fake": 0.66}))


def _assert_intervals(metrics, keys):
    for key in keys:
        ci = metrics[key + "_ci95"]
        assert set(ci) == {"lo", "hi"}, key
        assert ci["lo"] <= metrics[key] <= ci["hi"], (key, metrics[key], ci)
        assert ci["hi"] > ci["lo"], (key, ci)  # a real spread, not a point


@pytest.fixture(scope="module")
def mnist_stub():
    train = draw_digits(400, seed=1)
    test = draw_digits(300, seed=2)
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def rulers_dir(tmp_path_factory, mnist_stub):
    """A rulers folder as `make ruler` writes it: a digit CNN trained on the stand-in digits
    (one epoch), the random conv net of seed 0, and their SHA256SUMS."""
    from src.config import ClassifierParams

    (x, y), (xt, yt) = mnist_stub["train"], mnist_stub["test"]
    model, _ = cls.train_classifier(x, y, xt, yt, ClassifierParams(epochs=1, batch_size=32, learning_rate=3e-3), 0)
    folder = tmp_path_factory.mktemp("rulers")
    ruler.write_rulers(folder, {ruler.DIGITS: ruler.digit_arrays(model), ruler.RANDOM: ruler.random_arrays(0)})
    return folder


def _mnist_outputs(tmp_path, monkeypatch, mnist_stub):
    out = tmp_path / "outputs"
    _fake_outputs(out)
    monkeypatch.setattr(ev, "_load_mnist", lambda d, split: mnist_stub[split])
    _patch_generator(monkeypatch)
    return out


def test_mnist_metrics_curve_and_determinism(tmp_path, monkeypatch, mnist_stub, rulers_dir):
    out = _mnist_outputs(tmp_path, monkeypatch, mnist_stub)
    params = parse_params({"evaluate": FEW})

    metrics = ev.evaluate(params, outputs_dir=out, log=lambda m: None, rulers=rulers_dir)
    first = (out / "metrics.json").read_bytes()
    assert json.loads(first) == metrics
    for key in ("fid", "kid", "kid_std", "classifier_score", "coverage", "class_kl", "fid_real", "kid_real",
                "kid_real_std", "classifier_score_real", "coverage_real", "class_kl_real", "fid_noise",
                "swd", "swd_real", "swd_level_28", "swd_real_level_28"):
        assert isinstance(metrics[key], (int, float)), key
    # one level deep at most: numbers, strings and {lo, hi} intervals (DVC shows fid_ci95.lo/.hi)
    assert all(isinstance(v, (int, float, str)) or set(v) == {"lo", "hi"} for v in metrics.values())
    _assert_intervals(metrics, ("fid", "fid_real", "kid", "kid_real", "classifier_score", "classifier_score_real",
                                "class_kl", "swd", "swd_real"))
    assert metrics["num_samples"] == 200 and metrics["reference"] == "mnist-test"
    assert not [k for k in metrics if k.startswith(("per_class", "intra_", "cond_accuracy"))]  # unconditional
    assert metrics["feature_net"] == "mnist-cnn"
    assert metrics["d_acc_real"] == 0.72 and metrics["d_acc_fake"] == 0.66
    assert metrics["fid_noise"] > metrics["fid_real"]
    assert metrics["swd"] > 0 and metrics["swd_real"] > 0
    assert 1 <= metrics["coverage"] <= 10
    # kid_std is the spread of one subset's value (as torch-fidelity), wider than the mean's interval
    assert metrics["kid_std"] > (metrics["kid_ci95"]["hi"] - metrics["kid_ci95"]["lo"]) / 2 / np.sqrt(FEW["kid_subsets"])

    rows = (out / "eval_curve.tsv").read_text().splitlines()
    assert rows[0] == "epoch\tfid" and [r.split("\t")[0] for r in rows[1:]] == ["1", "2", "4"]
    fids = [float(r.split("\t")[1]) for r in rows[1:]]
    assert fids[0] > fids[2]  # the stub's later snapshots are less noisy

    ev.evaluate(params, outputs_dir=out, log=lambda m: None, rulers=rulers_dir)
    assert (out / "metrics.json").read_bytes() == first  # same inputs, same bytes


def test_the_yardstick_ignores_the_training_seed(tmp_path, monkeypatch, mnist_stub, rulers_dir):
    """common.seed seeds training only: with the same generator, the numbers do not move;
    evaluate.seed is the ruler's own seed."""
    out = _mnist_outputs(tmp_path, monkeypatch, mnist_stub)
    results = {}
    for common, own in ((1, 0), (2, 0), (1, 5)):
        params = parse_params({"common": {"seed": common}, "evaluate": {**FEW, "seed": own}})
        ev.evaluate(params, outputs_dir=out, log=lambda m: None, rulers=rulers_dir)
        results[common, own] = (out / "metrics.json").read_bytes()
    assert results[1, 0] == results[2, 0]
    assert results[1, 0] != results[1, 5]


def test_intervals_cover_the_truth_and_shrink_with_samples():
    """The bootstrap FID interval on Gaussians whose distance is known (4 * 0.3^2 = 0.36):
    it covers the truth in about 95% of draws and halves in width with 4x the samples. The
    fold KID interval holds the estimate and, for clearly different sets, excludes 0."""
    from src.metrics import intervals
    from src.metrics.frechet import frechet_from_features
    from src.metrics.kid import kernel_inception_distance, kid_fold_values

    def draws(n, trials):
        covered, widths = 0, []
        for trial in range(trials):
            rng = np.random.default_rng(trial)
            x, y = rng.normal(0, 1, (n, 4)), rng.normal(0.3, 1, (n, 4))
            (ci,) = intervals.frechet_intervals(y, [x], [frechet_from_features(x, y)], 100, seed=trial)
            covered += ci["lo"] <= 0.36 <= ci["hi"]
            widths.append(ci["hi"] - ci["lo"])
        return covered / trials, float(np.mean(widths))

    coverage, width = draws(400, 40)
    assert coverage >= 0.85, coverage
    _, width_4x = draws(1600, 8)
    assert 0.35 * width < width_4x < 0.7 * width

    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (800, 8)), rng.normal(0.3, 1, (800, 8))
    kid, _ = kernel_inception_distance(x, y, 20, 200, seed=2)
    values = kid_fold_values(x, y, intervals.fold_indices(800, 3), intervals.fold_indices(800, 4))
    kci = intervals.fold_interval(kid, values, lower=None)
    assert 0 < kci["lo"] < kid < kci["hi"]


def _folder_setup(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    _fake_outputs(out, train_log=False)
    images, _ = draw_digits(500, seed=3, size=32)
    data = np.repeat(images[..., None].astype(np.float32) / 127.5 - 1.0, 3, axis=-1)
    shards = [data[:300], data[300:]]
    monkeypatch.setattr(ev, "_open_shards", lambda d: ({"range": [-1, 1]}, shards, None))
    monkeypatch.setattr(inception, "load_inception", lambda weights: None)
    _patch_generator(monkeypatch, size=32, channels=3)
    folder = tmp_path / "images"
    folder.mkdir()
    params = parse_params({"data": {"source": "folder", "folder": str(folder), "image_size": 32, "channels": 3},
                           "evaluate": FEW})
    return out, params, data


def test_folder_data_random_net_swd_intervals_and_note_without_inception(tmp_path, monkeypatch, rulers_dir):
    out, params, _ = _folder_setup(tmp_path, monkeypatch)
    metrics = ev.evaluate(params, outputs_dir=out, log=lambda m: None, rulers=rulers_dir)
    assert "fid" not in metrics and "fid_keras_inception" not in metrics
    assert "inception" in metrics["note"].lower() and metrics["feature_net"] == "random-conv"
    assert metrics["num_samples"] == 200
    assert not [k for k in metrics if k.startswith(("per_class", "intra_", "cond_accuracy"))]  # unconditional
    assert set(k for k in metrics if k.startswith("swd")) == {
        "swd", "swd_level_32", "swd_level_16", "swd_ci95", "swd_real", "swd_real_level_32", "swd_real_level_16",
        "swd_real_ci95"}
    _assert_intervals(metrics, ("swd", "swd_real", "fd_random", "fd_random_real", "kd_random", "kd_random_real"))
    assert metrics["swd_real"] > 0
    assert metrics["fd_random"] > metrics["fd_random_real"]  # noisy stub images against real halves
    rows = (out / "eval_curve.tsv").read_text().splitlines()
    assert rows[0] == "epoch\tswd" and len(rows) == 4


def test_folder_metrics_callable_from_python_and_fixed_by_its_own_seeds(tmp_path, monkeypatch, rulers_dir):
    _, params, data = _folder_setup(tmp_path, monkeypatch)
    unit = (data + 1) / 2
    a, b = unit[:200], unit[200:400]
    noisy = np.clip(b + np.random.default_rng(0).normal(0, 0.2, b.shape), 0, 1).astype(np.float32)
    net = ruler.random_ruler(rulers_dir)
    first = ev.folder_metrics(params.evaluate, a, noisy, real=b, net=net, log=lambda m: None)
    again = ev.folder_metrics(parse_params({"common": {"seed": 99}, "evaluate": FEW}).evaluate, a, noisy, real=b,
                              net=net, log=lambda m: None)
    assert first == again  # nothing of the run's params: the same numbers for any common.seed
    assert first["fd_random"] > first["fd_random_real"] and first["swd"] > first["swd_real"]
    other = ev.folder_metrics(params.evaluate, a, noisy, net=ruler.RandomConvRuler(ruler.random_arrays(1)),
                              log=lambda m: None)
    assert other["fd_random"] != first["fd_random"] and other["swd"] == first["swd"]  # another ruler


def test_a_ruler_with_other_bytes_stops_evaluate_with_one_line(tmp_path, monkeypatch, mnist_stub, rulers_dir):
    """One changed byte in a shipped ruler: evaluate names the file and both hashes, writes nothing."""
    import hashlib
    import shutil

    out = _mnist_outputs(tmp_path, monkeypatch, mnist_stub)
    tampered = tmp_path / "rulers"
    shutil.copytree(rulers_dir, tampered)
    path = tampered / ruler.DIGITS
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 1
    path.write_bytes(bytes(raw))
    want = ruler.recorded_sums(tampered)[ruler.DIGITS]
    with pytest.raises(UserError) as err:
        ev.evaluate(parse_params({"evaluate": FEW}), outputs_dir=out, log=lambda m: None, rulers=tampered)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert hashlib.sha256(bytes(raw)).hexdigest() in message and want in message
    assert not (out / "metrics.json").exists()


def test_gather_across_shards():
    shards = [np.arange(5, dtype=np.float32)[:, None], np.arange(5, 12, dtype=np.float32)[:, None]]
    idx = np.array([11, 0, 6, 4, 5])
    assert ShardReader(shards).gather(idx).ravel().tolist() == [11, 0, 6, 4, 5]


def test_other_draws_split_the_real_images_and_draw_latents_anew(tmp_path, monkeypatch, mnist_stub, rulers_dir):
    """measured_data(draw=k): draw 0 is the evaluate stage's own data; another draw shuffles
    the reference digits and the latents anew (same digits, other order and images), and
    score_floor measures its real set under the generated set's key names."""
    out = _mnist_outputs(tmp_path, monkeypatch, mnist_stub)
    params = parse_params({"evaluate": FEW})
    metrics = ev.evaluate(params, outputs_dir=out, write=False, log=lambda m: None, rulers=rulers_dir)
    own, _ = ev.measured_data(params, out, log=lambda m: None, rulers=rulers_dir)
    other, _ = ev.measured_data(params, out, log=lambda m: None, rulers=rulers_dir, draw=1)
    assert not np.array_equal(own.reference, other.reference)
    assert not np.array_equal(own.sets[""], other.sets[""])
    assert ev._round(ev.score_floor(own)["fid"]) == metrics["fid_real"]
    assert ev.score_floor(other)["fid"] != ev.score_floor(own)["fid"]
    again, _ = ev.measured_data(params, out, log=lambda m: None, rulers=rulers_dir, draw=1)
    assert np.array_equal(again.reference, other.reference) and np.array_equal(again.sets[""], other.sets[""])


def test_mnist_draws_move_the_generated_digits_and_keep_a_fixed_floors_interval(tmp_path, monkeypatch, mnist_stub,
                                                                                rulers_dir):
    """evaluate.draws 2 on MNIST with num_samples = the whole test set: the reference is the
    same digits every draw, so the floor (training digits against it) does not move and keeps
    its own bootstrap interval, not a zero-width one; the generated digits do move."""
    out = _mnist_outputs(tmp_path, monkeypatch, mnist_stub)
    whole = {**FEW, "num_samples": 300}
    one = ev.evaluate(parse_params({"evaluate": whole}), outputs_dir=out, write=False, log=lambda m: None,
                      rulers=rulers_dir)
    two = ev.evaluate(parse_params({"evaluate": {**whole, "draws": 2}}), outputs_dir=out, write=False,
                      log=lambda m: None, rulers=rulers_dir)
    assert two["draws"] == 2 and two["num_samples"] == one["num_samples"] == 300
    assert two["fid_real"] == pytest.approx(one["fid_real"], rel=1e-5)
    assert two["fid_real_ci95"] == one["fid_real_ci95"] and one["fid_real_ci95"]["hi"] > one["fid_real_ci95"]["lo"]
    assert two["fid"] != one["fid"]
    assert two["fid_ci95"]["lo"] < two["fid"] < two["fid_ci95"]["hi"]
