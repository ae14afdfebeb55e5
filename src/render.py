"""The sample stage's library: render generator snapshots as PNGs, grids and a progress picture.

For every snapshot ``generator_epoch_XXXX.npz`` the same fixed latent batch (drawn from
``common.seed``) is pushed through that snapshot's generator, so image ``Y`` of every
epoch shows the same latent point and one digit can be followed across training:

- ``generated_image_epoch_XXXX_Y.png``: each image (``Y`` = 0 .. sample.count - 1), at the
  true resolution
- ``grid_epoch_XXXX.png``: all of them, ``sample.grid_columns`` per row
- ``progress.png``: one row per snapshot (epoch order), the first ``sample.progress_columns``
  latent points; ``progress.gif``: the grids as an animation

A conditional generator (labelled data) draws one row per class instead:
``sample.grid_columns`` images of class ``c`` in row ``c`` (``Y = c * grid_columns + k``;
``sample.count`` is then classes x grid_columns), each row with its own fixed latents
(:func:`src.sampling.grid_inputs`); the progress picture shows the first image of each
class (up to ``sample.progress_columns`` classes) and ``classes.json`` names the rows.

Grids and the progress pictures show each image enlarged by a whole factor (nearest
neighbour: every pixel becomes a k x k block, nothing is smoothed) to at least
``sample.display_pixels`` pixels, so 28-pixel digits are not stamps in a viewer.

Incremental: ``index.json`` records each rendered snapshot's sha256 and the params that
shape rendering; an unchanged snapshot is skipped, the images of a snapshot that is gone
are removed, and the progress picture is rebuilt from the rendered PNGs (old generators are
never run again). PNGs are encoded in memory and written atomically; the same generator
and seed give the same bytes.

This module imports TensorFlow only inside :func:`render_samples`; the image helpers
(:func:`~src.pictures.make_grid`, :func:`~src.pictures.encode_png`, ...) live in
:mod:`src.pictures`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from src.atomic import sha256_file, write_bytes, write_json
from src.config import Params
from src import faults
from src.errors import UserError
from src.pictures import display_scale, encode_gif, encode_png, make_grid, read_png
from src.snapshots import PATTERN, list_snapshots, read_classes

OUTPUT_RE = re.compile(r"^(generated_image_epoch_\d+_\d+\.png|grid_epoch_\d+\.png)$")
TEMP_RE = re.compile(r"^\.(generated_image_epoch_|grid_epoch_|progress\.|index\.json|classes\.json).*\.tmp$")
INDEX = "index.json"
CLASSES = "classes.json"  # conditional: the class of each grid row
RENDER_BATCH = 256
INDEX_VERSION = 1


# ---------------------------------------------------------------------------- names
def image_name(epoch: int, index: int) -> str:
    return f"generated_image_epoch_{epoch:04d}_{index}.png"


def grid_name(epoch: int) -> str:
    return f"grid_epoch_{epoch:04d}.png"


def grid_layout(params: Params, classes: list[str]) -> tuple[int, int, list[int]]:
    """``(count, columns, progress indices)`` of each snapshot's images: unconditional, the
    ``sample`` params; conditional, one row of ``grid_columns`` per class, and the progress
    strip takes the first image of each class."""
    s = params.sample
    if not classes:
        return s.count, s.grid_columns, list(range(min(s.progress_columns, s.count)))
    rows = min(len(classes), max(s.progress_columns, 1))
    return len(classes) * s.grid_columns, s.grid_columns, [c * s.grid_columns for c in range(rows)]


def snapshot_files(epoch: int, count: int) -> list[str]:
    return [image_name(epoch, i) for i in range(count)] + [grid_name(epoch)]


def find_snapshots(snapshots_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every snapshot (:mod:`src.snapshots`), in epoch order; none is a UserError."""
    if not snapshots_dir.is_dir():
        raise UserError(f"{snapshots_dir}: snapshot folder not found (run the train stage first)")
    found = list_snapshots(snapshots_dir)
    if not found:
        raise UserError(f"{snapshots_dir}: no generator snapshots ({PATTERN}) in this folder "
                        "(run the train stage first)")
    epochs = [e for e, _ in found]
    if len(set(epochs)) != len(epochs):  # e.g. generator_epoch_5.npz next to generator_epoch_0005.npz
        dup = next(e for e in epochs if epochs.count(e) > 1)
        raise UserError(f"{snapshots_dir}: more than one snapshot for epoch {dup}")
    return found


def render_params(params: Params, classes: list[str] | None = None) -> dict:
    """The params (and class names) that decide what a snapshot's images look like (recorded in index.json)."""
    d = params.data
    shape = {"seed": params.common.seed, "count": params.sample.count, "grid_columns": params.sample.grid_columns,
             "latent_dim": params.model.latent_dim, "range": list(d.value_range), "channels": d.channels,
             "image_size": d.image_size, "scale": display_scale(d.image_size, params.sample.display_pixels)}
    if classes:
        shape["classes"] = list(classes)
    return shape


