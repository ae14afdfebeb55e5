"""Turn the configured data source into float32 shards (see ``src/dataset.py`` for the format).

MNIST: the 60000 training digits. Folder: every image file, decoded in parallel worker
processes and streamed into fixed-size shards in file order, so memory stays around
one shard however large the folder is. The output folder is built aside and swapped in
at the end: a killed run leaves the previous complete output (or none), never a mix.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from src.atomic import replace_dir, save_npy, sha256_file, staging_dir, write_json
from src.config import DataParams, to_dict
from src.dataset import DTYPE, MANIFEST, REPORT, shard_name
from src import faults
from src.errors import UserError
from src.folder_index import build_index
from src.images import CHANGED, decode_image, reason_kind
from src.paths import FOLDER_INDEX
from src.mnist import load_mnist


# ---------------------------------------------------------------------------- shard writer
class _ShardWriter:
    """Fills one reusable buffer of ``shard_size`` images and saves it when full.

    The buffer is allocated once (capped at the number of inputs), so memory is one
    shard whatever the dataset size.
    """

    def __init__(self, out_dir: Path, shape: tuple[int, int, int], shard_size: int, max_items: int):
        self.out_dir, self.shape = out_dir, shape
        self.buffer = np.empty((max(1, min(shard_size, max_items)),) + shape, dtype=DTYPE)
        self.filled, self.count, self.shards = 0, 0, []

    def add(self, image: np.ndarray) -> None:
        self.buffer[self.filled] = image
        self.filled += 1
        if self.filled == len(self.buffer):
            self.flush()

    def flush(self) -> None:
        if not self.filled:
            return
        path = self.out_dir / shard_name(len(self.shards))
        save_npy(path, self.buffer[:self.filled])
        faults.point("shard")
        self.shards.append({"file": path.name, "count": self.filled, "sha256": sha256_file(path)})
        self.count += self.filled
        self.filled = 0


def _to_range(unit: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map float32 values in [0, 1] to [lo, hi] (clipped: the manifest promises the range)."""
    lo, hi = value_range
    out = unit * np.float32(hi - lo) + np.float32(lo)
    return np.clip(out, lo, hi, out=out).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- MNIST
def _mnist(data: DataParams, writer: _ShardWriter) -> dict:
    images, _ = load_mnist(data.mnist_dir, "train")
    step = len(writer.buffer)
    for start in tqdm(range(0, len(images), step), desc="preprocess", unit="shard", file=sys.stderr):
        block = images[start:start + step].astype(np.float32) / np.float32(255.0)
        for image in _to_range(block, data.value_range)[..., None]:
            writer.add(image)
    return {"total_files": len(images), "images": writer.count + writer.filled, "skipped_count": 0,
            "skipped_by_reason": {}, "skipped": []}


# ---------------------------------------------------------------------------- folder
_WORKER_ARGS: tuple = ()


def _init_worker(folder: str, size: int, channels: int, resize: str, background: list[int],
                 value_range: tuple[float, float]) -> None:
    # Settings travel once per worker, not once per file.
    global _WORKER_ARGS
    _WORKER_ARGS = (folder, size, channels, resize, background, value_range)


def _decode_task(entry: tuple[str, str]) -> tuple[np.ndarray | None, str | None]:
    folder, size, channels, resize, background, value_range = _WORKER_ARGS
    rel, sha256 = entry
    image, reason = decode_image(os.path.join(folder, rel), size, channels, resize, background, sha256)
    return (None if image is None else _to_range(image, value_range)), reason


def _throttled(items: Iterable[str], slots: threading.Semaphore, stop: threading.Event) -> Iterator[str]:
    """Yield items only while fewer than the slot count are in flight.

    ``Pool.imap`` would otherwise queue every task at once and let finished images
    pile up while the main process writes a shard; this keeps memory bounded.
    """
    for item in items:
        while not slots.acquire(timeout=0.2):
            if stop.is_set():  # lets the pool shut down if the consumer failed
                return
        yield item


