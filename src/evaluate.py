"""Evaluate the trained generator: one flat metrics dict with 95% intervals, plus an over-training curve.

MNIST-like data (28x28x1): features and class probabilities come from the digit
classifier (``outputs/classifier/classifier.keras``, trained by ``stages/classifier.py``
with its own seed). ``num_samples`` generated images (final EMA generator) are compared
with ``num_samples`` MNIST test images (a seeded shuffle); the first ``num_samples`` MNIST
training images against the same test images give the real-data floor (``*_real`` keys),
and uniform noise the ceiling (``fid_noise``).

Folder data: the reference is the processed shards, split (seeded) into two disjoint
halves A and B. Generated images are compared with A, and B with A gives the floor:
Frechet and kernel distances on the features of a fixed random conv net (``fd_random``,
``kd_random``; :mod:`src.metrics.randnet`), SWD, and, when InceptionV3 weights are
available, FID/KID on Keras's InceptionV3 (``fid_keras_inception``: not the 2015 TF
Inception graph of published FIDs, so not comparable with them). :func:`folder_metrics`
computes them from image arrays, for benchmarks.

Every quality number has a ``<key>_ci95: {lo, hi}`` 95% interval (:mod:`src.metrics.intervals`).
Over training: FID (classifier features) or SWD (folder data) with ``curve_samples``
images for every snapshot in ``outputs/snapshots/``, written to ``outputs/eval_curve.tsv``.
Every random draw (reference split, latents, KID subsets, SWD patches and projections,
bootstrap) comes from ``evaluate.seed``, never ``common.seed``: runs of different training
seeds are measured with the same ruler, and the same inputs give the same bytes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from src.atomic import write_json, write_text
from src import faults
from src.errors import UserError
from src.metrics import classifier as cls
from src.metrics import intervals
from src.metrics import swd as swd_mod
from src.metrics.frechet import feature_stats, frechet_distance
from src.metrics.kid import kernel_inception_distance, kid_fold_values
from src.paths import OUTPUTS, PROCESSED, Outputs
from src.snapshots import list_snapshots

SIGNIFICANT = 6  # digits kept in metrics.json / eval_curve.tsv (stable bytes, no false precision)

# Seeds derived from params.evaluate.seed, one per random stream.
_GEN, _KID, _SWD, _NOISE, _SPLIT, _BOOT, _FOLDS = 0, 1, 2, 3, 4, 5, 6


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


def _load_feature_net(path: Path, kind: str):
    """The classifier stage's network: ``kind`` 'mnist-cnn' (features, probs) or 'random-conv'."""
    import keras
    from src.metrics import randnet

    if not path.is_file():
        raise UserError(f"{path}: feature network not found (run `python stages/classifier.py` first)")
    model = keras.models.load_model(path, compile=False)
    is_random = model.name == randnet.NAME
    if is_random != (kind == "random-conv"):
        raise UserError(f"{path} is the {'random conv net' if is_random else 'MNIST classifier'}, but "
                        f"params data.source needs the {kind}; rerun the classifier stage")
    return model if is_random else cls.feature_model(model)


# ---------------------------------------------------------------- helpers
def _round(value: float) -> float:
    return float(f"{float(value):.{SIGNIFICANT}g}")


def _rounded(value):
    """Floats and the floats of ``{lo, hi}`` intervals rounded; anything else as is."""
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _seed(ev, stream: int) -> int:
    """The seed of one random stream of evaluate, from ``evaluate.seed`` alone."""
    return int(ev.seed) * 16 + 1000 + stream


