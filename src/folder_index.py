"""The content index of the image folder: what the preprocess stage reads, as DVC sees it.

A user's folder may hold entries no tool can hash: a dangling symlink or a symlink loop
(DVC stops with ``[Errno 2]``/``[Errno 40]``), a FIFO (DVC blocks forever reading it), an
unreadable file. So ``dvc.yaml`` never hashes the folder itself: the ``scan`` stage runs on
every ``dvc repro`` (``always_changed``), lists the folder with :func:`src.images.scan_images`
(which opens nothing but regular files) and writes this index: each usable file's relative
path, size and sha256, each skipped entry with its reason, and the sha256 of a label file
(``data.labels``) if one is named. The index is the
preprocess stage's dependency, so DVC reruns preprocess exactly when the bytes it would
read change, and the index's own bytes are the same for the same folder content anywhere
(no times, no absolute paths). Preprocess checks each file's sha256 against the index as it
decodes it, so a file changed between the two stages stops the run with one line.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from src.config import LABEL_KEYWORDS
from src.errors import UserError
from src.images import scan_images

VERSION = 1


def build_index(source: str, folder: str | os.PathLike | None, labels: str = "none") -> dict:
    """The index of ``folder`` (for ``source`` 'folder'), with the sha256 of the label file
    that ``labels`` (``data.labels``) names inside it, if any; for MNIST, only the source: the
    image folder is not read at all, so changing it reruns nothing."""
    if source != "folder":
        return {"version": VERSION, "source": source}
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"params key 'data.folder': '{folder}' is not a folder")
    names, skipped = scan_images(folder)
    files = []
    for rel in names:
        try:
            digest, size = _hash(folder / rel)
        except OSError as exc:  # e.g. no read permission
            skipped.append({"file": rel, "reason": f"unreadable: {exc.strerror or exc}"})
            continue
        files.append({"file": rel, "bytes": size, "sha256": digest})
    skipped.sort(key=lambda s: os.fsencode(s["file"]))
    index = {"version": VERSION, "source": source, "files": files, "skipped": skipped}
    if labels not in LABEL_KEYWORDS:  # a label file in the folder: its bytes decide the labels
        try:
            digest, size = _hash(folder / labels)
            index["label_file"] = {"file": labels, "bytes": size, "sha256": digest}
        except OSError as exc:  # preprocess says what is wrong with it, in one line
            index["label_file"] = {"file": labels, "error": exc.strerror or str(exc)}
    return index


def _hash(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def summary(index: dict) -> str:
    if index["source"] != "folder":
        return f"scan: data.source is {index['source']}; the image folder is not read"
    line = f"scan: {len(index['files'])} image files"
    if index["skipped"]:
        line += f", {len(index['skipped'])} entries skipped (listed in the preprocess report)"
    return line
