"""Crash-safe file writes, hashing and a deterministic, pickle-free array archive.

Every output goes through these helpers: data is written to a temporary file in the
destination folder, flushed to disk, then renamed over the target. A run killed at any
point leaves either the previous complete file or none, never a half-written one.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from src import faults

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip member timestamp: same contents give same bytes
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_sibling(path: Path) -> Iterator[tuple[int, str]]:
    """``(fd, name)`` of a new temporary file next to ``path``, renamed over it when the block
    ends (the block has closed the fd and made its data durable), deleted when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
        yield fd, tmp
        faults.point(f"atomic/{path.as_posix()}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
            # A full disk fails write()/flush() with no file name: say which output it was.
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    The handle has no file name (``os.fdopen``), so a writer that records one (gzip) writes
    the same bytes whatever the temporary name.
    """
    with _temp_sibling(Path(path)) as (fd, _), os.fdopen(fd, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` for a writer that needs a file name (a NumPy memory
    map, say): flushed to disk and renamed over ``path`` on success, deleted on failure."""
    with _temp_sibling(Path(path)) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temporary files that killed runs left in ``folder`` (see :func:`atomic_open`).

    Call it only where no other process is writing (a stage's own output folders).
    """
    removed = 0
    for entry in os.scandir(folder) if os.path.isdir(folder) else ():
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` as sorted, indented JSON (stable bytes for DVC diffs)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class _Stream:
    """Only ``write`` of a file: NumPy then streams the array through it in chunks.

    On a real file NumPy uses ``ndarray.tofile``, which reports a full disk as
    "N requested and M written" with no errno and no file name.
    """

    def __init__(self, handle: io.IOBase):
        self.write = handle.write


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically (no pickle: object arrays are refused)."""
    with atomic_open(path, "wb") as handle:
        np.lib.format.write_array(_Stream(handle), np.asarray(array), allow_pickle=False)


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Save named arrays to one ``.npz`` atomically, with fixed zip timestamps.

    ``np.savez`` stamps each member with the current time; this writes the same format
    with a fixed date so that the same arrays always give the same bytes.
    """
    with atomic_open(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` written by :func:`save_arrays` (never unpickles)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written ``staging`` folder into place as ``target``.

    The old folder is renamed aside first and removed only after the new one is in
    place, so a kill at any moment leaves a complete folder at ``target`` or at the
    aside name (which the next run cleans up), never a mix.
    """
    target = Path(target)
    aside = target.with_name(f".{target.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        os.replace(target, aside)
    os.replace(staging, target)
    _fsync_dir(target.parent)
    if aside.exists():
        shutil.rmtree(aside)


def staging_dir(target: Path) -> Path:
    """A fresh, empty sibling folder of ``target`` to build a new version in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging
