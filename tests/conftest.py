"""Shared fixtures: tiny params and tiny preprocessed datasets built in a temp folder."""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.atomic import save_npy, sha256_file, write_json  # noqa: E402
from src.config import parse_params  # noqa: E402
from src.paths import OUTPUTS, Outputs, TrainPaths  # noqa: E402

# `make test` hands out one file at a time to each xdist worker (--dist loadfile), in collection
# order (--no-loadscope-reorder; xdist's own order is by number of tests, which put the longest
# file last, alone on one core while the other idled). So the files that take longest go first,
# longest first (their seconds: `pytest --durations=0`, docs/tests-and-benchmarks.md); every
# other file keeps pytest's order after them.
LONGEST_FIRST = ("test_resume.py", "test_conditional.py", "test_pipeline.py", "test_faults.py",
                 "test_pipeline_folder.py", "test_train.py", "test_bad_inputs.py", "test_faults_disk.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests in a file keep their order


TINY = {
    "common": {"seed": 7},
    "data": {"source": "folder", "folder": ".", "image_size": 8, "channels": 1, "range": [-1, 1]},
    "model": {"arch": "dcgan", "latent_dim": 8,
              "dcgan": {"g_filters": [16, 8], "d_filters": [8, 16], "dropout": 0.3},
              "mlp": {"g_units": [16, 32], "d_units": [32, 16]}},
    "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "checkpoint_every": 1,
              "keep_checkpoints": 2, "steps_per_call": 1},
    "sample": {"every_epochs": 1, "count": 4, "grid_columns": 2, "progress_columns": 2},
    "evaluate": {"num_samples": 16, "batch_size": 8, "kid_subsets": 2, "kid_subset_size": 8, "bootstrap": 10},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_raw(**override) -> dict:
    return merge(TINY, override)


def tiny_params(**override):
    return parse_params(tiny_raw(**override))


def write_processed(folder: Path, images: np.ndarray, value_range=(-1, 1), shard_size: int = 16,
                    labels: np.ndarray | None = None, classes: list[str] | None = None) -> Path:
    """Write ``images`` (N, H, W, C float32) as shards + manifest in the preprocess format;
    with ``labels`` (N ints) and ``classes`` (names by index) as labelled data."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, len(images), shard_size)):
        name = f"shard_{i:05d}.npy"
        save_npy(folder / name, images[start:start + shard_size].astype(np.float32))
        shards.append({"file": name, "count": len(images[start:start + shard_size]),
                       "sha256": sha256_file(folder / name)})
        if labels is not None:
            label_file = f"labels_{i:05d}.npy"
            save_npy(folder / label_file, np.asarray(labels[start:start + shard_size], np.int32))
            shards[-1].update(labels=label_file, labels_sha256=sha256_file(folder / label_file))
    manifest = {"count": len(images), "shape": list(images.shape[1:]), "dtype": "float32",
                "range": list(value_range), "source": "test", "params": {}, "shards": shards}
    if labels is not None:
        manifest["classes"] = list(classes)
    write_json(folder / "manifest.json", manifest)
    return folder


def class_blobs(n: int, size: int = 8, channels: int = 1, value_range=(-1, 1), seed: int = 0):
    """Labelled images for conditional tests: class 0 a bright square in the top half, class 1
    in the bottom half, class 2 a bright left column; ``(images, labels, class names)``."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3).astype(np.int32)
    rng.shuffle(labels)
    unit = np.zeros((n, size, size, channels), np.float32)
    h = size // 2
    for img, label in zip(unit, labels):
        x = int(rng.integers(0, h))
        if label == 0:
            img[:h, x:x + h] = 1.0
        elif label == 1:
            img[h:, x:x + h] = 1.0
        else:
            img[:, :2] = 1.0
    lo, hi = value_range
    return unit * (hi - lo) + lo, labels, ["top", "bottom", "left"]


def blob_images(n: int, size: int = 8, channels: int = 1, value_range=(-1, 1), seed: int = 0) -> np.ndarray:
    """Simple structured images (a bright square at a random place) in ``value_range``."""
    rng = np.random.default_rng(seed)
    unit = np.zeros((n, size, size, channels), np.float32)
    for img in unit:
        y, x = rng.integers(0, size // 2, size=2)
        img[y:y + size // 2, x:x + size // 2] = 1.0
    lo, hi = value_range
    return unit * (hi - lo) + lo


@pytest.fixture
def project(tmp_path):
    """A scratch project folder: params.yaml (tiny), data/processed, and the stage scripts' repo."""
    def make(images: np.ndarray | None = None, labelled: bool = False, **override) -> Path:
        raw = tiny_raw(**override)
        raw["data"]["folder"] = str(tmp_path)
        params = parse_params(raw)
        labels = classes = None
        if labelled:  # class_blobs: three classes
            images, labels, classes = class_blobs(32, params.data.image_size, params.data.channels,
                                                  params.data.value_range)
        data = images if images is not None else blob_images(
            32, params.data.image_size, params.data.channels, params.data.value_range)
        write_processed(tmp_path / "data" / "processed", data, params.data.value_range, labels=labels, classes=classes)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        return tmp_path
    return make


# The train stage's outputs, relative to a project's root (src/paths.py, as dvc.yaml names them).
TRAIN_PATHS = dataclasses.asdict(Outputs().train())


def train_paths(root: Path) -> TrainPaths:
    """:class:`src.paths.TrainPaths` of the project at ``root``."""
    return Outputs(root / OUTPUTS).train()


def run_stage(project_dir: Path, stage: str, timeout: float = 300, **kwargs):
    """Run ``stages/<stage>.py`` of this repo with ``project_dir`` as the working folder."""
    import subprocess
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=project_dir,
                          capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on the loopback (for worker processes' TF_CONFIG)."""
    import socket
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def draw_digits(n: int, seed: int = 0, size: int = 28, varied: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit-like uint8 images (N, size, size) drawn with Pillow's font, and their labels.

    ``varied``: each digit also gets a random font size (16-22), brightness and stroke, and
    twice the position jitter (the metrics tests' data).
    """
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    fonts = {s: ImageFont.load_default(size=s) for s in range(16, 23)} if varied else {}
    font = ImageFont.load_default(size=20 * size // 28)
    out = np.zeros((n, size, size), np.uint8)
    for i, label in enumerate(labels):
        img = Image.new("L", (size, size), 0)
        if varied:
            font = fonts[int(rng.integers(16, 23))]
        jitter = 1.5 if varied else 1.0
        xy = (size / 2 + rng.normal(0, jitter), size / 2 + rng.normal(0, jitter))
        style = ({"fill": int(rng.integers(200, 256)), "stroke_width": int(rng.integers(0, 2)), "stroke_fill": 255}
                 if varied else {"fill": 255})
        ImageDraw.Draw(img).text(xy, str(label), font=font, anchor="mm", **style)
        out[i] = np.asarray(img)
    return out, labels


def bomb_png(path: Path, width: int = 20000, height: int | None = None) -> None:
    """A valid 1-bit PNG of width x height (default far above Pillow's pixel limit), a few kB on disk."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height = width if height is None else height
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 500) for _ in range(height // 500)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def write_mnist(folder: Path, train: tuple, test: tuple) -> None:
    """An MNIST folder as ``data.mnist_dir`` holds it: ``train`` and ``test`` (uint8 images,
    labels) as the four gzipped IDX files, and SHA256SUMS over them."""
    from src.mnist import SPLITS, write_idx
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", train), ("test", test)):
        write_idx(folder / SPLITS[split][0], images)
        write_idx(folder / SPLITS[split][1], labels)
    write_mnist_sums(folder)


def write_mnist_sums(folder: Path) -> None:
    """SHA256SUMS (sha256sum format) over the four IDX files in ``folder``."""
    from src.mnist import SPLITS, SUMS_FILE
    names = [name for pair in SPLITS.values() for name in pair]
    (folder / SUMS_FILE).write_text("".join(f"{sha256_file(folder / name)}  {name}\n" for name in names))


TF_CHATTER = ("WARNING: All log messages", "I0000", "W0000", "E0000")  # TensorFlow's start-up lines


def stderr_lines(stderr: str) -> list[str]:
    """The non-blank lines of a process's ``stderr`` other than TensorFlow's start-up chatter
    (and there must be no traceback)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(TF_CHATTER)]
