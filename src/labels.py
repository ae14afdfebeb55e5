"""Class labels for the preprocess stage: which class each image is, as ``data.labels`` says.

- ``none``: no labels (the data has 0 classes).
- ``mnist``: the digit; classes ``'0'`` to ``'9'``, index = digit.
- ``subfolders``: the first folder level under ``data.folder`` is the class (``cats/a.png``,
  ``cats/x/b.png`` are 'cats'); every real (not symlinked) sub-folder is a class, the
  classes sorted by name (as bytes) for stable indices. An image directly in
  ``data.folder`` has no label.
- ``clusters``: k-means clusters of the images themselves (``src/clusters.py``), computed by
  preprocess once the shards are written; classes ``cluster-0`` (the largest) and on.
- ``<name>.csv``: a label file inside ``data.folder`` (so the folder, which ``dvc.yaml``
  tracks, holds the labels too). Format: UTF-8 CSV; the first row is the header
  ``path,class``, then one row per image: its path relative to ``data.folder`` with ``/``
  between folders (as the file listing spells it, case-sensitive) and its class name
  (spaces around it dropped). Blank rows are ignored; quote a field that holds a comma
  (``"a, b.png",cats``). Classes are sorted by name for stable indices.

Every image file must have a label and every label must name an image file; every class
must end with at least one usable image. A problem stops preprocess with one line naming
the file (and the line of a label file).
"""
from __future__ import annotations

import csv
import os
import posixpath
from pathlib import Path

import numpy as np

from src.config import LABEL_KEYWORDS
from src.errors import UserError

MNIST_CLASSES = [str(digit) for digit in range(10)]
HEADER = ["path", "class"]


def label_file(folder: str | os.PathLike, labels: str) -> Path | None:
    """The label file that ``data.labels`` names (inside ``folder``), or None for a keyword."""
    return None if labels in LABEL_KEYWORDS else Path(folder) / labels


# ---------------------------------------------------------------------------- MNIST
def mnist_labels(digits: np.ndarray, where: str) -> tuple[list[str], np.ndarray]:
    """The MNIST classes and an int32 label per image; UserError if a label is not a digit."""
    bad = np.flatnonzero(digits > 9)
    if len(bad):
        raise UserError(f"{where}: label {int(digits[bad[0]])} of image {int(bad[0])} is not a digit 0-9")
    return list(MNIST_CLASSES), digits.astype(np.int32)


# ---------------------------------------------------------------------------- folders
def folder_labels(folder: str | os.PathLike, labels: str, files: list[str]) -> tuple[list[str], np.ndarray]:
    """The classes and an int32 label per file of ``files`` (relative paths, in that order).

    In: ``data.folder``, ``data.labels`` (``subfolders`` or a label file name) and the image
    files the folder listing found. Raises UserError with one line naming the file when an
    image has no label, a label names no image file, or a class has no image file at all.
    """
    folder = Path(folder)
    if labels == "subfolders":
        return _subfolder_labels(folder, files)
    return _file_labels(folder, label_file(folder, labels), files)


def _subfolder_labels(folder: Path, files: list[str]) -> tuple[list[str], np.ndarray]:
    loose = [rel for rel in files if "/" not in rel]
    if loose:
        more = f"; {len(loose) - 1} more image(s) at the top level" if len(loose) > 1 else ""
        raise UserError(f"{folder / loose[0]}: no label (data.labels subfolders: each image goes in a "
                        f"sub-folder of {folder}, named by its class){more}")
    with os.scandir(folder) as entries:
        dirs = {entry.name for entry in entries if entry.is_dir(follow_symlinks=False)}
    of_file = [rel.split("/", 1)[0] for rel in files]
    with_images = set(of_file)
    classes = sorted(dirs | with_images, key=os.fsencode)
    empty = [name for name in classes if name not in with_images]
    if empty:
        raise UserError(f"{folder / empty[0]}: class '{empty[0]}' is empty (no image file in this sub-folder)")
    index = {name: i for i, name in enumerate(classes)}
    return classes, np.array([index[name] for name in of_file], np.int32)


def _file_labels(folder: Path, path: Path, files: list[str]) -> tuple[list[str], np.ndarray]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark is no field
    except FileNotFoundError:
        raise UserError(f"{path}: label file not found (params key 'data.labels')") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: label file is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read label file ({exc.strerror or exc})") from None
    known = set(files)
    of_path: dict[str, tuple[str, int]] = {}  # relative path -> (class, line)
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    header_seen = False
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise UserError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
        line = reader.line_num
        if not row or all(not field.strip() for field in row):
            continue
        if not header_seen:
            if [field.strip().lower() for field in row] != HEADER:
                raise UserError(f"{path} line {line}: the first row must be the header 'path,class'; "
                                f"got {','.join(row)!r}")
            header_seen = True
            continue
        if len(row) != 2:
            raise UserError(f"{path} line {line}: expected 2 fields (path,class), got {len(row)}")
        rel, name = row[0], row[1].strip()
        if not rel or not name:
            raise UserError(f"{path} line {line}: empty {'path' if not rel else 'class'}")
        norm = posixpath.normpath(rel)
        if rel.startswith("/") or norm == ".." or norm.startswith("../"):
            raise UserError(f"{path} line {line}: path {rel!r} must be relative to {folder} and stay inside it")
        if norm in of_path:
            raise UserError(f"{path} line {line}: {rel!r} already has a label (line {of_path[norm][1]})")
        if norm not in known:
            raise UserError(f"{path} line {line}: no image file {folder / norm} (missing, or not a "
                            ".jpg .jpeg .png .bmp .gif .webp .tif .tiff file)")
        of_path[norm] = (name, line)
    if not header_seen:
        raise UserError(f"{path}: label file is empty (expected the header 'path,class' and a row per image)")
    unlabelled = [rel for rel in files if rel not in of_path]
    if unlabelled:
        more = f"; {len(unlabelled) - 1} more image(s) without one" if len(unlabelled) > 1 else ""
        raise UserError(f"{folder / unlabelled[0]}: no label in {path}{more}")
    classes = sorted({name for name, _ in of_path.values()})
    index = {name: i for i, name in enumerate(classes)}
    return classes, np.array([index[of_path[rel][0]] for rel in files], np.int32)


# ---------------------------------------------------------------------------- after decoding
def check_class_sizes(classes: list[str], usable: np.ndarray, origins: list[str],
                      first_skipped: list[str | None], min_size: int) -> list[str]:
    """Check the usable images per class; return the names of the classes below ``min_size``.

    ``origins[i]`` is where class ``i`` comes from (its sub-folder, the label file),
    ``first_skipped[i]`` one of its skipped files with the reason, or None. Raises
    UserError naming the first class left with no usable image.
    """
    for name, count, origin, skipped in zip(classes, usable, origins, first_skipped):
        if count == 0:
            why = f"all its image files were skipped, e.g. {skipped}" if skipped else "no image has this label"
            raise UserError(f"{origin}: class '{name}' is empty ({why})")
    return [name for name, count in zip(classes, usable) if count < min_size]
