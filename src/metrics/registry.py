"""The metrics of the evaluate stage, one registry entry each: ``@register_metric``.

A metric is a function of one :class:`EvalData` (the reference images, the image sets to
score against it, the feature networks and the evaluate params) that returns flat
``metrics.json`` keys, ``<key>_ci95`` intervals included. ``data`` says for which data
kinds it runs (``mnist``: 28x28 digits with the shipped digit CNN; ``folder``: your
images with the shipped random conv net; both from ``data/rulers``, :mod:`src.metrics.ruler`). A metric may also give the over-training curve: a
function of one snapshot's images returning one number, written to ``eval_curve.tsv``
under the metric's ``curve_column``; each data kind has exactly one.

To add a metric, write a function here (or in a module of ``src/metrics/`` it imports)
and decorate it; :func:`src.evaluate.evaluate` runs every metric registered for the
data kind, in registration order.

Every random draw comes from ``evaluate.seed`` through :func:`stream_seed`, one stream per
purpose, so a metric's numbers do not depend on which other metrics ran.

Per-class metrics (a conditional generator: ``EvalData.labels`` set) run only when the
labels are there and return nothing otherwise, so an unconditional run's keys stay as they
were. Their per-class values go under one nested key, ``per_class`` (``{class name:
{key: value}}``, filled by several metrics: :func:`run_metrics` merges it), and their means
over the classes are flat keys (``intra_*``, ``cond_accuracy``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from src.metrics import classifier as cls
from src.metrics import intervals
from src.metrics import swd as swd_mod
from src.metrics.frechet import feature_stats, frechet_distance
from src.metrics.kid import kernel_inception_distance, kid_fold_values

# The random streams of evaluate, each seeded from evaluate.seed alone.
GEN, KID, SWD, NOISE, SPLIT, BOOT, FOLDS = 0, 1, 2, 3, 4, 5, 6
CLASS_BOOT = 7      # the per-class bootstraps: class c's seed is [stream_seed(ev, CLASS_BOOT), c]
MIN_CLASS = 2       # images of a class each set needs for its per-class metrics (a covariance needs 2)


def stream_seed(ev, stream: int) -> int:
    """The seed of one random stream of evaluate, from ``evaluate.seed`` alone."""
    return int(ev.seed) * 16 + 1000 + stream


def latent_seed(ev, draw: int = 0) -> int:
    """The seed of the generated images' latents: draw 0 is what ``metrics.json`` measures
    (the ``GEN`` stream); draws 1, 2, ... are further independent sets of latents, for
    benchmarks that measure how much a figure moves with the draw alone."""
    return stream_seed(ev, GEN) + 1_000_000 * int(draw)


def split_seed(ev, draw: int = 0) -> int:
    """The seed of the real images' split (a folder's halves, MNIST's shuffled test digits):
    draw 0 is ``metrics.json``'s (the ``SPLIT`` stream), draws 1, 2, ... other splits."""
    return stream_seed(ev, SPLIT) + 1_000_000 * int(draw)


