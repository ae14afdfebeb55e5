"""Full-state checkpoints: one deterministic ``.npz`` per save, written atomically.

A checkpoint holds every variable of the generator, the discriminator, the EMA
generator weights and both optimizers, plus a JSON ``meta`` record: the epoch, the step
within it and overall, the running loss sums of the epoch, and the training
configuration it was made with (``fingerprint``). Random state needs no extra array:
latent noise is drawn from ``(seed, step)`` and the data order from ``(seed, epoch)``,
and the dropout seed state is a variable of the discriminator.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from src.atomic import load_arrays, save_arrays

_NAME = re.compile(r"^ckpt_e(\d{6})_s(\d{9})\.npz$")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt_e{epoch:06d}_s{step:09d}.npz"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first (temporary files are never matched)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: tuple(int(g) for g in _NAME.match(p.name).groups()))


def save(folder: Path, arrays: dict[str, np.ndarray], meta: dict, keep: int) -> Path:
    """Write a checkpoint, then drop all but the newest ``keep`` ones.

    The new file is complete (renamed into place) before any old one is removed, so a
    kill at any point leaves at least one usable checkpoint.
    """
    path = folder / checkpoint_name(meta["epoch"], meta["step"])
    record = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
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
        epoch, step = (int(g) for g in _NAME.match(path.name).groups())
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
