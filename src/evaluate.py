"""Evaluate the trained generator: one flat metrics dict plus an over-training curve.

MNIST-like data (28x28x1): features and class probabilities come from the cached digit
classifier (``outputs/classifier/classifier.keras``, trained by ``stages/classifier.py``).
``num_samples`` generated images (final EMA generator) are compared with the first
``num_samples`` MNIST test images; the first ``num_samples`` MNIST training images against
the same test images give the real-data floor (``*_real`` keys), and uniform noise the
ceiling (``fid_noise``).

Folder data: the reference is the processed shards, split (seeded) into two disjoint
halves A and B. Generated images are compared with A, and B with A gives the floor. SWD
always; FID/KID from InceptionV3 when its weights are available, else a ``note`` says why
they were left out.

Over training: FID (classifier features) or SWD (folder data) with ``curve_samples``
images for every snapshot in ``outputs/snapshots/``, written to ``outputs/eval_curve.tsv``.
Everything is seeded from ``params.common.seed``: the same inputs give the same bytes.
"""
from __future__ import annotations

import csv
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from src.atomic import write_json, write_text
from src import faults
from src.errors import UserError
from src.metrics import classifier as cls
from src.metrics import swd as swd_mod
from src.metrics.frechet import feature_stats, frechet_distance
from src.metrics.kid import kernel_inception_distance

SNAPSHOT_RE = re.compile(r"generator_epoch_(\d+)\.npz$")
SIGNIFICANT = 6  # digits kept in metrics.json / eval_curve.tsv (stable bytes, no false precision)

# Seeds derived from params.common.seed, one per random stream.
_GEN, _KID, _SWD, _NOISE, _SPLIT = 0, 1, 2, 3, 4


# ---------------------------------------------------------------- collaborators (lazy imports)
def _load_mnist(mnist_dir: str, split: str):
    from src.mnist import load_mnist
    return load_mnist(mnist_dir, split)


def _open_shards(processed_dir):
    from src.dataset import open_shards
    return open_shards(processed_dir, verify=True)


def _load_generator(params, path):
    from src.networks import load_generator
    return load_generator(params, path)


def _generate(generator, n: int, latent_dim: int, seed: int, batch_size: int) -> np.ndarray:
    from src.sampling import generate_images
    return generate_images(generator, n, latent_dim, seed, batch_size)


def _load_classifier(path: Path):
    import keras
    if not path.is_file():
        raise UserError(f"{path}: classifier not found (run `python stages/classifier.py` first)")
    return cls.feature_model(keras.models.load_model(path, compile=False))


# ---------------------------------------------------------------- helpers
def _round(value: float) -> float:
    return float(f"{float(value):.{SIGNIFICANT}g}")


def _seed(params, stream: int) -> int:
    return int(params.common.seed) * 16 + 1000 + stream