def _folder(data: DataParams, writer: _ShardWriter, index: dict) -> dict:
    files = [entry["file"] for entry in index["files"]]
    tasks = [(entry["file"], entry["sha256"]) for entry in index["files"]]
    workers = min(data.workers or os.cpu_count() or 1, len(files))
    # Chunks amortise IPC; small enough that the ordered stream never stalls for long.
    chunksize = max(1, min(16, len(files) // (workers * 8)))
    slots, stop = threading.Semaphore(max(64, 4 * workers * chunksize)), threading.Event()
    skipped = []
    init = (str(data.folder), data.image_size, data.channels, data.resize, list(data.background), data.value_range)
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=init) as pool:
        try:
            results = pool.imap(_decode_task, _throttled(tasks, slots, stop), chunksize=chunksize)
            for rel, (image, reason) in tqdm(zip(files, results), total=len(files), desc="preprocess",
                                             unit="img", file=sys.stderr, mininterval=1.0):
                slots.release()
                if reason == CHANGED:
                    raise UserError(f"{os.path.join(data.folder, rel)}: {CHANGED} (rerun `dvc repro`, "
                                    f"or `python stages/scan.py` first)")
                if image is None:
                    skipped.append({"file": rel, "reason": reason})
                else:
                    writer.add(image)
        finally:
            stop.set()
    skipped = sorted(skipped + index["skipped"], key=lambda s: os.fsencode(s["file"]))
    by_reason = collections.Counter(reason_kind(s["reason"]) for s in skipped)
    return {"total_files": len(files) + len(index["skipped"]), "images": writer.count + writer.filled, "skipped_count": len(skipped),
            "skipped_by_reason": dict(sorted(by_reason.items())), "skipped": skipped}


# ---------------------------------------------------------------------------- entry point
def preprocess(data: DataParams, seed: int, out_dir: Path, index: dict | None = None) -> dict:
    """Build ``out_dir`` (shards, manifest.json, report.json) from the data source.

    In: the validated data params, the run seed (recorded only: order is the file
    order), the output folder and the scan stage's content index of the folder
    (:mod:`src.folder_index`; None: scan now). Out: the manifest dict. Raises UserError when
    the source is missing or holds no usable image, or a file changed since the scan.
    """
    out_dir = Path(out_dir)
    size, channels = data.image_size, data.channels
    if data.source == "mnist":
        size, channels, total = 28, 1, 60000
        source = {"source": "mnist", "mnist_dir": str(data.mnist_dir)}
    else:
        folder = Path(data.folder)
        index = index if index is not None else build_index("folder", folder)
        if index.get("source") != "folder":
            raise UserError(f"{FOLDER_INDEX}: indexes data.source {index.get('source')}, not folder "
                            f"(rerun `dvc repro`, or `python stages/scan.py` first)")
        if not folder.is_dir():
            raise UserError(f"params key 'data.folder': '{folder}' is not a folder")
        if not index["files"]:
            found = f" ({len(index['skipped'])} entries named like images skipped)" if index["skipped"] else ""
            raise UserError(f"{folder}: no image files (.jpg .jpeg .png .bmp .gif .webp .tif .tiff) found{found}")
        total = len(index["files"])
        source = {"source": "folder", "folder": str(data.folder)}

    staging = staging_dir(out_dir)
    try:
        writer = _ShardWriter(staging, (size, size, channels), data.shard_size, total)
        report = _mnist(data, writer) if data.source == "mnist" else _folder(data, writer, index)
        writer.flush()
        if writer.count == 0:
            first = report["skipped"][0]
            raise UserError(f"{data.folder}: no usable image among {total} image files "
                            f"(e.g. {first['file']}: {first['reason']})")
        manifest = {
            "count": writer.count,
            "shape": [size, size, channels],
            "dtype": DTYPE,
            "range": list(data.range),
            **source,
            "params": {"data": to_dict(data), "seed": seed},
            "shards": writer.shards,
        }
        write_json(staging / REPORT, report)
        write_json(staging / MANIFEST, manifest)
        del writer  # free the shard buffer before the swap
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-built folder behind
        raise

    print(_summary(manifest, report, out_dir))
    return manifest


def _summary(manifest: dict, report: dict, out_dir: Path) -> str:
    h, w, c = manifest["shape"]
    lo, hi = manifest["range"]
    line = (f"preprocess: {manifest['count']} images -> {len(manifest['shards'])} shard(s) of "
            f"{h}x{w}x{c} in [{lo}, {hi}]")
    if report["skipped_count"]:
        reasons = ", ".join(f"{k}: {n}" for k, n in report["skipped_by_reason"].items())
        line += f"; skipped {report['skipped_count']} ({reasons})"
    return line + f"; report: {out_dir / REPORT}"
