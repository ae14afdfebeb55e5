"""Finding and decoding user image files for the 'folder' data source.

``scan_images(folder)`` gives the image files under a folder in a fixed order, and every
entry named like an image that is not one (dangling symlink, loop, FIFO, folder) with why.
``decode_image(path, size, channels, resize, background)`` turns one file into a float32
(size, size, channels) array in [0, 1], or returns a skip reason. A bad file is never
fatal: reasons are 'zero bytes', 'not an image', 'truncated or corrupt: ...',
'decompression bomb: ...', 'unreadable: ...' and 'cannot decode: ...'.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CHANGED = "changed since the scan"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# LANCZOS after an integer box-reduction when shrinking > 3x: nearly the same
# quality as plain LANCZOS, several times faster on large photos.
_FILTER = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


# ---------------------------------------------------------------------------- listing
def _entry_problem(path: str) -> str | None:
    """Why the directory entry ``path`` (named like an image) cannot be read as an image
    file, or None when it is a regular file or a symlink to one. Never opens the entry, so
    a FIFO or a device cannot block the scan."""
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"dangling symlink: points to {os.readlink(path)}"
        return f"unreadable: {exc.strerror or _short(exc)}"
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not an image file" + (" (a symlink; not entered)" if os.path.islink(path) else "")
    if not stat.S_ISREG(st.st_mode):
        kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special file")
        return f"not a regular file ({kind})"
    return None


def scan_images(folder: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """The image files under ``folder`` and the entries named like images that are not.

    Returns ``(files, skipped)``: ``files`` are paths relative to ``folder`` ('/'-separated)
    of regular files (or symlinks to one) with an image extension; ``skipped`` holds
    ``{"file", "reason"}`` for every other entry with an image extension: a dangling
    symlink, a symlink loop, a FIFO, socket or device, a folder named like an image (its
    contents are still scanned) or an entry that cannot be looked at. Recursive; symlinked
    folders are not entered (no loops); both lists are sorted by the relative path as bytes,
    so the order is the same on every machine and for any name (spaces, non-UTF-8 bytes).
    Nothing here opens a file.
    """
    root = os.fspath(folder)
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames + dirnames:
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            rel = (name if rel_dir == "." else os.path.join(rel_dir, name)).replace(os.sep, "/")
            problem = _entry_problem(os.path.join(dirpath, name))
            if problem is None:
                found.append(rel)
            else:
                skipped.append({"file": rel, "reason": problem})
    found.sort(key=os.fsencode)
    skipped.sort(key=lambda s: os.fsencode(s["file"]))
    return found, skipped


def list_images(folder: str | os.PathLike) -> list[str]:
    """The usable image files of :func:`scan_images` (relative paths, in its fixed order)."""
    return scan_images(folder)[0]


# ---------------------------------------------------------------------------- decoding
def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0] if text else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring high-depth single-channel modes to 'L' by scaling, not clipping.

    Pillow's own ``convert('L')`` clips 16-bit values at 255 (almost all white).
    'I' and 'F' do not say their bit depth: values above 255 are taken as 16-bit,
    floats up to 1.0 as [0, 1] data.
    """
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    elif img.mode == "I":
        scaled = arr.astype(np.float32) / (257.0 if arr.max(initial=0) > 255 else 1.0)
    else:  # 'F'
        scaled = arr.astype(np.float32) * (255.0 if arr.max(initial=0.0) <= 1.0 else 1.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _to_mode(img: Image.Image, channels: int, background: Sequence[int]) -> Image.Image:
    """Convert any Pillow mode to 'L' (channels 1) or 'RGB' (channels 3).

    Transparent pixels are composited on ``background`` first, so they do not turn
    black (what a bare convert would do).
    """
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        canvas.alpha_composite(rgba)
        img = canvas.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _resize(img: Image.Image, size: int, policy: str, background: Sequence[int]) -> Image.Image:
    """Make ``img`` a size x size square by ``policy`` (center_crop, pad or stretch)."""
    w, h = img.size
    if policy == "center_crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
        return img.resize((size, size), _FILTER, box=box, reducing_gap=_REDUCING_GAP)
    if policy == "stretch":
        return img.resize((size, size), _FILTER, reducing_gap=_REDUCING_GAP)
    # pad: fit the long side, centre on a background square.
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    inner = img.resize(new, _FILTER, reducing_gap=_REDUCING_GAP)
    fill = tuple(background) if img.mode == "RGB" else Image.new("RGB", (1, 1), tuple(background)).convert("L").getpixel((0, 0))
    canvas = Image.new(img.mode, (size, size), fill)
    canvas.paste(inner, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def decode_image(path: str | os.PathLike, size: int, channels: int, resize: str = "center_crop",
                 background: Sequence[int] = (255, 255, 255),
                 expect_sha256: str | None = None) -> tuple[np.ndarray | None, str | None]:
    """Decode one image file.

    In: the file path, target square ``size``, ``channels`` (1 or 3), resize policy and
    background RGB (for transparency and padding). Out: ``(array, None)`` with a float32
    (size, size, channels) array in [0, 1], or ``(None, reason)`` when the file is skipped.
    With ``expect_sha256`` (the scan's hash), a file whose bytes differ gives ``CHANGED``.
    """
    try:
        with open(path, "rb") as raw_file:
            raw = raw_file.read()
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or _short(exc)}"
    if not raw:
        return None, "zero bytes"
    if expect_sha256 is not None and hashlib.sha256(raw).hexdigest() != expect_sha256:
        return None, CHANGED
    with io.BytesIO(raw) as handle, warnings.catch_warnings():
        # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS and raises above: both are skips.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(handle)
        except UnidentifiedImageError:
            return None, "not an image"
        except _BOMBS as exc:
            return None, f"decompression bomb: {_short(exc)}"
        except (OSError, SyntaxError, EOFError) as exc:  # a known format whose header is cut or broken
            return None, f"truncated or corrupt: {_short(exc)}"
        except Exception as exc:
            return None, f"cannot decode: {_short(exc)}"
        try:
            if img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= size): big speed-up.
                img.draft("L" if channels == 1 else "RGB", (size, size))
            img.load()  # first frame only, for GIF/WebP/TIFF with several
        except _BOMBS as exc:
            return None, f"decompression bomb: {_short(exc)}"
        except (OSError, SyntaxError, EOFError) as exc:
            return None, f"truncated or corrupt: {_short(exc)}"
        except Exception as exc:
            return None, f"cannot decode: {_short(exc)}"
        try:
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:
                pass  # unreadable EXIF: keep the pixels as stored rather than drop the image
            img = _resize(_to_mode(img, channels, background), size, resize, background)
            arr = np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)
        except Exception as exc:
            return None, f"cannot decode: {_short(exc)}"
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, None


def reason_kind(reason: str) -> str:
    """The category of a skip reason (the part before ':'), for counting."""
    return reason.split(":", 1)[0]