def read_train_log(path: Path) -> dict:
    """``d_acc_real``/``d_acc_fake`` from the last row of the training log, {} if absent."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r]
    if not rows:
        return {}
    out = {}
    for key in ("d_acc_real", "d_acc_fake"):
        try:
            out[key] = float(rows[-1][key])
        except (KeyError, TypeError, ValueError):
            pass
    return out


def list_snapshots(snapshot_dir: Path) -> list[tuple[int, Path]]:
    if not snapshot_dir.is_dir():
        return []
    found = []
    for path in snapshot_dir.iterdir():
        m = SNAPSHOT_RE.search(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def _generate_unit(params, generator, n: int, seed: int) -> np.ndarray:
    images = _generate(generator, n, params.model.latent_dim, seed, params.evaluate.batch_size)
    images = np.asarray(images)
    want = (params.data.image_size, params.data.image_size, params.data.channels)
    if images.shape[1:] != want:
        raise UserError(f"generator makes images of shape {images.shape[1:]}, but params data.image_size/"
                        f"data.channels say {want}")
    return cls.to_unit_range(images, params.data.value_range)


def _swd_keys(prefix: str, result: dict) -> dict:
    out = {prefix: result["mean"]}
    for size, value in result["levels"].items():
        out[f"{prefix}_level_{size}"] = value
    return out


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- MNIST-like data
def _evaluate_mnist(params, outputs: Path, log: Callable[[str], None]) -> tuple[dict, str]:
    ev = params.evaluate
    n = ev.num_samples
    net = _load_classifier(outputs / "classifier" / "classifier.keras")
    gen_path = outputs / "generator.keras"
    if not gen_path.is_file():
        raise UserError(f"{gen_path}: generator not found (run the train stage first)")

    test_x, _ = _load_mnist(params.data.mnist_dir, "test")
    train_x, _ = _load_mnist(params.data.mnist_dir, "train")
    # A seeded shuffle of the test set: its first 5,000 digits come from other writers than
    # the last 5,000 (cleaner), so a prefix would be a biased reference for n < 10,000.
    test_x = test_x[np.random.default_rng(_seed(params, _SPLIT)).permutation(len(test_x))]
    ref = cls.to_unit_range(test_x[:n])
    real = cls.to_unit_range(train_x[:n])
    t0 = time.perf_counter()
    generator = _load_generator(params, gen_path)
    fake = _generate_unit(params, generator, n, _seed(params, _GEN))
    noise = np.random.default_rng(_seed(params, _NOISE)).random(ref.shape[:1] + (28, 28, 1), dtype=np.float32)
    log(f"evaluate: generated {n} images in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    feats, probs = {}, {}
    for name, images in (("ref", ref), ("fake", fake), ("real", real), ("noise", noise)):
        feats[name], probs[name] = cls.features_and_probs(net, images, ev.batch_size)
    log(f"evaluate: classifier features in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    ref_stats = feature_stats(feats["ref"])
    m: dict = {}
    for name, suffix in (("fake", ""), ("real", "_real")):
        m["fid" + suffix] = frechet_distance(*feature_stats(feats[name]), *ref_stats)
        kid, kid_std = kernel_inception_distance(feats[name], feats["ref"], ev.kid_subsets,
                                                 ev.kid_subset_size, _seed(params, _KID))
        m["kid" + suffix], m[f"kid{suffix}_std"] = kid, kid_std
        m["classifier_score" + suffix] = cls.classifier_score(probs[name])
        covered, class_kl = cls.class_coverage(probs[name], ev.coverage_threshold)
        m["coverage" + suffix], m["class_kl" + suffix] = covered, class_kl
    m["fid_noise"] = frechet_distance(*feature_stats(feats["noise"]), *ref_stats)
    log(f"evaluate: FID/KID/score/coverage in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    fake_swd, real_swd = swd_mod.swd(ref, [fake, real], ev.swd_patches_per_image, ev.swd_projections,
                                     _seed(params, _SWD))
    m.update(_swd_keys("swd", fake_swd))
    m.update(_swd_keys("swd_real", real_swd))
    log(f"evaluate: SWD in {time.perf_counter() - t0:.1f}s")
    m.update(num_samples=int(len(fake)), reference="mnist-test", feature_net="mnist-cnn")

    # over training: FID with curve_samples images against the first curve_samples test images
    nc = min(ev.curve_samples, len(ref))
    curve_ref = feature_stats(feats["ref"][:nc])
    rows = []
    for epoch, path in list_snapshots(outputs / "snapshots"):
        images = _generate_unit(params, _load_generator(params, path), nc, _seed(params, _GEN))
        f, _ = cls.features_and_probs(net, images, ev.batch_size)
        rows.append((epoch, frechet_distance(*feature_stats(f), *curve_ref)))
        log(f"evaluate: epoch {epoch} fid {rows[-1][1]:.3f}")
        faults.point("curve")
    curve = "epoch\tfid\n" + "".join(f"{e}\t{_round(v)}\n" for e, v in rows)
    return m, curve


# ---------------------------------------------------------------- folder data
def _gather(shards: list, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` (global, in order) of the concatenation of ``shards``."""
    bounds = np.cumsum([0] + [len(s) for s in shards])
    out = np.empty((len(indices),) + tuple(shards[0].shape[1:]), np.float32)
    which = np.searchsorted(bounds, indices, side="right") - 1
    for s in np.unique(which):
        sel = np.nonzero(which == s)[0]
        local = indices[sel] - bounds[s]
        order = np.argsort(local)  # read each shard front to back
        out[sel[order]] = np.asarray(shards[s][local[order]], np.float32)
    return out


