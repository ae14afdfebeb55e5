"""MNIST loading: the gzipped IDX files (checksummed), with Keras's ``mnist.npz`` as fallback.

``load_mnist(dir, 'train')`` returns uint8 images (N, 28, 28) and uint8 labels (N,).
Lookup order: the four IDX files in ``dir`` (each verified against ``dir/SHA256SUMS``),
then ``dir/mnist.npz``, then ``keras.datasets.mnist.load_data()`` (downloads).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from src.atomic import atomic_open, sha256_file
from src.errors import UserError

SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
SUMS_FILE = "SHA256SUMS"

# IDX type code -> big-endian numpy dtype (the format stores everything big-endian).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


# ---------------------------------------------------------------------------- IDX format
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one gzipped IDX file into an array (native byte order).

    Header: two zero bytes, a type code, the number of dims, then one big-endian
    uint32 per dim. Any inconsistency raises UserError naming the file.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot read gzipped IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise UserError(f"{path}: bad IDX header (magic number {raw[:4].hex() or 'missing'})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: bad IDX header (file ends inside the dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"{path}: bad IDX header (dims {list(dims)} need {expected} data bytes, "
                        f"file has {len(raw) - header})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a gzipped IDX file (used by tests to build tiny MNIST folders)."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.dtype(_IDX_TYPES[code])).tobytes()
    # mtime=0: same array, same bytes (so SHA256SUMS written once stays valid).
    with atomic_open(path, "wb") as handle:
        with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as gz:
            gz.write(header + body)


# ---------------------------------------------------------------------------- checksums
def _read_sums(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` (sha256sum format: '<hex>  <name>' per line) as {name: hex}."""
    sums_path = folder / SUMS_FILE
    try:
        text = sums_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{sums_path}: checksum file not found (needed to verify the MNIST files)") from None
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()  # '*' marks binary mode in sha256sum
    return sums


def _verify(path: Path, sums: dict[str, str]) -> None:
    want = sums.get(path.name)
    if want is None:
        raise UserError(f"{path}: not listed in {path.parent / SUMS_FILE}")
    got = sha256_file(path)
    if got != want:
        raise UserError(f"{path}: sha256 mismatch (expected {want[:12]}..., got {got[:12]}...); "
                        "the file is corrupt or was replaced")


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{where}: expected images (N, 28, 28) and labels (N,), got {images.shape} and {labels.shape}")
    return images.astype(np.uint8, copy=False), labels.astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------- loaders
def _load_idx(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    sums = _read_sums(folder)
    paths = [folder / name for name in SPLITS[split]]
    for path in paths:
        _verify(path, sums)  # before parsing: never trust bytes we have not checked
    images, labels = (read_idx(p) for p in paths)
    return _check_pair(images, labels, str(folder))


def _load_npz(path: Path | str, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_key, y_key = NPZ_KEYS[split]
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive[x_key], archive[y_key]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: not a valid MNIST npz ({exc})") from None
    return _check_pair(images, labels, str(path))


def _load_keras(split: str) -> tuple[np.ndarray, np.ndarray]:
    from keras.datasets import mnist  # slow import (TensorFlow): only on this last resort

    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    pair = (x_train, y_train) if split == "train" else (x_test, y_test)
    return _check_pair(*pair, "keras.datasets.mnist")


def load_mnist(mnist_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split from ``mnist_dir``.

    In: the folder and 'train' or 'test'. Out: uint8 images (N, 28, 28), uint8 labels (N,).
    Raises UserError (one line, naming the file) on a bad checksum, bad header, or when
    no source is available.
    """
    if split not in SPLITS:
        raise UserError(f"MNIST split must be 'train' or 'test', got {split!r}")
    folder = Path(mnist_dir)
    if all((folder / name).is_file() for name in SPLITS[split]):
        return _load_idx(folder, split)
    npz = folder / "mnist.npz"
    if npz.is_file():
        return _load_npz(npz, split)
    try:
        return _load_keras(split)
    except Exception as exc:  # no network, no Keras cache, import failure: all end here
        raise UserError(f"MNIST not found: looked for {' and '.join(SPLITS[split])} or mnist.npz in {folder}, "
                        f"then keras.datasets.mnist.load_data() failed ({type(exc).__name__})") from None
