"""The preprocessed dataset format, shared by every stage.

``data/processed/`` holds:

- ``shard_00000.npy``, ``shard_00001.npy``, ...: float32 NHWC arrays, values in ``range``;
- ``manifest.json``: ``count``, ``shape`` [H, W, C], ``dtype``, ``range`` [lo, hi],
  ``source`` ('mnist' or 'folder', with ``mnist_dir`` or ``folder``), ``params`` (the data
  section and the seed) and ``shards``: a list of {``file``, ``count``, ``sha256``};
- ``report.json``: the files skipped and why, with counts.

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


def shard_name(index: int) -> str:
    """File name of shard number ``index`` (0-based)."""
    return f"shard_{index:05d}.npy"


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
    return None


def open_shards(processed_dir: str | os.PathLike, verify: bool = True) -> tuple[dict, list[np.ndarray]]:
    """Memory-map every shard listed in the manifest.

    In: the processed folder; ``verify`` also checks each shard's sha256 (reads every
    byte once). Out: ``(manifest, [read-only arrays])``. Shape, dtype and count are
    always checked against the manifest. Raises UserError naming the shard on any
    mismatch, truncation or missing file.
    """
    folder = Path(processed_dir)
    manifest = read_manifest(folder)
    shape, arrays = tuple(manifest["shape"]), []
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise UserError(f"{path}: shard listed in {MANIFEST} is missing; run the preprocess stage again")
        if verify and sha256_file(path) != entry["sha256"]:
            raise UserError(f"{path}: sha256 does not match {MANIFEST} (corrupt or modified shard); "
                            "run the preprocess stage again")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # truncated or not .npy at all
            raise UserError(f"{path}: unreadable shard ({exc}); run the preprocess stage again") from None
        want = (entry["count"],) + shape
        if array.shape != want or array.dtype != np.dtype(DTYPE):
            raise UserError(f"{path}: shard is {array.dtype} {list(array.shape)}, manifest says "
                            f"{DTYPE} {list(want)}; run the preprocess stage again")
        arrays.append(array)
    return manifest, arrays


class ShardReader:
    """Random access to the rows of memory-mapped shards as one array (never all in memory)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.count = int(self.starts[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (global, in the given order) of the shards' concatenation, as float32."""
        indices = np.asarray(indices)
        out = np.empty((len(indices),) + tuple(self.shards[0].shape[1:]), np.float32)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            local = indices[sel] - self.starts[s]
            order = np.argsort(local)  # sorted reads are sequential reads on the memory map
            out[sel[order]] = self.shards[s][local[order]]
        return out