def _evaluate_folder(params, outputs: Path, processed_dir: Path,
                     log: Callable[[str], None]) -> tuple[dict, str]:
    from src.metrics import inception

    ev = params.evaluate
    manifest, shards = _open_shards(processed_dir)
    value_range = tuple(float(v) for v in manifest.get("range", params.data.value_range))
    total = int(sum(len(s) for s in shards))
    if total < 4:
        raise UserError(f"{processed_dir}: only {total} images; evaluation needs at least 4")
    half = min(ev.num_samples, total // 2)
    order = np.random.default_rng(_seed(params, _SPLIT)).permutation(total)
    real_a = cls.to_unit_range(_gather(shards, order[:half]), value_range)
    real_b = cls.to_unit_range(_gather(shards, order[half:2 * half]), value_range)
    gen_path = outputs / "generator.keras"
    if not gen_path.is_file():
        raise UserError(f"{gen_path}: generator not found (run the train stage first)")
    fake = _generate_unit(params, _load_generator(params, gen_path), half, _seed(params, _GEN))

    t0 = time.perf_counter()
    fake_swd, real_swd = swd_mod.swd(real_a, [fake, real_b], ev.swd_patches_per_image, ev.swd_projections,
                                     _seed(params, _SWD))
    m: dict = {}
    m.update(_swd_keys("swd", fake_swd))
    m.update(_swd_keys("swd_real", real_swd))
    log(f"evaluate: SWD in {time.perf_counter() - t0:.1f}s")

    net = inception.load_inception(ev.inception_weights)
    if net is None:
        m["note"] = ("fid/kid left out: evaluate.inception_weights is off" if ev.inception_weights == "off" else
                     "fid/kid left out: InceptionV3 ImageNet weights could not be downloaded; set "
                     "evaluate.inception_weights to a local weights file")
        m["feature_net"] = "none"
    else:
        t0 = time.perf_counter()
        fa = inception.inception_features(net, real_a)
        stats_a = feature_stats(fa)
        for images, suffix in ((fake, ""), (real_b, "_real")):
            f = inception.inception_features(net, images)
            m["fid" + suffix] = frechet_distance(*feature_stats(f), *stats_a)
            kid, kid_std = kernel_inception_distance(f, fa, ev.kid_subsets, ev.kid_subset_size,
                                                     _seed(params, _KID))
            m["kid" + suffix], m[f"kid{suffix}_std"] = kid, kid_std
        m["feature_net"] = "inception-v3"
        log(f"evaluate: Inception FID/KID in {time.perf_counter() - t0:.1f}s")
    m.update(num_samples=int(half), reference="folder-half-a")

    nc = min(ev.curve_samples, half)
    rows = []
    for epoch, path in list_snapshots(outputs / "snapshots"):
        images = _generate_unit(params, _load_generator(params, path), nc, _seed(params, _GEN))
        (res,) = swd_mod.swd(real_a[:nc], [images], ev.swd_patches_per_image, ev.swd_projections,
                             _seed(params, _SWD))
        rows.append((epoch, res["mean"]))
        log(f"evaluate: epoch {epoch} swd {rows[-1][1]:.3f}")
        faults.point("curve")
    curve = "epoch\tswd\n" + "".join(f"{e}\t{_round(v)}\n" for e, v in rows)
    return m, curve


# ---------------------------------------------------------------- entry point
def evaluate(params, outputs_dir: str | Path = "outputs", processed_dir: str | Path = "data/processed",
             write: bool = True, log: Callable[[str], None] = _log) -> dict:
    """Compute the metrics; write ``metrics.json`` and ``eval_curve.tsv`` under ``outputs_dir``.

    Returns the flat metrics dict (floats rounded to 6 significant digits).
    """
    outputs = Path(outputs_dir)
    mnist_like = params.data.image_size == 28 and params.data.channels == 1 and params.data.source == "mnist"
    if mnist_like:
        metrics, curve = _evaluate_mnist(params, outputs, log)
    else:
        metrics, curve = _evaluate_folder(params, outputs, Path(processed_dir), log)
    metrics.update(read_train_log(outputs / "train_log" / "metrics.tsv"))
    metrics = {k: (_round(v) if isinstance(v, float) else v) for k, v in metrics.items()}
    if write:
        write_json(outputs / "metrics.json", metrics)
        write_text(outputs / "eval_curve.tsv", curve)
    return metrics
