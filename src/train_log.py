"""The training log: DVCLive files written every epoch, optionally mirrored to TensorBoard.

Layout (``folder`` is ``outputs/train_log``, a DVCLive directory; DVCLive step = epoch):

- ``metrics.json``: the summary, ``step`` and the last epoch's value of every column
  (``dvc exp show`` and ``dvc metrics show`` read it)
- ``plots/metrics/<column>.tsv``: one file per column of the epoch row, ``step``-keyed
  rows, appended every epoch (``dvc plots`` and the VS Code extension draw them live)
- ``plots/images/grid/<epoch>.png``: the snapshot grids (a step slider in VS Code / Studio)

Every column of the row handed to :meth:`TrainLog.epoch` is logged, whatever its name, so
a new column of the training loop appears in every view without a change here.

Resume is exact: :class:`TrainLog` opened at ``resume_epoch`` first cuts every file back to
the epochs up to it (rows a killed run wrote after its last checkpoint, images of later
snapshots), so after a kill and ``dvc repro`` each epoch is logged exactly once, with the
values an uninterrupted run logs. The TensorBoard mirror (``tensorboard_dir``) is rebuilt
from the kept DVCLive rows and images on every start, then appended to as training runs.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np

from src.atomic import write_text

SUMMARY = "metrics.json"  # folder/metrics.json: DVCLive's summary
PLOTS = "plots"           # folder/plots/: metrics/<column>.tsv and images/grid/<epoch>.png
GRID_FOLDER = "grid"      # images/grid/<epoch>.png
_IMAGE_RE = re.compile(r"^(\d+)\.png$")


def metric_files(folder: Path) -> list[Path]:
    return sorted((Path(folder) / PLOTS / "metrics").glob("*.tsv"))


def read_rows(folder: Path) -> dict[int, dict[str, float]]:
    """Every logged epoch: ``{epoch: {column: value}}`` from the per-column TSV files.

    A partial last line (a run killed mid-append) is ignored.
    """
    rows: dict[int, dict[str, float]] = {}
    for path in metric_files(folder):
        name = path.stem
        with open(path, encoding="utf-8", newline="") as handle:
            for record in csv.DictReader(handle, delimiter="\t"):
                try:
                    rows.setdefault(int(record["step"]), {})[name] = float(record[name])
                except (KeyError, TypeError, ValueError):
                    continue
    return dict(sorted(rows.items()))


def image_files(folder: Path) -> list[tuple[int, Path]]:
    found = []
    grid = Path(folder) / PLOTS / "images" / GRID_FOLDER
    for path in grid.iterdir() if grid.is_dir() else ():
        m = _IMAGE_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def _cut_back(folder: Path, last_epoch: int) -> dict[int, dict[str, float]]:
    """Keep the epochs <= ``last_epoch`` in every file (atomic rewrites, the kept lines
    byte for byte; a partial last line goes); return the kept rows."""
    for path in metric_files(folder):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = lines[:1]
        for line in lines[1:]:
            fields = line.rstrip("\r\n").split("\t")
            if line.endswith("\n") and len(fields) == 2 and fields[0].isdigit() and int(fields[0]) <= last_epoch:
                kept.append(line)
        write_text(path, "".join(kept))
    for epoch, path in image_files(folder):
        if epoch > last_epoch:
            path.unlink()
    rows = read_rows(folder)
    path = Path(folder) / SUMMARY
    if rows:
        last = max(rows)
        old = summary(folder)  # its key order is DVCLive's logging order: keep it
        order = [k for k in old if k in rows[last]] + sorted(set(rows[last]) - set(old))
        # the TSVs hold ints without a decimal point: keep them ints, as DVCLive wrote them
        values = {k: int(rows[last][k]) if isinstance(old.get(k), int) else rows[last][k] for k in order}
        write_text(path, json.dumps({**values, "step": last}, indent=4) + "\n")
    else:
        path.unlink(missing_ok=True)
    return rows


def _live_class():
    from dvclive import Live

    class _Live(Live):
        def _init_dvc(self):
            # DVCLive looks up the DVC repository and the git revision for its own experiment
            # bookkeeping (unused here: dvc.yaml declares the log), and fails on a git repository
            # without commits. The files it writes do not depend on it.
            try:
                super()._init_dvc()
            except Exception:  # noqa: BLE001 - scmrepo/dulwich raise many types
                self._save_dvc_exp = False

        def make_summary(self):
            # DVCLive rewrites metrics.json in place after every epoch; a reader (dvc metrics
            # show, a plot, a test) caught between its truncate and its write saw an empty
            # file. Same bytes as DVCLive's dump_json, written to a temp file and renamed.
            from dvclive.plots import NumpyEncoder

            if self._step is not None:
                self.summary["step"] = self.step
            write_text(self.metrics_file, json.dumps(self.summary, indent=4, cls=NumpyEncoder) + "\n")

    return _Live


class TrainLog:
    """DVCLive (and optionally TensorBoard) logging of one training run."""

    def __init__(self, folder: Path, resume_epoch: int, tensorboard_dir: Path | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = _cut_back(self.folder, resume_epoch) if resume_epoch > 0 else {}
        # DVCLive says "Logging to experiment ..." and warns outside git: not for the train log.
        logging.getLogger("dvclive").setLevel(logging.ERROR)
        # resume=True keeps the cut-back files; a fresh start (resume_epoch 0) wipes them.
        self.live = _live_class()(dir=str(self.folder), resume=resume_epoch > 0, report=None, save_dvc_exp=False,
                         dvcyaml=None)
        self.tb = None
        if tensorboard_dir is not None:
            import tensorflow as tf

            shutil.rmtree(tensorboard_dir, ignore_errors=True)
            self.tb = tf.summary.create_file_writer(str(tensorboard_dir))
            for epoch, row in kept.items():
                self._tb_scalars(epoch, row)
            for epoch, path in image_files(self.folder):
                from PIL import Image
                with Image.open(path) as picture:
                    self._tb_image(epoch, np.asarray(picture))
            self.tb.flush()

    # -- TensorBoard --------------------------------------------------------------------------
    # tf.summary.write with the scalar and image plugins' metadata: what tf.summary.scalar and
    # tf.summary.image write, without needing the tensorboard package installed to write it.
    def _tb_write(self, tag: str, tensor, step: int, plugin: str) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        with self.tb.as_default():
            tf.summary.write(tag, tensor, step=step, metadata=metadata)

    def _tb_scalars(self, epoch: int, row: dict[str, float]) -> None:
        import tensorflow as tf

        for name, value in row.items():
            self._tb_write(name, tf.constant(float(value), tf.float32), epoch, "scalars")

    def _tb_image(self, epoch: int, image: np.ndarray) -> None:
        import tensorflow as tf
        from src.pictures import encode_png

        image = image[..., None] if image.ndim == 2 else image
        height, width = image.shape[:2]
        tensor = tf.constant([str(width).encode(), str(height).encode(), encode_png(image)], tf.string)
        self._tb_write(GRID_FOLDER, tensor, epoch, "images")

    # -- logging ------------------------------------------------------------------------------
    def epoch(self, epoch: int, row: dict[str, float]) -> None:
        """Log every column of ``row`` at step ``epoch`` and write the summary."""
        self.live.step = epoch
        for name, value in row.items():
            self.live.log_metric(name, value)
        self.live.next_step()
        if self.tb is not None:
            self._tb_scalars(epoch, row)
            self.tb.flush()

    def image(self, epoch: int, grid: np.ndarray) -> None:
        """The snapshot grid of ``epoch`` (uint8 H x W x 1 or 3) as ``images/grid/<epoch>.png``."""
        grid = np.asarray(grid, np.uint8)
        self.live.step = epoch
        self.live.log_image(f"{GRID_FOLDER}/{epoch}.png", grid[..., 0] if grid.shape[-1] == 1 else grid)
        if self.tb is not None:
            self._tb_image(epoch, grid)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        with contextlib.suppress(Exception):
            self.live._wait_for_studio_updates_posted()


def summary(folder: Path) -> dict:
    """DVCLive's ``metrics.json`` (the last epoch), {} when absent or unreadable."""
    try:
        return json.loads((Path(folder) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
