"""Full-state checkpoints: one deterministic ``.npz`` per save, written atomically.

A checkpoint holds every variable of the generator, the discriminator, the EMA
generator weights and both optimizers, plus a JSON ``meta`` record: the epoch, the step
within it and overall, the running loss sums of the epoch, the augmentation probability
and the training configuration it was made with (``fingerprint``). Random state needs no
extra array: latent noise is drawn from ``(seed, step)`` and the data order from
``(seed, epoch)``, and the dropout seed state is a variable of the discriminator.

Each array is keyed by its variable's path, never by its position:

- ``<network>/<layer>/<variable>``, e.g. ``generator/dense/kernel``: ``<layer>`` is the
  layer's name as a fresh process names it (Keras numbers layers process-wide, ``dense_7``
  after six other Dense layers; here the number is the layer's rank among the network's
  layers of that name), so keys do not depend on what else the process built;
- ``ema/<generator key>``: the moving average of that generator weight;
- ``<optimizer>/<slot>/<variable key>``, e.g. ``g_opt/momentum/generator/dense/kernel``:
  an optimizer slot and the variable it belongs to; ``<optimizer>/<name>`` for the
  optimizer's own variables (``iteration``, ``learning_rate``) and
  ``<optimizer>/loss_scale/<name>`` for those of a loss-scale wrapper.

So two variables of the same shape (Adam's momentum and velocity of one weight) can never
load into each other's place. The network keys and loading (:func:`~src.weights.assign`)
live in :mod:`src.weights`, which generator files share without this module; loading fails with one line naming the file
and the first key that is missing or unexpected; a checkpoint of the earlier positional
format (``g.000``, ``gopt.003``) is named as such.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from src.atomic import load_arrays, save_arrays, sha256_file
from src.config import Params, to_dict
from src.weights import add_key

_NAME = re.compile(r"^ckpt_e(\d{6})_s(\d{9})\.npz$")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt_e{epoch:06d}_s{step:09d}.npz"


def epoch_and_step(path: Path) -> tuple[int, int]:
    """The epoch and global step in a checkpoint file's name (:func:`checkpoint_name`)."""
    epoch, step = _NAME.match(path.name).groups()
    return int(epoch), int(step)


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first (temporary files are never matched).

    A folder that is missing, or removed while being read (a multi-worker chief clearing
    the shared folder for a fresh start as another worker looks in), holds none.
    """
    try:
        found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found, key=epoch_and_step)


def save(folder: Path, variables: Mapping[str, Any], meta: dict, keep: int) -> Path:
    """Write a checkpoint of ``variables`` (key -> variable), then drop all but the newest ``keep`` ones.

    The new file is complete (renamed into place) before any old one is removed, so a
    kill at any point leaves at least one usable checkpoint.
    """
    path = folder / checkpoint_name(meta["epoch"], meta["step"])
    record = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    arrays = {key: np.asarray(var.numpy()) for key, var in variables.items()}
    save_arrays(path, {**arrays, "meta": record})
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(folder: Path, max_epoch: int | None = None) -> tuple[dict[str, np.ndarray], dict, Path] | None:
    """The newest checkpoint that reads back whole (and ends by ``max_epoch``), or ``None``.

    A damaged file (for example from a disk that filled up) is reported and skipped, so
    training resumes from the one before it. ``max_epoch`` skips checkpoints past it, so
    lowering ``train.epochs`` reuses an earlier checkpoint instead of starting over.
    """
    for path in reversed(list_checkpoints(folder)):
        epoch, _ = epoch_and_step(path)
        if max_epoch is not None and epoch > max_epoch:
            continue
        try:
            arrays = load_arrays(path)
            meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        except Exception as exc:  # zipfile, numpy and json errors all mean "unusable"
            print(f"train: skipping unreadable checkpoint {path} ({type(exc).__name__})", file=sys.stderr)
            continue
        return arrays, meta, path
    return None


# ---------------------------------------------------------------------------- keys
def optimizer_variables(optimizer, name: str, owners: Mapping[str, Any]) -> dict[str, Any]:
    """``name/<slot>/<owner key>`` or ``name/<variable>`` -> variable, for every variable of
    ``optimizer``; ``owners`` (key -> variable) are the variables it was built to train.

    Keras names a slot ``<owner path with _ for />_<slot>`` (``dense_kernel_momentum``);
    the longest owner prefix decides, and a wrapper's own variables (a LossScaleOptimizer's
    ``dynamic_scale``) go under ``name/loss_scale/``.
    """
    keyed = {}
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        inner_ids = {id(v) for v in inner.variables}
        for var in optimizer.variables:
            if id(var) not in inner_ids:
                add_key(keyed, f"{name}/loss_scale/{var.name}", var)
        optimizer = inner
    prefixes = sorted(((var.path.replace("/", "_") + "_", key) for key, var in owners.items()),
                      key=lambda item: -len(item[0]))
    for var in optimizer.variables:
        owner = next(((prefix, key) for prefix, key in prefixes if var.name.startswith(prefix)), None)
        if owner is None:
            add_key(keyed, f"{name}/{var.name}", var)
        else:
            prefix, key = owner
            add_key(keyed, f"{name}/{var.name[len(prefix):]}/{key}", var)
    return keyed


# ---------------------------------------------------------------------------- resume
def fingerprint(params: Params, manifest: dict) -> dict:
    """Everything that shapes the training trajectory; a change means a fresh start.

    ``train.epochs`` is left out on purpose: raising it continues a finished run, which
    gives the same weights as one run to the new count. Not with ``train.lr_rampdown``:
    the rates then follow the run's length, so another length is another run. How often
    checkpoints are kept and the sample schedule do not change the weights either, nor
    does how the C library hands memory back (``train.malloc_top_pad_mb``).
    """
    train = {k: v for k, v in to_dict(params.train).items()
             if k not in ("epochs", "checkpoint_every", "keep_checkpoints", "worker_timeout", "tensorboard",
                           "malloc_top_pad_mb")}
    if params.train.lr_rampdown > 0:
        train["epochs"] = params.train.epochs
    shards = [s["sha256"] for s in manifest["shards"]]
    data = {k: v for k, v in to_dict(params.data).items() if k in ("image_size", "channels", "range")}
    model = to_dict(params.model)
    weights_file = params.model.features.weights
    if params.model.features.backbone != "none" and weights_file and os.path.isfile(weights_file):
        model["features"]["weights_sha256"] = sha256_file(weights_file)  # another file at the same path: a fresh start
    classes = manifest.get("classes")
    if not classes:  # 0 classes: the fingerprint of a run from before labels existed
        model.pop("class_embedding")
        return {"common": to_dict(params.common), "data": data, "model": model, "train": train, "shards": shards}
    labels = [s["labels_sha256"] for s in manifest["shards"]]
    return {"common": to_dict(params.common), "data": data, "model": model, "train": train, "shards": shards,
            "classes": list(classes), "labels": labels}


_NOT_THERE = object()


def _changed_keys(old: dict, new: dict, defaults: Any = _NOT_THERE, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between fingerprints ``old`` and ``new``.

    A key that ``old`` lacks, while ``new`` holds it at its default (``defaults``: the
    fingerprint of the params' defaults), is no change: the checkpoint was made before that
    key existed, when the code behaved as its default does (every key added is added so).
    """
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _NOT_THERE), new.get(key, _NOT_THERE)
        default = defaults.get(key, _NOT_THERE) if isinstance(defaults, dict) else _NOT_THERE
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, default, name + ".")
        elif a is _NOT_THERE and default is not _NOT_THERE and b == default:
            continue
        elif a != b:
            keys.append("data shards" if name == "shards" else name)
    return keys


def _default_fingerprint() -> dict:
    """The fingerprint of the params' defaults: what each key meant before it existed."""
    return fingerprint(Params(), {"shards": []})


def resume_point(folder: Path, made_with: dict, epochs: int,
                 say: Callable[[str], None] = print) -> tuple[dict[str, np.ndarray], dict, Path] | None:
    """The checkpoint a run with fingerprint ``made_with`` and ``epochs`` epochs resumes
    from: the newest readable one in ``folder`` as ``(arrays, meta, path)``, or None for a
    fresh start.

    One made with another fingerprint (params or data that shape the weights) or past
    ``epochs`` means a fresh start, and ``say`` tells which key changed.
    """
    found = load_latest(folder, max_epoch=epochs)
    if found is None:
        return None
    arrays, meta, path = found
    changed = _changed_keys(meta["fingerprint"], made_with, _default_fingerprint())
    if changed:
        say(f"train: params changed since {path} ({', '.join(changed[:6])}); starting fresh")
        return None
    if meta["epoch"] == epochs and meta["step_in_epoch"]:
        say(f"train: {path} is past train.epochs={epochs}; starting fresh")
        return None
    return found