def read_train_log(summary_file: Path) -> dict:
    """``d_acc_real``/``d_acc_fake`` of the last epoch from the train log's summary (DVCLive's
    ``metrics.json``, read as plain JSON: nothing of the training code), {} if absent."""
    try:
        summary = json.loads(Path(summary_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    out = {}
    for key in ("d_acc_real", "d_acc_fake"):
        if isinstance(summary, dict) and isinstance(summary.get(key), (int, float)):
            out[key] = float(summary[key])
    return out


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


# ---------------------------------------------------------------- shared pieces
def _swd_with_intervals(ev, reference: np.ndarray, others: dict[str, np.ndarray]) -> dict:
    """``swd<suffix>``, its per-level values and ``swd<suffix>_ci95`` for each of ``others``
    (suffix -> images), against ``reference``: the full-sample SWD, and the interval from
    the SWD of disjoint folds (same patch and projection seeds)."""
    names = list(others)
    full = swd_mod.swd(reference, [others[k] for k in names], ev.swd_patches_per_image, ev.swd_projections,
                       _seed(ev, _SWD))
    ref_folds = intervals.fold_indices(len(reference), _seed(ev, _FOLDS))
    folds = {k: intervals.fold_indices(len(others[k]), _seed(ev, _FOLDS) + 1, len(ref_folds)) for k in names}
    count = min([len(ref_folds)] + [len(f) for f in folds.values()])
    per_fold = {k: [] for k in names}
    for i in range(count):
        sets = [others[k][np.sort(folds[k][i])] for k in names]
        results = swd_mod.swd(reference[np.sort(ref_folds[i])], sets, ev.swd_patches_per_image, ev.swd_projections,
                              _seed(ev, _SWD))
        for k, res in zip(names, results):
            per_fold[k].append(res["mean"])
    m: dict = {}
    for k, res in zip(names, full):
        m.update(_swd_keys("swd" + k, res))
        m[f"swd{k}_ci95"] = intervals.fold_interval(res["mean"], per_fold[k])
    return m


def _distances(ev, ref_feats: np.ndarray, feats: dict[str, np.ndarray], fd_key: str, kd_key: str) -> dict:
    """Frechet distance and KID (with spread and 95% intervals) of each feature set in ``feats``
    (suffix -> features) against ``ref_feats``; keys ``fd_key + suffix`` and ``kd_key + suffix``."""
    m: dict = {}
    ref_stats = feature_stats(ref_feats)
    names = list(feats)
    for k in names:
        m[fd_key + k] = frechet_distance(*feature_stats(feats[k]), *ref_stats)
    cis = intervals.frechet_intervals(ref_feats, [feats[k] for k in names], [m[fd_key + k] for k in names],
                                      ev.bootstrap, _seed(ev, _BOOT))
    ref_folds = intervals.fold_indices(len(ref_feats), _seed(ev, _FOLDS))
    for k, ci in zip(names, cis):
        m[f"{fd_key}{k}_ci95"] = ci
        kid, spread = kernel_inception_distance(feats[k], ref_feats, ev.kid_subsets, ev.kid_subset_size,
                                                _seed(ev, _KID))
        folds = intervals.fold_indices(len(feats[k]), _seed(ev, _FOLDS) + 1, len(ref_folds))
        n = min(len(folds), len(ref_folds))
        values = kid_fold_values(feats[k], ref_feats, folds[:n], ref_folds[:n])
        m[kd_key + k], m[f"{kd_key}{k}_std"] = kid, spread
        m[f"{kd_key}{k}_ci95"] = intervals.fold_interval(kid, values, lower=None)
    return m


# ---------------------------------------------------------------- MNIST-like data
def _evaluate_mnist(params, outputs: Outputs, log: Callable[[str], None]) -> tuple[dict, str]:
    ev = params.evaluate
    n = ev.num_samples
    net = _load_feature_net(outputs.classifier, "mnist-cnn")
    gen_path = outputs.generator
    if not gen_path.is_file():
        raise UserError(f"{gen_path}: generator not found (run the train stage first)")

    test_x, _ = _load_mnist(params.data.mnist_dir, "test")
    train_x, _ = _load_mnist(params.data.mnist_dir, "train")
    # A seeded shuffle of the test set: its first 5,000 digits come from other writers than
    # the last 5,000 (cleaner), so a prefix would be a biased reference for n < 10,000.
    test_x = test_x[np.random.default_rng(_seed(ev, _SPLIT)).permutation(len(test_x))]
    ref = cls.to_unit_range(test_x[:n])
    real = cls.to_unit_range(train_x[:n])
    t0 = time.perf_counter()
    generator = _load_generator(params, gen_path)
    fake = _generate_unit(params, generator, n, _seed(ev, _GEN))
    noise = np.random.default_rng(_seed(ev, _NOISE)).random(ref.shape[:1] + (28, 28, 1), dtype=np.float32)
    log(f"evaluate: generated {n} images in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    feats, probs = {}, {}
    for name, images in (("ref", ref), ("fake", fake), ("real", real), ("noise", noise)):
        feats[name], probs[name] = cls.features_and_probs(net, images, ev.batch_size)
    log(f"evaluate: classifier features in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    m = _distances(ev, feats["ref"], {"": feats["fake"], "_real": feats["real"]}, "fid", "kid")
    for name, suffix in (("fake", ""), ("real", "_real")):
        score = cls.classifier_score(probs[name])
        m["classifier_score" + suffix] = score
        m[f"classifier_score{suffix}_ci95"] = intervals.bootstrap_interval(
            probs[name], cls.classifier_score, score, ev.bootstrap, _seed(ev, _BOOT), lower=1.0)
        covered, class_kl = cls.class_coverage(probs[name], ev.coverage_threshold)
        m["coverage" + suffix], m["class_kl" + suffix] = covered, class_kl
        m[f"class_kl{suffix}_ci95"] = intervals.bootstrap_interval(
            probs[name], lambda p: cls.class_coverage(p, ev.coverage_threshold)[1], class_kl, ev.bootstrap,
            _seed(ev, _BOOT), lower=0.0)
    m["fid_noise"] = frechet_distance(*feature_stats(feats["noise"]), *feature_stats(feats["ref"]))
    log(f"evaluate: FID/KID/score/coverage with intervals in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    m.update(_swd_with_intervals(ev, ref, {"": fake, "_real": real}))
    log(f"evaluate: SWD with intervals in {time.perf_counter() - t0:.1f}s")
    m.update(num_samples=int(len(fake)), reference="mnist-test", feature_net="mnist-cnn")

    # over training: FID with curve_samples images against the first curve_samples test images
    nc = min(ev.curve_samples, len(ref))
    curve_ref = feature_stats(feats["ref"][:nc])
    rows = []
    for epoch, path in list_snapshots(outputs.snapshots):
        images = _generate_unit(params, _load_generator(params, path), nc, _seed(ev, _GEN))
        f, _ = cls.features_and_probs(net, images, ev.batch_size)
        rows.append((epoch, frechet_distance(*feature_stats(f), *curve_ref)))
        log(f"evaluate: epoch {epoch} fid {rows[-1][1]:.3f}")
        faults.point("curve")
    curve = "epoch\tfid\n" + "".join(f"{e}\t{_round(v)}\n" for e, v in rows)
    return m, curve


# ---------------------------------------------------------------- folder data
def folder_metrics(ev, reference: np.ndarray, fake: np.ndarray, real: np.ndarray | None = None,
                   net=None, inception_net=None, log: Callable[[str], None] = _log) -> dict:
    """The folder metrics of generated images ``fake`` (and a real floor ``real``) against ``reference``.

    Images are float32 in [0, 1], (N, H, W, C). ``ev`` is an ``EvaluateParams`` (seed,
    bootstrap, KID and SWD settings). ``net``: the random conv net (default: built from
    ``ev.classifier.seed``); ``inception_net``: a Keras InceptionV3 or None to leave
    ``*_keras_inception`` out. Returns a flat dict: ``fd_random``, ``kd_random``,
    ``kd_random_std``, ``swd``, ``swd_level_<side>``, each with ``_ci95`` (and the same with
    ``_real`` when ``real`` is given). Callable from Python, e.g. by a benchmark.
    """
    from src.metrics import randnet

    sets = {"": np.asarray(fake, np.float32)}
    if real is not None:
        sets["_real"] = np.asarray(real, np.float32)
    reference = np.asarray(reference, np.float32)
    t0 = time.perf_counter()
    m = _swd_with_intervals(ev, reference, sets)
    log(f"evaluate: SWD with intervals in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    net = net if net is not None else randnet.build_random_net(ev.classifier.seed)
    ref_f = randnet.random_features(net, reference, ev.batch_size)
    feats = {k: randnet.random_features(net, v, ev.batch_size) for k, v in sets.items()}
    m.update(_distances(ev, ref_f, feats, "fd_random", "kd_random"))
    log(f"evaluate: random-conv FD/KD with intervals in {time.perf_counter() - t0:.1f}s")

    if inception_net is not None:
        from src.metrics import inception

        t0 = time.perf_counter()
        ref_f = inception.inception_features(inception_net, reference)
        feats = {k: inception.inception_features(inception_net, v) for k, v in sets.items()}
        m.update(_distances(ev, ref_f, feats, "fid_keras_inception", "kid_keras_inception"))
        log(f"evaluate: Keras InceptionV3 FID/KID with intervals in {time.perf_counter() - t0:.1f}s")
    return m


def _evaluate_folder(params, outputs: Outputs, processed_dir: Path,
                     log: Callable[[str], None]) -> tuple[dict, str]:
    from src.dataset import ShardReader
    from src.metrics import inception

    ev = params.evaluate
    manifest, shards = _open_shards(processed_dir)
    value_range = tuple(float(v) for v in manifest.get("range", params.data.value_range))
    total = int(sum(len(s) for s in shards))
    if total < 8:
        raise UserError(f"{processed_dir}: only {total} images; evaluation needs at least 8")
    half = min(ev.num_samples, total // 2)
    order = np.random.default_rng(_seed(ev, _SPLIT)).permutation(total)
    reader = ShardReader(shards)
    real_a = cls.to_unit_range(reader.gather(order[:half]), value_range)
    real_b = cls.to_unit_range(reader.gather(order[half:2 * half]), value_range)
    net = _load_feature_net(outputs.classifier, "random-conv")
    gen_path = outputs.generator
    if not gen_path.is_file():
        raise UserError(f"{gen_path}: generator not found (run the train stage first)")
    fake = _generate_unit(params, _load_generator(params, gen_path), half, _seed(ev, _GEN))

    inception_net = inception.load_inception(ev.inception_weights)
    m = folder_metrics(ev, real_a, fake, real_b, net=net, inception_net=inception_net, log=log)
    if inception_net is None:
        m["note"] = ("fid/kid_keras_inception left out: evaluate.inception_weights is off"
                     if ev.inception_weights == "off" else
                     "fid/kid_keras_inception left out: InceptionV3 ImageNet weights could not be downloaded; "
                     "set evaluate.inception_weights to a local weights file")
    m["feature_net"] = "random-conv" + ("+keras-inception-v3" if inception_net is not None else "")
    m.update(num_samples=int(half), reference="folder-half-a")

    nc = min(ev.curve_samples, half)
    rows = []
    for epoch, path in list_snapshots(outputs.snapshots):
        images = _generate_unit(params, _load_generator(params, path), nc, _seed(ev, _GEN))
        (res,) = swd_mod.swd(real_a[:nc], [images], ev.swd_patches_per_image, ev.swd_projections,
                             _seed(ev, _SWD))
        rows.append((epoch, res["mean"]))
        log(f"evaluate: epoch {epoch} swd {rows[-1][1]:.3f}")
        faults.point("curve")
    curve = "epoch\tswd\n" + "".join(f"{e}\t{_round(v)}\n" for e, v in rows)
    return m, curve


# ---------------------------------------------------------------- entry point
def evaluate(params, outputs_dir: str | Path = OUTPUTS, processed_dir: str | Path = PROCESSED,
             write: bool = True, log: Callable[[str], None] = _log) -> dict:
    """Compute the metrics; write ``metrics.json`` and ``eval_curve.tsv`` under ``outputs_dir``.

    Reads (under ``outputs_dir``, see :class:`src.paths.Outputs`) the generator, its
    snapshots, the classifier stage's network and the train log's summary.

    Returns the metrics dict: numbers, strings and ``{"lo", "hi"}`` intervals (floats
    rounded to 6 significant digits).
    """
    outputs = Outputs(Path(outputs_dir))
    mnist_like = params.data.image_size == 28 and params.data.channels == 1 and params.data.source == "mnist"
    if mnist_like:
        metrics, curve = _evaluate_mnist(params, outputs, log)
    else:
        metrics, curve = _evaluate_folder(params, outputs, Path(processed_dir), log)
    metrics.update(read_train_log(outputs.train_log_summary))
    metrics = {k: _rounded(v) for k, v in metrics.items()}
    if write:
        write_json(outputs.metrics, metrics)
        write_text(outputs.eval_curve, curve)
    return metrics
