"""Keras ``.keras`` files with fixed bytes: the same weights always give the same file.

``model.save`` makes three things that change from one save to the next: ``metadata.json``
holds ``date_saved``, the weights member carries the current time in its zip header, and
``config.json`` numbers shared objects (the dtype policy) by their memory address
(``shared_object_id``). So two saves of one model differ and DVC sees a new output.
:func:`save_model` saves with Keras, then rewrites the archive with ``date_saved`` pinned to
:data:`DATE_SAVED`, the shared-object ids renumbered 0, 1, ... in order of appearance (the
same links, so loading is unchanged), every member dated 1980-01-01 (the zip epoch), and
writes it atomically.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from src.atomic import ZIP_EPOCH, write_bytes

DATE_SAVED = "1980-01-01@00:00:00"


def _renumber_shared(node, ids: dict) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "shared_object_id" and isinstance(value, int):
                node[key] = ids.setdefault(value, len(ids))
            else:
                _renumber_shared(value, ids)
    elif isinstance(node, list):
        for item in node:
            _renumber_shared(item, ids)


def normalized_bytes(raw: bytes) -> bytes:
    """``raw`` (a ``.keras`` archive) with the save date and member timestamps fixed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = DATE_SAVED
                data = json.dumps(meta).encode("utf-8")
            elif info.filename == "config.json":
                config = json.loads(data)
                _renumber_shared(config, {})
                data = json.dumps(config).encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            target.writestr(fixed, data)
    return out.getvalue()


def save_model(model, path: str | os.PathLike) -> None:
    """Save ``model`` to ``path`` (``.keras``) atomically, with bytes that depend on the model only."""
    with tempfile.TemporaryDirectory(prefix="keras-save-") as tmp:
        raw = Path(tmp) / "model.keras"
        model.save(raw)
        data = raw.read_bytes()
    write_bytes(path, normalized_bytes(data))