@dataclass
class EvalData:
    """What the metrics measure: ``sets`` (key suffix -> images: ``""`` the generated
    images, ``"_real"`` the real-data floor) against ``reference``, all float32 in [0, 1].

    ``nets`` holds the feature networks by name (``classifier``, ``random``,
    ``inception``; absent: not available); ``extra`` other image sets a metric may use
    (``noise``); ``labels`` the class labels of each set (None: unconditional data or
    generator): ``"ref"`` and every key of ``sets`` -> int32 (N,), indices into ``classes``
    (the class names; image k of the generated set was asked for class ``labels[""][k]``).
    Features are computed once per network and set, on first use.
    """
    ev: Any                                 # EvaluateParams
    kind: str                               # "mnist" or "folder"
    reference: np.ndarray
    sets: dict[str, np.ndarray]
    nets: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] | None = None
    classes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print
    _cache: dict = field(default_factory=dict, repr=False)

    def images(self, which: str) -> np.ndarray:
        """``"ref"``, a key of ``sets`` or of ``extra``."""
        return self.reference if which == "ref" else self.sets[which] if which in self.sets else self.extra[which]

    def outputs(self, net: str, which: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(features, class probabilities or None)`` of network ``net`` on image set ``which``."""
        if (net, which) not in self._cache:
            model, images = self.nets[net], self.images(which)
            if net == "classifier":  # the rulers (src.metrics.ruler): NumPy forward passes
                result = model.features_and_probs(images, self.ev.batch_size)
            elif net == "random":
                result = (model.features(images), None)
            else:
                from src.metrics import inception
                result = (inception.inception_features(model, images), None)
            self._cache[net, which] = result
        return self._cache[net, which]

    def features(self, net: str, which: str) -> np.ndarray:
        return self.outputs(net, which)[0]


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[[EvalData], dict]
    data: tuple[str, ...]                   # the data kinds it runs for
    curve: Callable[[EvalData, np.ndarray], float] | None = None
    curve_data: tuple[str, ...] = ()        # the data kinds whose over-training curve it gives
    curve_column: str = ""


METRICS: dict[str, Metric] = {}


def register_metric(name: str, data: tuple[str, ...], curve: Callable[[EvalData, np.ndarray], float] | None = None,
                    curve_data: tuple[str, ...] = (), curve_column: str = ""):
    """Decorator: add ``compute(data) -> dict`` to :data:`METRICS` as ``name``."""
    def add(compute):
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = Metric(name, compute, tuple(data), curve, tuple(curve_data), curve_column or name)
        return compute
    return add


def _merge(out: dict, values: dict) -> None:
    """``out.update(values)``, but a dict already in ``out`` (``per_class``) is merged into, key by key."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            _merge(out[key], value)
        else:
            out[key] = value


def run_metrics(data: EvalData) -> dict:
    """Every registered metric for ``data.kind``, in registration order, in one flat dict
    (flat but for ``per_class``, which several metrics fill)."""
    out: dict = {}
    for metric in METRICS.values():
        if data.kind in metric.data:
            t0 = time.perf_counter()
            values = metric.compute(data)
            if values:
                data.log(f"evaluate: {metric.name} in {time.perf_counter() - t0:.1f}s")
            _merge(out, values)
    return out


def curve_metric(kind: str) -> Metric:
    """The metric that gives ``kind``'s over-training curve."""
    return next(m for m in METRICS.values() if kind in m.curve_data)


# ---------------------------------------------------------------- shared pieces
def _swd_keys(prefix: str, result: dict) -> dict:
    out = {prefix: result["mean"]}
    for size, value in result["levels"].items():
        out[f"{prefix}_level_{size}"] = value
    return out


def swd_with_intervals(ev, reference: np.ndarray, others: dict[str, np.ndarray]) -> dict:
    """``swd<suffix>``, its per-level values and ``swd<suffix>_ci95`` for each of ``others``
    (suffix -> images), against ``reference``: the full-sample SWD, and the interval from
    the SWD of disjoint folds (same patch and projection seeds)."""
    names = list(others)
    full = swd_mod.swd(reference, [others[k] for k in names], ev.swd_patches_per_image, ev.swd_projections,
                       stream_seed(ev, SWD))
    ref_folds = intervals.fold_indices(len(reference), stream_seed(ev, FOLDS))
    folds = {k: intervals.fold_indices(len(others[k]), stream_seed(ev, FOLDS) + 1, len(ref_folds)) for k in names}
    count = min([len(ref_folds)] + [len(f) for f in folds.values()])
    per_fold = {k: [] for k in names}
    for i in range(count):
        sets = [others[k][np.sort(folds[k][i])] for k in names]
        results = swd_mod.swd(reference[np.sort(ref_folds[i])], sets, ev.swd_patches_per_image, ev.swd_projections,
                              stream_seed(ev, SWD))
        for k, res in zip(names, results):
            per_fold[k].append(res["mean"])
    m: dict = {}
    for k, res in zip(names, full):
        m.update(_swd_keys("swd" + k, res))
        m[f"swd{k}_ci95"] = intervals.fold_interval(res["mean"], per_fold[k])
    return m


def distances(ev, ref_feats: np.ndarray, feats: dict[str, np.ndarray], fd_key: str, kd_key: str) -> dict:
    """Frechet distance and KID (with spread and 95% intervals) of each feature set in ``feats``
    (suffix -> features) against ``ref_feats``; keys ``fd_key + suffix`` and ``kd_key + suffix``."""
    m: dict = {}
    ref_stats = feature_stats(ref_feats)
    names = list(feats)
    for k in names:
        m[fd_key + k] = frechet_distance(*feature_stats(feats[k]), *ref_stats)
    cis = intervals.frechet_intervals(ref_feats, [feats[k] for k in names], [m[fd_key + k] for k in names],
                                      ev.bootstrap, stream_seed(ev, BOOT))
    ref_folds = intervals.fold_indices(len(ref_feats), stream_seed(ev, FOLDS))
    for k, ci in zip(names, cis):
        m[f"{fd_key}{k}_ci95"] = ci
        kid, spread = kernel_inception_distance(feats[k], ref_feats, ev.kid_subsets, ev.kid_subset_size,
                                                stream_seed(ev, KID))
        folds = intervals.fold_indices(len(feats[k]), stream_seed(ev, FOLDS) + 1, len(ref_folds))
        n = min(len(folds), len(ref_folds))
        values = kid_fold_values(feats[k], ref_feats, folds[:n], ref_folds[:n])
        m[kd_key + k], m[f"{kd_key}{k}_std"] = kid, spread
        m[f"{kd_key}{k}_ci95"] = intervals.fold_interval(kid, values, lower=None)
    return m


def _count_key(which: str) -> str:
    return "count_ref" if which == "ref" else "count" + which


def class_subsets(data: EvalData) -> tuple[list[tuple[int, str, dict[str, np.ndarray]]], dict]:
    """The classes measured one by one, and what ``metrics.json`` says of every class.

    Returns ``(measured, keys)``: ``measured`` lists ``(index, name, {"ref" or set key: row
    indices})`` for each class with at least :data:`MIN_CLASS` images in the reference and
    in every set; ``keys`` is ``{"per_class": {name: {"count", "count_ref", "count_real"}}}``
    for every class, plus ``per_class_note`` naming the classes left out (too few images
    for a covariance: their entries hold counts only, and the means leave them out).
    """
    which = ["ref", *data.sets]
    measured, skipped, entries = [], [], {}
    for c, name in enumerate(data.classes):
        rows = {w: np.flatnonzero(data.labels[w] == c) for w in which}
        entries[name] = {_count_key(w): int(len(rows[w])) for w in which}
        if min(len(r) for r in rows.values()) >= MIN_CLASS:
            measured.append((c, name, rows))
        else:
            counts = ", ".join(f"{len(rows[w])} {_SET_NAMES.get(w, w.lstrip('_'))}" for w in which)
            skipped.append(f"'{name}' ({counts})")
    keys: dict = {"per_class": entries}
    if skipped:
        keys["per_class_note"] = (f"class{'es' if len(skipped) > 1 else ''} {', '.join(skipped)} left out of the "
                                  f"per-class metrics and their means: fewer than {MIN_CLASS} images in a set")
    return measured, keys


_SET_NAMES = {"ref": "reference", "": "generated"}


def per_class_frechet(data: EvalData, net: str, key: str) -> dict:
    """Per class c: the Frechet distance on ``net``'s features of each set's class-c images to
    the reference's class-c images (``per_class.<name>.<key><suffix>``, bootstrap interval
    seeded by class), and the mean over the measured classes (``intra_<key><suffix>``, with
    :func:`src.metrics.intervals.mean_interval`)."""
    ev = data.ev
    measured, m = class_subsets(data)
    names = list(data.sets)
    ref = data.features(net, "ref")
    feats = {k: data.features(net, k) for k in names}
    values: dict[str, list] = {k: [] for k in names}
    cis: dict[str, list] = {k: [] for k in names}
    for c, name, rows in measured:
        ref_c = ref[rows["ref"]]
        sets_c = [feats[k][rows[k]] for k in names]
        ests = [frechet_distance(*feature_stats(x), *feature_stats(ref_c)) for x in sets_c]
        intervals_c = intervals.frechet_intervals(ref_c, sets_c, ests, ev.bootstrap, [stream_seed(ev, CLASS_BOOT), c])
        entry = m["per_class"][name]
        for k, est, ci in zip(names, ests, intervals_c):
            entry[key + k], entry[f"{key}{k}_ci95"] = est, ci
            values[k].append(est)
            cis[k].append(ci)
    return {**m, **_means(f"intra_{key}", values, cis)}


def _means(prefix: str, values: dict[str, list], cis: dict[str, list]) -> dict:
    out: dict = {}
    for k in values:
        if values[k]:
            out[prefix + k] = float(np.mean(values[k]))
            out[f"{prefix}{k}_ci95"] = intervals.mean_interval(values[k], cis[k])
    return out


def _share_interval(hits: np.ndarray, ev, seed) -> dict:
    """Bootstrap 95% interval of the share of ``hits`` (0/1), within [0, 1]."""
    ci = intervals.bootstrap_interval(hits, np.mean, float(hits.mean()), ev.bootstrap, seed, lower=0.0)
    return {"lo": ci["lo"], "hi": min(ci["hi"], 1.0)}


def _curve_samples(data: EvalData) -> int:
    return min(data.ev.curve_samples, len(data.reference))


# ---------------------------------------------------------------- the metrics
def _fid_curve(data: EvalData, images: np.ndarray) -> float:
    ref = data.features("classifier", "ref")[:_curve_samples(data)]
    features, _ = data.nets["classifier"].features_and_probs(images, data.ev.batch_size)
    return frechet_distance(*feature_stats(features), *feature_stats(ref))


@register_metric("fid", data=("mnist",), curve=_fid_curve, curve_data=("mnist",))
def fid_kid(data: EvalData) -> dict:
    """FID and KID on the digit classifier's features (``fid``, ``kid``, ``kid_std``, with ``_real``)."""
    feats = {k: data.features("classifier", k) for k in data.sets}
    return distances(data.ev, data.features("classifier", "ref"), feats, "fid", "kid")


@register_metric("classifier_score", data=("mnist",))
def classifier_score(data: EvalData) -> dict:
    """The Inception-score analogue with the digit classifier, and its interval."""
    ev, m = data.ev, {}
    for suffix in data.sets:
        probs = data.outputs("classifier", suffix)[1]
        score = cls.classifier_score(probs)
        m["classifier_score" + suffix] = score
        m[f"classifier_score{suffix}_ci95"] = intervals.bootstrap_interval(
            probs, cls.classifier_score, score, ev.bootstrap, stream_seed(ev, BOOT), lower=1.0)
    return m


@register_metric("coverage", data=("mnist",))
def coverage(data: EvalData) -> dict:
    """How many classes get ``coverage_threshold`` of the images, and the class histogram's KL from uniform."""
    ev, m = data.ev, {}
    for suffix in data.sets:
        probs = data.outputs("classifier", suffix)[1]
        covered, class_kl = cls.class_coverage(probs, ev.coverage_threshold)
        m["coverage" + suffix], m["class_kl" + suffix] = covered, class_kl
        m[f"class_kl{suffix}_ci95"] = intervals.bootstrap_interval(
            probs, lambda p: cls.class_coverage(p, ev.coverage_threshold)[1], class_kl, ev.bootstrap,
            stream_seed(ev, BOOT), lower=0.0)
    return m


@register_metric("fid_noise", data=("mnist",))
def fid_noise(data: EvalData) -> dict:
    """The FID of uniform noise: the ceiling."""
    noise, ref = data.features("classifier", "noise"), data.features("classifier", "ref")
    return {"fid_noise": frechet_distance(*feature_stats(noise), *feature_stats(ref))}


def _swd_curve(data: EvalData, images: np.ndarray) -> float:
    ev = data.ev
    (result,) = swd_mod.swd(data.reference[:_curve_samples(data)], [images], ev.swd_patches_per_image,
                            ev.swd_projections, stream_seed(ev, SWD))
    return result["mean"]


@register_metric("swd", data=("mnist", "folder"), curve=_swd_curve, curve_data=("folder",))
def swd(data: EvalData) -> dict:
    """Sliced Wasserstein distance of Laplacian-pyramid patches, per level, with intervals."""
    return swd_with_intervals(data.ev, data.reference, data.sets)


@register_metric("fd_random", data=("folder",))
def fd_random(data: EvalData) -> dict:
    """Frechet and kernel distances on the shipped random conv net's features."""
    feats = {k: data.features("random", k) for k in data.sets}
    return distances(data.ev, data.features("random", "ref"), feats, "fd_random", "kd_random")


@register_metric("fid_keras_inception", data=("folder",))
def fid_keras_inception(data: EvalData) -> dict:
    """FID/KID on Keras's InceptionV3, when its weights are available (else nothing)."""
    if data.nets.get("inception") is None:
        return {}
    feats = {k: data.features("inception", k) for k in data.sets}
    return distances(data.ev, data.features("inception", "ref"), feats, "fid_keras_inception", "kid_keras_inception")


# ---------------------------------------------------------------- per class (a conditional generator)
@register_metric("cond_accuracy", data=("mnist",))
def cond_accuracy(data: EvalData) -> dict:
    """The share of images the digit classifier puts in the class they were asked for
    (``cond_accuracy``; ``_real``: its accuracy on the real training digits), with a bootstrap
    interval, overall and per class."""
    if data.labels is None:
        return {}
    ev, m = data.ev, {}
    measured, keys = class_subsets(data)
    for suffix in data.sets:
        probs = data.outputs("classifier", suffix)[1]
        hits = (np.argmax(probs, axis=1) == data.labels[suffix]).astype(np.float64)
        m["cond_accuracy" + suffix] = float(hits.mean())
        m[f"cond_accuracy{suffix}_ci95"] = _share_interval(hits, ev, stream_seed(ev, BOOT))
        for c, name, rows in measured:
            entry = keys["per_class"][name]
            entry["cond_accuracy" + suffix] = float(hits[rows[suffix]].mean())
            entry[f"cond_accuracy{suffix}_ci95"] = _share_interval(hits[rows[suffix]], ev,
                                                                   [stream_seed(ev, CLASS_BOOT), c])
    return {**keys, **m}


@register_metric("intra_fid", data=("mnist",))
def intra_fid(data: EvalData) -> dict:
    """FID per class on the digit classifier's features (generated digits of class c against
    the test digits of class c), and their mean ``intra_fid`` (``_real``: training digits)."""
    return {} if data.labels is None else per_class_frechet(data, "classifier", "fid")


@register_metric("intra_swd", data=("folder",))
def intra_swd(data: EvalData) -> dict:
    """SWD per class (each set's class-c images against half A's, settings and intervals as
    ``swd``), and their mean ``intra_swd``."""
    if data.labels is None:
        return {}
    measured, m = class_subsets(data)
    names = list(data.sets)
    values: dict[str, list] = {k: [] for k in names}
    cis: dict[str, list] = {k: [] for k in names}
    for _, name, rows in measured:
        result = swd_with_intervals(data.ev, data.reference[rows["ref"]], {k: data.sets[k][rows[k]] for k in names})
        entry = m["per_class"][name]
        for k in names:
            entry["swd" + k], entry[f"swd{k}_ci95"] = result["swd" + k], result[f"swd{k}_ci95"]
            values[k].append(result["swd" + k])
            cis[k].append(result[f"swd{k}_ci95"])
    return {**m, **_means("intra_swd", values, cis)}


@register_metric("intra_fd_random", data=("folder",))
def intra_fd_random(data: EvalData) -> dict:
    """Frechet distance per class on the random conv net's features (as ``fd_random``), and
    their mean ``intra_fd_random``."""
    return {} if data.labels is None else per_class_frechet(data, "random", "fd_random")
