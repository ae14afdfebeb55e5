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


def stream_seed(ev, stream: int) -> int:
    """The seed of one random stream of evaluate, from ``evaluate.seed`` alone."""
    return int(ev.seed) * 16 + 1000 + stream


@dataclass
class EvalData:
    """What the metrics measure: ``sets`` (key suffix -> images: ``""`` the generated
    images, ``"_real"`` the real-data floor) against ``reference``, all float32 in [0, 1].

    ``nets`` holds the feature networks by name (``classifier``, ``random``,
    ``inception``; absent: not available); ``extra`` other image sets a metric may use
    (``noise``); ``labels`` the class labels of each set (None: unconditional data).
    Features are computed once per network and set, on first use.
    """
    ev: Any                                 # EvaluateParams
    kind: str                               # "mnist" or "folder"
    reference: np.ndarray
    sets: dict[str, np.ndarray]
    nets: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] | None = None
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


def run_metrics(data: EvalData) -> dict:
    """Every registered metric for ``data.kind``, in registration order, in one flat dict."""
    out: dict = {}
    for metric in METRICS.values():
        if data.kind in metric.data:
            t0 = time.perf_counter()
            values = metric.compute(data)
            if values:
                data.log(f"evaluate: {metric.name} in {time.perf_counter() - t0:.1f}s")
            out.update(values)
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
