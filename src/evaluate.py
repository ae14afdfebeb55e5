"""Evaluate the trained generator: one flat metrics dict with 95% intervals, plus an over-training curve.

This module loads what is measured (:func:`_mnist_data`, :func:`_folder_data`) and runs
every metric of :mod:`src.metrics.registry` registered for the data kind; the metrics
themselves, and which one gives the curve, live in that registry.

MNIST-like data (28x28x1): features and class probabilities come from the shipped digit
CNN (``data/rulers/mnist_cnn.npz``, :mod:`src.metrics.ruler`: checked against its recorded
sha256, run in NumPy float64, so every machine measures with the same ruler). ``num_samples`` generated images (final EMA generator) are compared
with ``num_samples`` MNIST test images (a seeded shuffle); the first ``num_samples`` MNIST
training images against the same test images give the real-data floor (``*_real`` keys),
and uniform noise the ceiling (``fid_noise``).

Folder data: the reference is the processed shards, split (seeded) into two disjoint
halves A and B. Generated images are compared with A, and B with A gives the floor:
Frechet and kernel distances on the features of the shipped random conv net (``fd_random``,
``kd_random``; ``data/rulers/random_conv.npz``), SWD, and, when InceptionV3 weights are
available, FID/KID on Keras's InceptionV3 (``fid_keras_inception``: not the 2015 TF
Inception graph of published FIDs, so not comparable with them). :func:`folder_metrics`
computes them from image arrays, for benchmarks.

A conditional generator (:func:`src.networks.generator_classes` names its classes) is
asked for given classes, and the data's labels say which class each reference image is.
MNIST: a balanced mix of the ten digits (the generator's classes must be the digits; its
class index is mapped to the digit by name) against the test digits' true labels, and the
training digits with theirs for the floor. Folders: the classes of half A in order, so
each class has as many generated images as half A has, against A's labels, and half B
with its own labels for the floor. The metrics above are then computed on that mix as
they are; the per-class ones (:mod:`src.metrics.registry`) are added: ``cond_accuracy``
(MNIST: the share of generated digits the classifier puts in the requested class),
``intra_fid`` (MNIST) or ``intra_swd`` and ``intra_fd_random`` (folders), each the mean
over the classes of the class's own distance (class-c images against the reference's
class-c images), and every class's values under ``per_class.<name>``. A class with fewer
than 2 images in a set is left out of them, which ``per_class_note`` says. An
unconditional generator gets none of these keys.

Every quality number has a ``<key>_ci95: {lo, hi}`` 95% interval (:mod:`src.metrics.intervals`).
Over training: FID (classifier features) or SWD (folder data) with ``curve_samples``
images for every snapshot in ``outputs/snapshots/``, written to ``outputs/eval_curve.tsv``.
``evaluate.draws`` K > 1: the final generator, its floor and the best snapshot are measured
K times, draw k on another split of the real images (folder halves; MNIST's shuffled test
digits) with other latents (:func:`~src.metrics.registry.split_seed`,
:func:`~src.metrics.registry.latent_seed`), and each figure is the mean of the K, its
``_ci95`` from the K values (:func:`src.metrics.intervals.over_draws`); draw 0 is the single
evaluation's, and the curve (so the best epoch) stays on it.
Every random draw (reference split, latents, KID subsets, SWD patches and projections,
bootstraps, per class too) comes from ``evaluate.seed``, never ``common.seed``: runs of
different training seeds are measured with the same ruler, and the same inputs give the
same bytes.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from src.atomic import write_json, write_text
from src import faults
from src.errors import UserError
from src.metrics import classifier as cls
from src.metrics import ruler
from src.labels import MNIST_CLASSES
from src.metrics.intervals import over_draws
from src.metrics.registry import NOISE, EvalData, curve_metric, latent_seed, run_metrics, split_seed, stream_seed
from src.paths import OUTPUTS, PROCESSED, Outputs
from src.snapshots import list_snapshots

SIGNIFICANT = 6  # digits kept in metrics.json / eval_curve.tsv (stable bytes, no false precision)


# ---------------------------------------------------------------- collaborators (lazy imports)
def _load_mnist(mnist_dir: str, split: str):
    from src.mnist import load_mnist
    return load_mnist(mnist_dir, split)


def _open_shards(processed_dir):
    """``(manifest, shards, labels)`` of the processed data (labels None when unlabelled)."""
    from src.dataset import open_shards
    return open_shards(processed_dir, verify=True, with_labels=True)


def _load_generator(params, path):
    from src.networks import load_generator
    return load_generator(params, path)


def _generator_classes(generator) -> list[str]:
    from src.networks import generator_classes
    return generator_classes(generator)


def _generate(generator, n: int, latent_dim: int, seed: int, batch_size: int,
              labels: np.ndarray | None = None) -> np.ndarray:
    from src.sampling import generate_images
    return generate_images(generator, n, latent_dim, seed, batch_size, labels=labels)


def _keep_best(params, outputs: Outputs, curve: str, write: bool) -> dict:
    """The best snapshot of the curve, exported as ``generator_best.keras`` (:mod:`src.best_snapshot`)."""
    from src.best_snapshot import keep_best
    return keep_best(params, curve, outputs.snapshots, outputs.generator_best, write=write)


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


def generate_unit(params, generator, n: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """``n`` images of ``generator`` in [0, 1], as the evaluate stage draws them (latents from
    ``seed``, ``evaluate.batch_size`` at a time, the shape checked against ``params.data``);
    a conditional one draws image k of class ``labels[k]`` (the generator's class indices).
    Public for benchmarks that score generators the way this stage does."""
    images = _generate(generator, n, params.model.latent_dim, seed, params.evaluate.batch_size, labels)
    images = np.asarray(images)
    want = (params.data.image_size, params.data.image_size, params.data.channels)
    if images.shape[1:] != want:
        raise UserError(f"generator makes images of shape {images.shape[1:]}, but params data.image_size/"
                        f"data.channels say {want}")
    return cls.to_unit_range(images, params.data.value_range)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _class_map(kind: str, generator_classes: list[str], data_classes: list[str], where) -> np.ndarray:
    """For each class of the data (by index), the conditional generator's index of the class
    of that name. UserError (one line) when the generator lacks one of the data's classes, or
    when a conditional MNIST generator's classes are not the ten digits."""
    if kind == "mnist" and sorted(generator_classes) != sorted(MNIST_CLASSES):
        shown = ", ".join(repr(name) for name in generator_classes[:12])
        shown += ", ..." if len(generator_classes) > 12 else ""
        raise UserError(f"{where}: a conditional MNIST generator must have the ten digit classes '0' to '9' "
                        f"(data.labels: mnist); it has {len(generator_classes)}: {shown}")
    index = {name: i for i, name in enumerate(generator_classes)}
    missing = [name for name in data_classes if name not in index]
    if missing:
        raise UserError(f"{where}: the generator has no class {missing[0]!r} of the processed data "
                        f"({len(missing)} missing); it was trained on other labels: run the train stage again")
    return np.array([index[name] for name in data_classes], np.int32)


def _requested(generator, data: EvalData, n: int, where) -> np.ndarray | None:
    """The generator's class labels for ``n`` images of ``data``'s generated set (its first
    ``n`` labels, mapped by name): None for an unconditional generator."""
    classes = _generator_classes(generator)
    if not classes:
        return None
    if data.labels is None:
        raise UserError(f"{where}: a conditional generator (classes {', '.join(classes[:5])}"
                        f"{', ...' if len(classes) > 5 else ''}), but the final generator is unconditional "
                        "or the data has no labels: run the train stage again")
    return _class_map(data.kind, classes, data.classes, where)[data.labels[""][:n]]


# ---------------------------------------------------------------- the data each kind is measured on
def _require_generator(outputs: Outputs) -> Path:
    if not outputs.generator.is_file():
        raise UserError(f"{outputs.generator}: generator not found (run the train stage first)")
    return outputs.generator


def _mnist_data(params, outputs: Outputs, rulers: Path, log: Callable[[str], None],
                draw: int = 0) -> tuple[EvalData, dict]:
    """MNIST: generated images and the first ``num_samples`` training digits against a seeded
    shuffle of the test digits; uniform noise for the ceiling; the shipped digit CNN."""
    ev = params.evaluate
    n = ev.num_samples
    net = ruler.digit_ruler(rulers)
    gen_path = _require_generator(outputs)
    test_x, test_y = _load_mnist(params.data.mnist_dir, "test")
    train_x, train_y = _load_mnist(params.data.mnist_dir, "train")
    # A seeded shuffle of the test set: its first 5,000 digits come from other writers than
    # the last 5,000 (cleaner), so a prefix would be a biased reference for n < 10,000.
    shuffle = np.random.default_rng(split_seed(ev, draw)).permutation(len(test_x))
    test_x = test_x[shuffle]
    ref = cls.to_unit_range(test_x[:n])
    real = cls.to_unit_range(train_x[:n])
    generator = _load_generator(params, gen_path)
    gen_classes = _generator_classes(generator)
    labels, request = None, None
    if gen_classes:  # conditional: a balanced mix of the digits, and the true labels
        from src.sampling import balanced_labels
        labels = {"ref": np.asarray(test_y)[shuffle][:n].astype(np.int32),
                  "_real": np.asarray(train_y)[:n].astype(np.int32),
                  "": balanced_labels(n, len(MNIST_CLASSES))}
        request = _class_map("mnist", gen_classes, MNIST_CLASSES, gen_path)[labels[""]]
    t0 = time.perf_counter()
    fake = generate_unit(params, generator, n, latent_seed(ev, draw), request)
    noise = np.random.default_rng(stream_seed(ev, NOISE)).random(ref.shape[:1] + (28, 28, 1), dtype=np.float32)
    log(f"evaluate: generated {n} images in {time.perf_counter() - t0:.1f}s")
    data = EvalData(ev, "mnist", ref, {"": fake, "_real": real}, nets={"classifier": net}, extra={"noise": noise},
                    labels=labels, classes=list(MNIST_CLASSES) if labels else [], log=log)
    return data, {"num_samples": int(len(fake)), "reference": "mnist-test", "feature_net": "mnist-cnn"}


def _folder_data(params, outputs: Outputs, processed_dir: Path, rulers: Path,
                 log: Callable[[str], None], draw: int = 0) -> tuple[EvalData, dict]:
    """Folder data: the processed images split (seeded) into halves A and B; generated images
    and B against A; the shipped random conv net, and InceptionV3 when its weights are there.
    A conditional generator draws the classes of A's images, in order."""
    from src.dataset import ShardReader, class_names
    from src.metrics import inception

    ev = params.evaluate
    manifest, shards, shard_labels = _open_shards(processed_dir)
    value_range = tuple(float(v) for v in manifest.get("range", params.data.value_range))
    total = int(sum(len(s) for s in shards))
    if total < 8:
        raise UserError(f"{processed_dir}: only {total} images; evaluation needs at least 8")
    half = min(ev.num_samples, total // 2)
    order = np.random.default_rng(split_seed(ev, draw)).permutation(total)
    reader = ShardReader(shards, shard_labels)
    real_a = cls.to_unit_range(reader.gather(order[:half]), value_range)
    real_b = cls.to_unit_range(reader.gather(order[half:2 * half]), value_range)
    net = ruler.random_ruler(rulers)
    gen_path = _require_generator(outputs)
    generator = _load_generator(params, gen_path)
    gen_classes = _generator_classes(generator)
    labels, classes, request = None, [], None
    if gen_classes:  # conditional: half A's classes, in order; A's and B's labels
        if shard_labels is None:
            raise UserError(f"{gen_path}: the generator is conditional, but {processed_dir} has no labels "
                            "(data.labels none): run the train stage again")
        classes = class_names(manifest)
        labels = {"ref": reader.gather_labels(order[:half]), "_real": reader.gather_labels(order[half:2 * half])}
        labels[""] = labels["ref"].copy()
        request = _class_map("folder", gen_classes, classes, gen_path)[labels[""]]
    fake = generate_unit(params, generator, half, latent_seed(ev, draw), request)
    inception_net = inception.load_inception(ev.inception_weights)
    data = _folder_eval_data(ev, real_a, fake, real_b, net, inception_net, log, labels, classes)
    meta = {"feature_net": "random-conv" + ("+keras-inception-v3" if inception_net is not None else ""),
            "num_samples": int(half), "reference": "folder-half-a"}
    if inception_net is None:
        meta["note"] = ("fid/kid_keras_inception left out: evaluate.inception_weights is off"
                        if ev.inception_weights == "off" else
                        "fid/kid_keras_inception left out: InceptionV3 ImageNet weights could not be downloaded; "
                        "set evaluate.inception_weights to a local weights file")
    return data, meta


def _folder_eval_data(ev, reference, fake, real, net, inception_net, log, labels=None, classes=()) -> EvalData:
    sets = {"": np.asarray(fake, np.float32)}
    if real is not None:
        sets["_real"] = np.asarray(real, np.float32)
    net = net if net is not None else ruler.random_ruler()
    if labels is not None:
        labels = {k: np.asarray(v, np.int32) for k, v in labels.items() if k == "ref" or k in sets}
    return EvalData(ev, "folder", np.asarray(reference, np.float32), sets,
                    nets={"random": net, "inception": inception_net}, labels=labels, classes=list(classes), log=log)


def folder_metrics(ev, reference: np.ndarray, fake: np.ndarray, real: np.ndarray | None = None,
                   net=None, inception_net=None, log: Callable[[str], None] = _log,
                   labels: dict[str, np.ndarray] | None = None, classes=()) -> dict:
    """The folder metrics of generated images ``fake`` (and a real floor ``real``) against ``reference``.

    Images are float32 in [0, 1], (N, H, W, C). ``ev`` is an ``EvaluateParams`` (seed,
    bootstrap, KID and SWD settings). ``net``: the random conv ruler (default: the shipped
    one, :func:`src.metrics.ruler.random_ruler`); ``inception_net``: a Keras InceptionV3 or None to leave
    ``*_keras_inception`` out. Returns a flat dict: ``fd_random``, ``kd_random``,
    ``kd_random_std``, ``swd``, ``swd_level_<side>``, each with ``_ci95`` (and the same with
    ``_real`` when ``real`` is given). Callable from Python, e.g. by a benchmark.

    Per class: ``labels`` (``"ref"``, ``""`` and, with ``real``, ``"_real"`` -> the class
    index of each image) and ``classes`` (the names) add ``intra_swd``, ``intra_fd_random``
    and ``per_class``.
    """
    return run_metrics(_folder_eval_data(ev, reference, fake, real, net, inception_net, log, labels, classes))


def _own_keys(metrics: dict) -> dict:
    """The keys of ``metrics`` that measure the generated set itself: not the real-data floor
    (``*_real*``), the noise ceiling (``fid_noise``) or the per-class detail."""
    return {key: value for key, value in metrics.items()
            if "_real" not in key and "noise" not in key and not key.startswith("per_class")}


def score_generator(params, data: EvalData, path: Path, draw: int = 0) -> dict:
    """Every metric of ``data.kind`` for the generator at ``path`` (a ``.keras`` file or a
    training snapshot), measured as the final generator is: ``len(data.sets[""])`` images
    from the same latents (the same requested classes, for a conditional one) against the
    same reference, whose features are computed once. Returns :func:`_own_keys` (no floor).
    ``draw`` > 0 draws another set of latents (:func:`src.metrics.registry.latent_seed`).
    Public for benchmarks that score several snapshots on the full ruler."""
    generator = _load_generator(params, path)
    n = len(data.sets[""])
    images = generate_unit(params, generator, n, latent_seed(params.evaluate, draw), _requested(generator, data, n, path))
    labels = None if data.labels is None else {k: v for k, v in data.labels.items() if k in ("ref", "")}
    return _own_keys(run_metrics(_in_place_of_generated(data, images, labels)))


def _in_place_of_generated(data: EvalData, images: np.ndarray, labels: dict | None) -> EvalData:
    """``data`` with ``images`` (and their ``labels``) as its only, generated set; the
    reference's features, computed once, are kept."""
    shared = {key: value for key, value in data._cache.items() if key[1] not in data.sets}
    return dataclasses.replace(data, sets={"": images}, labels=labels, _cache=shared)


def score_floor(data: EvalData) -> dict:
    """The real floor of ``data`` (its ``"_real"`` set against the reference) under the
    generated set's own key names (``swd``, not ``swd_real``), as :func:`score_generator`
    returns them. Public for benchmarks that compare the two draw by draw."""
    labels = None if data.labels is None else {"ref": data.labels["ref"], "": data.labels["_real"]}
    return _own_keys(run_metrics(_in_place_of_generated(data, data.sets["_real"], labels)))


def _score_best(params, data: EvalData, measured: dict, metrics: dict, snapshots: Path, draw: int = 0) -> dict:
    """The ``best_*`` keys of ``metrics.json``, unprefixed: the best snapshot's
    :func:`score_generator` keys, or the final generator's own (``measured``) when the best
    snapshot is the final one (the train stage writes the last snapshot and
    ``generator.keras`` from the same weights)."""
    if metrics["best_epoch"] == metrics["final_epoch"]:
        return _own_keys(measured)
    path = dict(list_snapshots(snapshots)).get(metrics["best_epoch"])
    if path is None:
        raise UserError(f"{snapshots}: the snapshot of epoch {metrics['best_epoch']} is gone; rerun the evaluate stage")
    return score_generator(params, data, path, draw)


def _curve(params, data: EvalData, snapshots: Path, log: Callable[[str], None]) -> str:
    """Over training: the data kind's curve metric for every snapshot, with ``curve_samples`` images."""
    metric = curve_metric(data.kind)
    n = min(params.evaluate.curve_samples, len(data.reference))
    rows = []
    for epoch, path in list_snapshots(snapshots):
        generator = _load_generator(params, path)  # a conditional one draws the first n classes of the generated set
        images = generate_unit(params, generator, n, latent_seed(params.evaluate),
                                _requested(generator, data, n, path))
        rows.append((epoch, metric.curve(data, images)))
        log(f"evaluate: epoch {epoch} {metric.curve_column} {rows[-1][1]:.3f}")
        faults.point("curve")
    return f"epoch\t{metric.curve_column}\n" + "".join(f"{e}\t{_round(v)}\n" for e, v in rows)


def _over_draws(params, outputs: Outputs, processed_dir, rulers, kept: dict, measured: dict,
                best: dict | None) -> tuple[dict, dict | None]:
    """``(measured, best)`` as the mean over ``evaluate.draws`` draws (draw 0: the ones given;
    draw k: :func:`measured_data` with ``draw=k``), intervals from the draws
    (:func:`src.metrics.intervals.over_draws`)."""
    all_measured, all_best = [measured], [best]
    for draw in range(1, params.evaluate.draws):
        data, _ = measured_data(params, outputs.root, processed_dir, lambda message: None, rulers, draw)
        all_measured.append(run_metrics(data))
        if best is not None:
            all_best.append(_score_best(params, data, all_measured[-1], kept, outputs.snapshots, draw))
    return over_draws(all_measured), None if best is None else over_draws(all_best)


# ---------------------------------------------------------------- entry point
def measured_data(params, outputs_dir: str | Path = OUTPUTS, processed_dir: str | Path = PROCESSED,
                  log: Callable[[str], None] = _log, rulers: str | Path = ruler.RULERS,
                  draw: int = 0) -> tuple[EvalData, dict]:
    """``(data, meta)``: what the evaluate stage measures (the final generator's images, the
    reference and the floor, :func:`_mnist_data` or :func:`_folder_data`) and its
    descriptive ``metrics.json`` keys. ``draw`` > 0: another split of the real images and
    other latents (:func:`src.metrics.registry.split_seed`, :func:`~src.metrics.registry.latent_seed`).
    Public for benchmarks (:func:`score_generator`)."""
    outputs = Outputs(Path(outputs_dir))
    if params.data.image_size == 28 and params.data.channels == 1 and params.data.source == "mnist":
        return _mnist_data(params, outputs, Path(rulers), log, draw)
    return _folder_data(params, outputs, Path(processed_dir), Path(rulers), log, draw)


def evaluate(params, outputs_dir: str | Path = OUTPUTS, processed_dir: str | Path = PROCESSED,
             write: bool = True, log: Callable[[str], None] = _log, rulers: str | Path = ruler.RULERS) -> dict:
    """Compute the metrics; write ``metrics.json``, ``eval_curve.tsv`` and the best snapshot's
    generator (``generator_best.keras``) under ``outputs_dir``.

    Reads (under ``outputs_dir``, see :class:`src.paths.Outputs`) the generator, its
    snapshots and the train log's summary; the feature networks from ``rulers`` (checked
    against its ``SHA256SUMS``).

    With ``evaluate.score_best``, ``best_<key>`` holds the best snapshot's own metrics (each
    ``<key>`` of the final generator's but the real-data floor), measured as the final one's
    are (as many images, the same latents and reference: :func:`score_generator`).

    Returns the metrics dict: numbers, strings and ``{"lo", "hi"}`` intervals (floats
    rounded to 6 significant digits).
    """
    outputs = Outputs(Path(outputs_dir))
    draws = params.evaluate.draws
    data, meta = measured_data(params, outputs_dir, processed_dir, log, rulers)
    measured = run_metrics(data)
    curve = _curve(params, data, outputs.snapshots, log)
    kept = {**read_train_log(outputs.train_log_summary), **_keep_best(params, outputs, curve, write)}
    best = None
    if params.evaluate.score_best:
        t0 = time.perf_counter()
        best = _score_best(params, data, measured, kept, outputs.snapshots)
        log(f"evaluate: the best snapshot (epoch {kept['best_epoch']}) on every metric in "
            f"{time.perf_counter() - t0:.1f}s")
    if draws > 1:  # the same measurement on draws - 1 more splits and latents, then the mean
        t0 = time.perf_counter()
        measured, best = _over_draws(params, outputs, processed_dir, rulers, kept, measured, best)
        meta["draws"] = draws
        log(f"evaluate: {draws - 1} more draws (splits and latents) in {time.perf_counter() - t0:.1f}s")
    metrics = {**measured, **meta, **kept}
    if best is not None:
        metrics.update({f"best_{key}": value for key, value in best.items()})
    metrics = {k: _rounded(v) for k, v in metrics.items()}
    if write:
        write_json(outputs.metrics, metrics)
        write_text(outputs.eval_curve, curve)
    return metrics