def _read_index(out_dir: Path) -> dict:
    import json

    try:
        index = json.loads((out_dir / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION \
            or not isinstance(index.get("snapshots"), dict):
        return {}
    return index


# ---------------------------------------------------------------------------- stage
def render_samples(params: Params, snapshots_dir: Path, out_dir: Path) -> dict:
    """Render every snapshot in ``snapshots_dir`` into ``out_dir``; return a summary.

    The summary holds ``rendered`` and ``skipped`` (snapshot counts), ``removed`` (files of
    snapshots no longer present), ``snapshots`` (how many there are) and ``progress``
    (whether progress.png was rebuilt).
    """
    snapshots_dir, out_dir = Path(snapshots_dir), Path(out_dir)
    snapshots = find_snapshots(snapshots_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = read_classes(snapshots[-1][1])  # one run's snapshots: the same classes
    shape = render_params(params, classes)
    count, columns, progress_indices = grid_layout(params, classes)
    channels = params.data.channels
    progress_columns = len(progress_indices)
    scale = shape["scale"]

    index = _read_index(out_dir)
    old_entries: dict = index.get("snapshots", {})
    entries: dict = {}
    todo: list[tuple[int, Path, str]] = []
    skipped = 0
    for epoch, path in snapshots:
        digest = sha256_file(path)
        old = old_entries.get(path.name)
        if (isinstance(old, dict) and old.get("sha256") == digest and old.get("params") == shape
                and old.get("epoch") == epoch
                and all((out_dir / f).is_file() for f in snapshot_files(epoch, count))):
            entries[path.name] = old
            skipped += 1
        else:
            todo.append((epoch, path, digest))

    # Forget snapshots that are gone or about to be re-rendered before touching their files.
    changed = bool(todo) or set(old_entries) != set(entries)
    if changed or not index:
        write_json(out_dir / INDEX, {"version": INDEX_VERSION, "snapshots": dict(entries),
                                     "progress": index.get("progress")})

    if todo:
        from src.networks import generator_classes, load_generator  # TensorFlow only when something is to be rendered
        from src.sampling import grid_inputs, run_generator, to_uint8

        z, labels = grid_inputs(count, columns, len(classes), params.model.latent_dim, params.common.seed)
        for epoch, path, digest in todo:
            generator = load_generator(params, path)
            if generator_classes(generator) != classes:
                raise UserError(f"{path}: its classes {generator_classes(generator)} differ from those of "
                                f"{snapshots[-1][1].name} ({classes}); snapshots of two runs? rerun the train stage")
            images = to_uint8(np.concatenate([
                np.asarray(run_generator(generator, z[i:i + RENDER_BATCH],
                                         None if labels is None else labels[i:i + RENDER_BATCH]))
                for i in range(0, count, RENDER_BATCH)]), params.data.value_range)
            for i, image in enumerate(images):
                write_bytes(out_dir / image_name(epoch, i), encode_png(image))
            write_bytes(out_dir / grid_name(epoch), encode_png(make_grid(images, columns, scale=scale)))
            faults.point("render")
            entries[path.name] = {"sha256": digest, "epoch": epoch, "params": shape}
            write_json(out_dir / INDEX, {"version": INDEX_VERSION, "snapshots": dict(sorted(entries.items())),
                                         "progress": index.get("progress")})

    # Remove images of snapshots that are gone (or of indices beyond a smaller count) and stale temp files.
    expected = {f for epoch, _ in snapshots for f in snapshot_files(epoch, count)}
    removed = 0
    for path in out_dir.iterdir():
        if OUTPUT_RE.match(path.name) and path.name not in expected:
            path.unlink(missing_ok=True)
            removed += 1
        elif TEMP_RE.match(path.name):  # left by a killed run
            path.unlink(missing_ok=True)

    progress_state = {"columns": progress_columns, "snapshots": [p.name for _, p in snapshots],
                      "sha256": [entries[p.name]["sha256"] for _, p in snapshots], "params": shape}
    rebuild = (changed or removed or index.get("progress") != progress_state
               or not (out_dir / "progress.png").is_file() or not (out_dir / "progress.gif").is_file())
    if rebuild:
        rows = [np.stack([read_png(out_dir / image_name(epoch, i), channels) for i in progress_indices])
                for epoch, _ in snapshots]
        write_bytes(out_dir / "progress.png", encode_png(make_grid(np.concatenate(rows), progress_columns, scale=scale)))
        frames = [read_png(out_dir / grid_name(epoch), channels) for epoch, _ in snapshots]
        write_bytes(out_dir / "progress.gif", encode_gif(frames))
        write_json(out_dir / INDEX, {"version": INDEX_VERSION, "snapshots": dict(sorted(entries.items())),
                                     "progress": progress_state})

    if classes:  # what each grid row shows
        write_json(out_dir / CLASSES, {"rows": classes, "images_per_row": columns})
    else:
        (out_dir / CLASSES).unlink(missing_ok=True)
    return {"rendered": len(todo), "skipped": skipped, "removed": removed, "snapshots": len(snapshots),
            "progress": bool(rebuild), "classes": len(classes)}
