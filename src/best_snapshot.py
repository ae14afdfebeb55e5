"""Keep the best snapshot: the over-training curve's lowest score, exported as a second generator.

The evaluate stage scores every snapshot in ``outputs/snapshots`` on the over-training curve
(``outputs/eval_curve.tsv``: FID for MNIST, SWD for folder data; lower is better). The final
epoch is not always the best one (GAN training wanders, and on small folders it can get
worse late), so :func:`keep_best` picks the lowest-scoring snapshot, writes its generator as
``outputs/generator_best.keras`` (same weights -> same bytes, :mod:`src.keras_file`) and
returns flat keys for ``metrics.json``: ``curve_metric``, ``best_epoch``,
``best_curve_score``, ``final_epoch`` and ``final_curve_score``.

Ties go to the later epoch: the final snapshot stays the best unless an earlier one scores
strictly lower. Single snapshots are noisy (``curve_samples`` images each), so the best
epoch's score is an optimistic estimate of its quality: ``metrics.json``'s full-sample
metrics are the final generator's.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from src.errors import UserError
from src.snapshots import PATTERN, list_snapshots

_COUNTER = re.compile(r"_\d+$")


def parse_curve(text: str, source: str = "eval_curve.tsv") -> tuple[str, list[tuple[int, float]]]:
    """``(metric, [(epoch, score), ...])`` of a curve ``epoch\\t<metric>`` (one header line)."""
    lines = text.splitlines()
    header = lines[0].split("\t") if lines else []
    if len(header) != 2 or header[0] != "epoch":
        raise UserError(f"{source}: expected a header 'epoch<TAB><metric>', got {lines[:1]}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        try:
            epoch, score = int(fields[0]), float(fields[1])
        except (ValueError, IndexError):
            raise UserError(f"{source}: line {number} is not 'epoch<TAB>score': {line!r}") from None
        if not math.isfinite(score):
            raise UserError(f"{source}: line {number}: score {fields[1]!r} is not a finite number")
        rows.append((epoch, score))
    return header[1], rows


def choose(rows: list[tuple[int, float]]) -> tuple[int, float]:
    """The ``(epoch, score)`` with the lowest score; on a tie the later epoch."""
    return min(rows, key=lambda row: (row[1], -row[0]))


def summary(metric: str, rows: list[tuple[int, float]]) -> dict:
    """The flat ``metrics.json`` keys: the best epoch and its score beside the final one's."""
    best_epoch, best_score = choose(rows)
    final_epoch, final_score = max(rows)
    return {"curve_metric": metric, "best_epoch": best_epoch, "best_curve_score": best_score,
            "final_epoch": final_epoch, "final_curve_score": final_score}


def canonical_names(model):
    """A copy of the Keras ``model`` whose automatic layer names (``dense_7``) are renumbered
    from 0 in layer order (``dense``, ``dense_1``): the names, and so the file's bytes,
    depend on the model, not on how many layers the process built before."""
    import keras

    seen: dict[str, int] = {}

    def rename(layer):
        base = _COUNTER.sub("", layer.name)
        rank = seen.get(base, 0)
        seen[base] = rank + 1
        config = {**layer.get_config(), "name": base if rank == 0 else f"{base}_{rank}"}
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rename)
    copy.set_weights(model.get_weights())
    return copy


def export_generator(params, snapshot: Path, path: Path) -> None:
    """Write the generator of ``snapshot`` (a ``.npz`` of training) to ``path`` as ``.keras``."""
    from src.keras_file import save_model
    from src.networks import load_generator

    save_model(canonical_names(load_generator(params, snapshot)), path)


def keep_best(params, curve_text: str, snapshots: Path, best_path: Path, write: bool = True) -> dict:
    """Choose the best epoch of ``curve_text`` (evaluate's ``eval_curve.tsv``), export that
    snapshot from the folder ``snapshots`` to ``best_path`` (when ``write``), and return the
    :func:`summary` keys. A curve without rows, or a best epoch without its snapshot file,
    is a UserError naming the folder."""
    metric, rows = parse_curve(curve_text)
    if not rows:
        raise UserError(f"{snapshots}: no generator snapshots ({PATTERN}) to choose the best one from "
                        "(run the train stage first)")
    keys = summary(metric, rows)
    if write:
        files = dict(list_snapshots(snapshots))
        best = files.get(keys["best_epoch"])
        if best is None:
            raise UserError(f"{snapshots}: the snapshot of epoch {keys['best_epoch']} is gone "
                            f"({PATTERN}); rerun the evaluate stage")
        export_generator(params, best, best_path)
    return keys
