"""Generator snapshots: the file names, listing them, writing one, dropping later ones.

The train stage writes ``generator_epoch_XXXX.npz`` (the EMA generator's variables keyed by path,
and class names, see :func:`src.networks.snapshot_arrays`) every ``sample.every_epochs`` epochs; the sample
and evaluate stages read them back with :func:`src.networks.load_generator`. Only this
module knows the name pattern. It imports TensorFlow only inside :func:`save`.
"""
from __future__ import annotations

import re
from pathlib import Path

NAME_RE = re.compile(r"^generator_epoch_(\d+)\.npz$")
PATTERN = "generator_epoch_XXXX.npz"  # for messages


def snapshot_name(epoch: int) -> str:
    return f"generator_epoch_{epoch:04d}.npz"


def list_snapshots(folder: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every snapshot file in ``folder``, in epoch order ([] if no folder).

    Temporary files of a killed write (``.generator_epoch_....tmp``) never match.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = NAME_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save(folder: Path, epoch: int, generator) -> Path:
    """Write ``generator``'s variables as the snapshot of ``epoch`` (atomically, fixed bytes)."""
    from src.atomic import save_arrays
    from src.networks import snapshot_arrays

    path = Path(folder) / snapshot_name(epoch)
    save_arrays(path, snapshot_arrays(generator))
    return path


CLASSES_KEY = "classes"  # the array of class names in a conditional generator's snapshot


def read_classes(path: Path) -> list[str]:
    """The class names a snapshot holds ([] for an unconditional generator), without TensorFlow;
    a file that cannot be read gives [] (loading it later says what is wrong)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            if CLASSES_KEY not in archive.files:
                return []
            return [str(name) for name in archive[CLASSES_KEY]]
    except Exception:  # zipfile/numpy errors: load_generator reports them with the file name
        return []


def remove_after(folder: Path, epoch: int) -> None:
    """Delete the snapshots of epochs after ``epoch`` (a resumed run writes them again)."""
    for later, path in list_snapshots(folder):
        if later > epoch:
            path.unlink()
