"""Shared fixtures: tiny params and tiny preprocessed datasets built in a temp folder."""
from __future__ import annotations

import copy
import os
import shutil
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

TINY = {
    "common": {"seed": 7},
    "data": {"source": "folder", "folder": ".", "image_size": 8, "channels": 1, "range": [-1, 1]},
    "model": {"arch": "dcgan", "latent_dim": 8,
              "dcgan": {"g_filters": [16, 8], "d_filters": [8, 16], "dropout": 0.3},
              "mlp": {"g_units": [16, 32], "d_units": [32, 16]}},
    "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "checkpoint_every": 1,
              "keep_checkpoints": 2, "steps_per_call": 1},
    "sample": {"every_epochs": 1, "count": 4, "grid_columns": 2, "progress_columns": 2},
    "evaluate": {"num_samples": 16, "batch_size": 8, "kid_subsets": 2, "kid_subset_size": 8},
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


def write_processed(folder: Path, images: np.ndarray, value_range=(-1, 1), shard_size: int = 16) -> Path:
    """Write ``images`` (N, H, W, C float32) as shards + manifest in the preprocess format."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, len(images), shard_size)):
        name = f"shard_{i:05d}.npy"
        save_npy(folder / name, images[start:start + shard_size].astype(np.float32))
        shards.append({"file": name, "count": len(images[start:start + shard_size]),
                       "sha256": sha256_file(folder / name)})
    write_json(folder / "manifest.json", {
        "count": len(images), "shape": list(images.shape[1:]), "dtype": "float32",
        "range": list(value_range), "source": "test", "params": {}, "shards": shards})
    return folder


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
    def make(images: np.ndarray | None = None, **override) -> Path:
        raw = tiny_raw(**override)
        raw["data"]["folder"] = str(tmp_path)
        params = parse_params(raw)
        data = images if images is not None else blob_images(
            32, params.data.image_size, params.data.channels, params.data.value_range)
        write_processed(tmp_path / "data" / "processed", data, params.data.value_range)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        return tmp_path
    return make


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


def clean_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def draw_digits(n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit-like uint8 images (N, size, size) drawn with Pillow's font, and their labels."""
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    font = ImageFont.load_default(size=20 * size // 28)
    out = np.zeros((n, size, size), np.uint8)
    for i, label in enumerate(labels):
        img = Image.new("L", (size, size), 0)
        ImageDraw.Draw(img).text((size / 2 + rng.normal(0, 1), size / 2 + rng.normal(0, 1)), str(label),
                                 fill=255, font=font, anchor="mm")
        out[i] = np.asarray(img)
    return out, labels


def bomb_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit PNG far above Pillow's pixel limit, a few kB on disk."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    comp = zlib.compressobj(9)
    rows = b"".join(comp.compress(b"\x00" * (1 + side // 8) * 500) for _ in range(side // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
