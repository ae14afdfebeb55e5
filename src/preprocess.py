"""Turn the configured data source into float32 shards (see ``src/dataset.py`` for the format).

MNIST: the 60000 training digits. Folder: every image file, decoded in parallel worker
processes and streamed into fixed-size shards in file order, so memory stays around
one shard however large the folder is. With ``data.labels`` (``src/labels.py``) each image
also gets its class index, stored beside its shard. The output folder is built aside and
swapped in at the end: a killed run leaves the previous complete output (or none), never
a mix, and a labelling problem found after decoding leaves nothing either.
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
from src.config import UNREAD_LABELS, DataParams, to_dict
from src.dataset import DTYPE, MANIFEST, REPORT, labels_name, shard_name
from src import clusters, faults
from src.errors import UserError
from src.folder_index import build_index
from src.images import CHANGED, decode_image, reason_kind
from src.labels import check_class_sizes, folder_labels, label_file, mnist_labels
from src.mnist import SPLITS, load_mnist
from src.paths import FOLDER_INDEX


# ---------------------------------------------------------------------------- shard writer
class _ShardWriter:
    """Fills one reusable buffer of ``shard_size`` images and saves it when full.

    The buffer is allocated once (capped at the number of inputs), so memory is one
    shard whatever the dataset size. With ``num_classes`` > 0 each image comes with its
    class index, saved as the shard's labels file, and ``class_counts`` counts them.
    """

    def __init__(self, out_dir: Path, shape: tuple[int, int, int], shard_size: int, max_items: int,
                 num_classes: int = 0):
        self.out_dir, self.shape = out_dir, shape
        self.buffer = np.empty((max(1, min(shard_size, max_items)),) + shape, dtype=DTYPE)
        self.labels = np.empty(len(self.buffer), np.int32) if num_classes else None
        self.class_counts = np.zeros(num_classes, np.int64)
        self.filled, self.count, self.shards = 0, 0, []

    def add(self, image: np.ndarray, label: int | None = None) -> None:
        self.buffer[self.filled] = image
        if self.labels is not None:
            self.labels[self.filled] = label
            self.class_counts[label] += 1
        self.filled += 1
        if self.filled == len(self.buffer):
            self.flush()

    def flush(self) -> None:
        if not self.filled:
            return
        path = self.out_dir / shard_name(len(self.shards))
        save_npy(path, self.buffer[:self.filled])
        faults.point("shard")
        entry = {"file": path.name, "count": self.filled, "sha256": sha256_file(path)}
        if self.labels is not None:
            labels_path = self.out_dir / labels_name(len(self.shards))
            save_npy(labels_path, self.labels[:self.filled])
            entry.update(labels=labels_path.name, labels_sha256=sha256_file(labels_path))
        self.shards.append(entry)
        self.count += self.filled
        self.filled = 0


def _to_range(unit: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map float32 values in [0, 1] to [lo, hi] (clipped: the manifest promises the range)."""
    lo, hi = value_range
    out = unit * np.float32(hi - lo) + np.float32(lo)
    return np.clip(out, lo, hi, out=out).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- MNIST
def _mnist(data: DataParams, writer: _ShardWriter, images: np.ndarray, labels: np.ndarray | None) -> dict:
    step = len(writer.buffer)
    for start in tqdm(range(0, len(images), step), desc="preprocess", unit="shard", file=sys.stderr):
        block = images[start:start + step].astype(np.float32) / np.float32(255.0)
        for i, image in enumerate(_to_range(block, data.value_range)[..., None], start):
            writer.add(image, None if labels is None else labels[i])
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


