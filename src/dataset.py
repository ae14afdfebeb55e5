"""The preprocessed dataset format, shared by every stage.

``data/processed/`` holds:

- ``shard_00000.npy``, ``shard_00001.npy``, ...: float32 NHWC arrays, values in ``range``;
- with labels (``data.labels`` not ``none``): ``labels_00000.npy``, ... beside them, one
  int32 class index per image of the shard of the same number;
- ``manifest.json``: ``count``, ``shape`` [H, W, C], ``dtype``, ``range`` [lo, hi],
  ``source`` ('mnist' or 'folder', with ``mnist_dir`` or ``folder``), ``params`` (the data
  section and the seed) and ``shards``: a list of {``file``, ``count``, ``sha256``}; with
  labels also ``classes`` (the class names, by index) and, in each shard entry,
  ``labels`` and ``labels_sha256``. No ``classes`` key means 0 classes (unlabelled data):
  such a manifest is the same as before labels existed;
- ``report.json``: the files skipped and why, with counts; with labels also
  ``class_counts`` (usable images per class) and ``small_classes``.

Readers memory-map the shards, so opening a large dataset costs almost no memory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from src.atomic import sha256_file
from src.errors import UserError

MANIFEST = "manifest.json"
REPORT = "report.json"
DTYPE = "float32"
LABEL_DTYPE = "int32"


def shard_name(index: int) -> str:
    """File name of shard number ``index`` (0-based)."""
    return f"shard_{index:05d}.npy"


def labels_name(index: int) -> str:
    """File name of the labels of shard number ``index`` (0-based)."""
    return f"labels_{index:05d}.npy"


def class_names(manifest: dict) -> list[str]:
    """The class names of a dataset, by index; ``[]`` (0 classes) for unlabelled data."""
    return list(manifest.get("classes", []))


def read_manifest(processed_dir: str | os.PathLike) -> dict:
    """Load and sanity-check ``manifest.json``; UserError naming the file if missing or invalid."""
    path = Path(processed_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the preprocess stage first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a valid manifest ({exc})") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(f"{path}: invalid manifest ({problem}); run the preprocess stage again")
    return manifest


def _manifest_problem(m: object) -> str | None:
    """What is wrong with a parsed manifest, or None."""
    if not isinstance(m, dict):
        return "not a JSON object"
    for key in ("count", "shape", "dtype", "range", "source", "shards"):
        if key not in m:
            return f"missing '{key}'"
    if not (isinstance(m["shape"], list) and len(m["shape"]) == 3 and all(isinstance(v, int) and v > 0 for v in m["shape"])):
        return f"'shape' must be [H, W, C], got {m['shape']!r}"
    if m["dtype"] != DTYPE:
        return f"'dtype' must be {DTYPE}, got {m['dtype']!r}"
    if not (isinstance(m["range"], list) and len(m["range"]) == 2):
        return f"'range' must be [lo, hi], got {m['range']!r}"
    shards = m["shards"]
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("count"), int)
            and isinstance(s.get("sha256"), str) for s in shards):
        return "'shards' must be a list of {file, count, sha256}"
    for s in shards:
        if Path(s["file"]).name != s["file"]:
            return f"shard file {s['file']!r} must be a plain file name"
    if sum(s["count"] for s in shards) != m["count"]:
        return "'count' does not match the sum of the shard counts"
    if "classes" in m:
        classes = m["classes"]
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)
                and len(set(classes)) == len(classes)):
            return "'classes' must be a non-empty list of distinct class names"
        for s in shards:
            if not (isinstance(s.get("labels"), str) and isinstance(s.get("labels_sha256"), str)):
                return "each shard of labelled data must name its 'labels' file and 'labels_sha256'"
            if Path(s["labels"]).name != s["labels"]:
                return f"labels file {s['labels']!r} must be a plain file name"
    return None


def _load_checked(path: Path, sha256: str, want: tuple, dtype: str, verify: bool) -> np.ndarray:
    """Memory-map one listed .npy file, checked against the manifest (UserError naming it)."""
    if not path.is_file():
        raise UserError(f"{path}: shard listed in {MANIFEST} is missing; run the preprocess stage again")
    if verify and sha256_file(path) != sha256:
        raise UserError(f"{path}: sha256 does not match {MANIFEST} (corrupt or modified shard); "
                        "run the preprocess stage again")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # truncated or not .npy at all
        raise UserError(f"{path}: unreadable shard ({exc}); run the preprocess stage again") from None
    if array.shape != want or array.dtype != np.dtype(dtype):
        raise UserError(f"{path}: shard is {array.dtype} {list(array.shape)}, manifest says "
                        f"{dtype} {list(want)}; run the preprocess stage again")
    return array


def open_shards(processed_dir: str | os.PathLike, verify: bool = True, with_labels: bool = False) -> tuple:
    """Memory-map every shard listed in the manifest.

    In: the processed folder; ``verify`` also checks each shard's sha256 (reads every
    byte once); ``with_labels`` also opens the label arrays. Out: ``(manifest, [read-only
    arrays])``, or with ``with_labels`` ``(manifest, arrays, labels)``: ``labels`` is a
    list of read-only int32 arrays, one per shard, or None for unlabelled data (0 classes).
    Shape, dtype and count are always checked against the manifest, and every label
    against the number of classes. Raises UserError naming the file on any mismatch,
    truncation or missing file.
    """
    folder = Path(processed_dir)
    manifest = read_manifest(folder)
    shape, arrays = tuple(manifest["shape"]), []
    for entry in manifest["shards"]:
        want = (entry["count"],) + shape
        arrays.append(_load_checked(folder / entry["file"], entry["sha256"], want, DTYPE, verify))
    if not with_labels:
        return manifest, arrays
    num_classes = len(class_names(manifest))
    if not num_classes:
        return manifest, arrays, None
    labels = []
    for entry in manifest["shards"]:
        path = folder / entry["labels"]
        array = _load_checked(path, entry["labels_sha256"], (entry["count"],), LABEL_DTYPE, verify)
        if len(array) and not 0 <= int(array.min()) <= int(array.max()) < num_classes:  # 4 bytes an image: cheap
            raise UserError(f"{path}: labels outside 0..{num_classes - 1} ({num_classes} classes in {MANIFEST}); "
                            "run the preprocess stage again")
        labels.append(array)
    return manifest, arrays, labels


class ShardReader:
    """Random access to the rows of memory-mapped shards as one array (never all in memory).

    ``labels``: the per-shard label arrays of ``open_shards(..., with_labels=True)``, or
    None (unlabelled data); ``gather_labels`` reads them at the same indices as ``gather``.
    """

    def __init__(self, shards: list[np.ndarray], labels: list[np.ndarray] | None = None):
        if labels is not None and [len(a) for a in labels] != [len(s) for s in shards]:
            raise ValueError("labels must have one array per shard, each as long as its shard")
        self.shards, self.labels = shards, labels
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.count = int(self.starts[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (global, in the given order) of the shards' concatenation, as float32."""
        return self._gather(self.shards, indices, np.float32)

    def gather_labels(self, indices: np.ndarray) -> np.ndarray:
        """The int32 class indices of the rows ``indices`` (as ``gather``); the data must be labelled."""
        if self.labels is None:
            raise ValueError("this reader has no labels (unlabelled data, or opened without them)")
        return self._gather(self.labels, indices, np.int32)

    def _gather(self, arrays: list[np.ndarray], indices: np.ndarray, dtype) -> np.ndarray:
        indices = np.asarray(indices)
        out = np.empty((len(indices),) + tuple(arrays[0].shape[1:]), dtype)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            local = indices[sel] - self.starts[s]
            order = np.argsort(local)  # sorted reads are sequential reads on the memory map
            out[sel[order]] = arrays[s][local[order]]
        return out