def _folder(data: DataParams, writer: _ShardWriter, index: dict, labels: np.ndarray | None) -> dict:
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
            for i, (rel, (image, reason)) in enumerate(tqdm(zip(files, results), total=len(files),
                                                            desc="preprocess", unit="img", file=sys.stderr,
                                                            mininterval=1.0)):
                slots.release()
                if reason == CHANGED:
                    raise UserError(f"{os.path.join(data.folder, rel)}: {CHANGED} (rerun `dvc repro`, "
                                    f"or `python stages/scan.py` first)")
                if image is None:
                    skipped.append({"file": rel, "reason": reason})
                else:
                    writer.add(image, None if labels is None else labels[i])
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
    the source is missing or holds no usable image, a file changed since the scan, or
    (``data.labels``) when an image has no label, a label names no image file or a class
    ends with no usable image; prints a warning line for each class below
    ``data.min_class_size``.
    """
    out_dir = Path(out_dir)
    size, channels = data.image_size, data.channels
    classes, labels, origins = [], None, []
    if data.source == "mnist":
        images, digits = load_mnist(data.mnist_dir, "train")
        size, channels, total, files = 28, 1, len(images), []
        source = {"source": "mnist", "mnist_dir": str(data.mnist_dir)}
        if data.labels == "mnist":
            idx = Path(data.mnist_dir) / SPLITS["train"][1]
            origin = str(idx if idx.is_file() else data.mnist_dir)  # or mnist.npz / Keras's copy
            classes, labels = mnist_labels(digits, origin)
            origins = [origin] * len(classes)
    else:
        folder = Path(data.folder)
        index = index if index is not None else build_index("folder", folder, data.labels)
        if index.get("source") != "folder":
            raise UserError(f"{FOLDER_INDEX}: indexes data.source {index.get('source')}, not folder "
                            f"(rerun `dvc repro`, or `python stages/scan.py` first)")
        if not folder.is_dir():
            raise UserError(f"params key 'data.folder': '{folder}' is not a folder")
        if not index["files"]:
            found = f" ({len(index['skipped'])} entries named like images skipped)" if index["skipped"] else ""
            raise UserError(f"{folder}: no image files (.jpg .jpeg .png .bmp .gif .webp .tif .tiff) found{found}")
        files = [entry["file"] for entry in index["files"]]
        total = len(files)
        source = {"source": "folder", "folder": str(data.folder)}
        recorded = index.get("label_file")
        if recorded is not None and "sha256" in recorded and sha256_file(folder / recorded["file"]) != recorded["sha256"]:
            raise UserError(f"{folder / recorded['file']}: {CHANGED} (rerun `dvc repro`)")
        if data.labels not in UNREAD_LABELS:  # from the listing's relative paths: the listing itself is untouched
            classes, labels = folder_labels(folder, data.labels, files)
            origins = ([str(folder / name) for name in classes] if data.labels == "subfolders"
                       else [str(label_file(folder, data.labels))] * len(classes))

    staging = staging_dir(out_dir)
    try:
        writer = _ShardWriter(staging, (size, size, channels), data.shard_size, total, len(classes))
        if data.source == "mnist":
            report = _mnist(data, writer, images, labels)
        else:
            report = _folder(data, writer, index, labels)
        writer.flush()
        if writer.count == 0:
            first = report["skipped"][0]
            raise UserError(f"{data.folder}: no usable image among {total} image files "
                            f"(e.g. {first['file']}: {first['reason']})")
        if data.labels == "clusters":
            classes, origins = _add_cluster_labels(data, seed, writer)
        manifest = {
            "count": writer.count,
            "shape": [size, size, channels],
            "dtype": DTYPE,
            "range": list(data.range),
            **source,
            "params": {"data": _recorded_params(data), "seed": seed},
            "shards": writer.shards,
        }
        small = []
        if classes:
            first_skipped = (_first_skipped(len(classes), dict(zip(files, labels)) if files else {}, report["skipped"])
                             if labels is not None else [None] * len(classes))  # clusters: of usable images only
            small = check_class_sizes(classes, writer.class_counts, origins, first_skipped, data.min_class_size)
            manifest["classes"] = classes
            report["class_counts"] = {name: int(n) for name, n in zip(classes, writer.class_counts)}
            report["small_classes"] = small
        write_json(staging / REPORT, report)
        write_json(staging / MANIFEST, manifest)
        counts = writer.class_counts
        del writer  # free the shard buffer before the swap
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-built folder behind
        raise

    for name in small:
        k = classes.index(name)
        print(f"warning: class '{name}' ({origins[k]}) has {counts[k]} usable image(s), fewer than "
              f"data.min_class_size ({data.min_class_size})", file=sys.stderr)
    print(_summary(manifest, report, out_dir))
    return manifest


def _add_cluster_labels(data: DataParams, seed: int, writer: _ShardWriter) -> tuple[list[str], list[str]]:
    """``data.labels: clusters``: k-means the written shards (``src/clusters.py``, seeded by
    ``seed``), save a labels file beside each and record it in the shard entries; returns the
    class names and each one's origin (the source folder). UserError naming ``data.clusters``
    when the images are too few or too alike."""
    k, where = data.clusters, data.mnist_dir if data.source == "mnist" else data.folder
    if writer.count < k:
        raise UserError(f"params key 'data.clusters': {k} clusters need at least {k} usable images; "
                        f"{where} has {writer.count}")
    paths = [writer.out_dir / entry["file"] for entry in writer.shards]
    x = np.concatenate([clusters.features(np.load(path, mmap_mode="r", allow_pickle=False)) for path in paths])
    labels = clusters.cluster_features(x, k, seed)
    counts = np.bincount(labels, minlength=k)
    if (counts == 0).any():
        raise UserError(f"params key 'data.clusters': {where} holds fewer than {k} distinct pictures "
                        f"(at {clusters.POOLED} pixels a side); lower data.clusters")
    start = 0
    for i, entry in enumerate(writer.shards):
        labels_path = writer.out_dir / labels_name(i)
        save_npy(labels_path, labels[start:start + entry["count"]])
        entry.update(labels=labels_path.name, labels_sha256=sha256_file(labels_path))
        start += entry["count"]
    writer.class_counts = counts
    return clusters.class_names(k), [str(where)] * k


def _recorded_params(data: DataParams) -> dict:
    """The data params the manifest records. Unlabelled data leaves out the label keys, so
    its manifest keeps the bytes it had before labels existed (same data, same hash); only
    clustered data records ``clusters``."""
    recorded = to_dict(data)
    if data.labels != "clusters":
        del recorded["clusters"]
    if data.labels == "none":
        del recorded["labels"], recorded["min_class_size"]
    return recorded


def _first_skipped(num_classes: int, label_of: dict[str, int], skipped: list[dict]) -> list[str | None]:
    """For each class, its first skipped file with the reason (for the empty-class message), or None."""
    first: list[str | None] = [None] * num_classes
    for entry in skipped:
        k = label_of[entry["file"]]
        if first[k] is None:
            first[k] = f"{entry['file']}: {entry['reason']}"
    return first


def _summary(manifest: dict, report: dict, out_dir: Path) -> str:
    h, w, c = manifest["shape"]
    lo, hi = manifest["range"]
    line = (f"preprocess: {manifest['count']} images -> {len(manifest['shards'])} shard(s) of "
            f"{h}x{w}x{c} in [{lo}, {hi}]")
    if "classes" in manifest:
        line += f", {len(manifest['classes'])} classes"
    if report["skipped_count"]:
        reasons = ", ".join(f"{k}: {n}" for k, n in report["skipped_by_reason"].items())
        line += f"; skipped {report['skipped_count']} ({reasons})"
    return line + f"; report: {out_dir / REPORT}"
