"""Tests for src/images.py: every format and mode, resize policies, skip reasons, listing."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import bomb_png
from src import images
from src.images import decode_image, list_images

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
BG = (10, 200, 30)


def decode(path, size=16, channels=3, resize="stretch", background=BG):
    arr, reason = decode_image(path, size, channels, resize, background)
    assert reason is None, reason
    assert arr.shape == (size, size, channels) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    return arr


def assert_color(arr, rgb, tol=0.06):
    np.testing.assert_allclose(arr.reshape(-1, arr.shape[-1]).mean(axis=0), np.array(rgb) / 255.0, atol=tol)


# ---------------------------------------------------------------------------- formats
@pytest.mark.parametrize("name,fmt", [
    ("a.jpg", "JPEG"), ("b.JPEG", "JPEG"), ("c.PNG", "PNG"), ("d.bmp", "BMP"),
    ("e.gif", "GIF"), ("f.webp", "WEBP"), ("g.tif", "TIFF"), ("h.TIFF", "TIFF"),
])
def test_every_format_and_uppercase_extension(tmp_path, name, fmt):
    Image.new("RGB", (40, 30), RED).save(tmp_path / name, fmt)
    assert_color(decode(tmp_path / name), RED)


@pytest.mark.parametrize("mode,color,expect", [
    ("1", 1, (255, 255, 255)), ("L", 128, (128, 128, 128)), ("P", None, GREEN), ("RGB", BLUE, BLUE),
])
def test_plain_modes(tmp_path, mode, color, expect):
    if mode == "P":
        img = Image.new("RGB", (20, 20), GREEN).convert("P")
    else:
        img = Image.new(mode, (20, 20), color)
    img.save(tmp_path / "x.png")
    assert_color(decode(tmp_path / "x.png"), expect, tol=0.01)


def test_grayscale_output_has_one_channel(tmp_path):
    Image.new("RGB", (20, 20), RED).save(tmp_path / "x.png")
    arr = decode(tmp_path / "x.png", channels=1)
    np.testing.assert_allclose(arr, 76 / 255, atol=0.01)  # ITU-R 601 luma of pure red


def test_transparency_is_composited_on_background(tmp_path):
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("LA", (20, 20), (0, 0)).save(tmp_path / "la.png")
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    pal.save(tmp_path / "pal.gif", transparency=0)
    for name in ("rgba.png", "la.png", "pal.png", "pal.gif"):
        assert_color(decode(tmp_path / name), BG, tol=0.01)


def test_pa_mode_in_memory():
    img = Image.new("PA", (8, 8), (0, 0))
    out = images._to_mode(img, 3, BG)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == BG


def test_half_transparent_blends(tmp_path):
    Image.new("RGBA", (20, 20), (255, 255, 255, 128)).save(tmp_path / "x.png")
    arr = decode(tmp_path / "x.png", background=(0, 0, 0))
    np.testing.assert_allclose(arr, 128 / 255, atol=0.01)


@pytest.mark.parametrize("fmt,name", [("PNG", "x16.png"), ("TIFF", "x16.tif")])
def test_16bit_is_scaled_not_clipped(tmp_path, fmt, name):
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(tmp_path / name, fmt)
    assert Image.open(tmp_path / name).mode.startswith("I")
    np.testing.assert_allclose(decode(tmp_path / name, channels=1), 40000 / 65535, atol=0.01)


def test_float_and_int32_tiff(tmp_path):
    Image.fromarray(np.full((20, 20), 0.25, np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_allclose(decode(tmp_path / "f.tif"), 0.25, atol=0.01)
    Image.fromarray(np.full((20, 20), 100, np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_allclose(decode(tmp_path / "i.tif"), 100 / 255, atol=0.01)


@pytest.mark.parametrize("fmt,name", [("JPEG", "cmyk.jpg"), ("TIFF", "cmyk.tif")])
def test_cmyk(tmp_path, fmt, name):
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / name, fmt)
    assert Image.open(tmp_path / name).mode == "CMYK"
    assert_color(decode(tmp_path / name), RED, tol=0.08)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c).convert("P") for c in (RED, BLUE, GREEN)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    assert_color(decode(tmp_path / "anim.gif"), RED, tol=0.02)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left side goes to the top
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = decode(tmp_path / "rot.jpg", size=16)
    assert_color(arr[:6], RED, tol=0.08)
    assert_color(arr[-6:], BLUE, tol=0.08)


def test_big_jpeg_uses_draft_mode(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    Image.new("RGB", (1600, 1200), GREEN).save(tmp_path / "big.jpg")
    calls, original = [], JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    assert_color(decode(tmp_path / "big.jpg", size=32), GREEN, tol=0.03)
    assert calls == [("RGB", (32, 32))]


# ---------------------------------------------------------------------------- resize policies
def test_resize_policies(tmp_path):
    img = Image.new("RGB", (60, 20), RED)
    img.paste(GREEN, (20, 0, 40, 20))  # red | green | red
    img.save(tmp_path / "wide.png")
    crop = decode(tmp_path / "wide.png", size=10, resize="center_crop")
    assert_color(crop, GREEN, tol=0.03)  # LANCZOS reads a little past the crop box edges
    pad = decode(tmp_path / "wide.png", size=12, resize="pad")
    assert_color(pad[:3], BG, tol=0.01)  # 60x20 fits as 12x4: bands of background above and below
    assert_color(pad[-3:], BG, tol=0.01)
    assert_color(pad[6, 5:7], GREEN, tol=0.1)
    stretch = decode(tmp_path / "wide.png", size=12, resize="stretch")
    assert_color(stretch[:, :2], RED, tol=0.05)
    assert_color(stretch[:, 5:7], GREEN, tol=0.1)
    gray_pad = decode(tmp_path / "wide.png", size=12, channels=1, resize="pad")
    assert abs(gray_pad[0, 0, 0] - (0.299 * 10 + 0.587 * 200 + 0.114 * 30) / 255) < 0.01


# ---------------------------------------------------------------------------- skip reasons
def reason_of(path):
    arr, reason = decode_image(path, 16, 3, "center_crop", BG)
    assert arr is None
    return reason


def test_skip_reasons(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, I am not a picture\n")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    assert reason_of(tmp_path / "trunc.jpg").startswith("truncated or corrupt")
    assert reason_of(tmp_path / "trunc.png").startswith("truncated or corrupt")
    assert reason_of(tmp_path / "empty.png") == "zero bytes"
    assert reason_of(tmp_path / "text.png") == "not an image"
    assert reason_of(tmp_path / "dangling.png").startswith("unreadable")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bombs(tmp_path):
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's default limit is in force
    bomb_png(tmp_path / "bomb.png", 20000, 20000)  # > 2x the limit: Pillow raises
    bomb_png(tmp_path / "warn.png", 10000, 10000)  # between 1x and 2x: Pillow only warns
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    assert reason_of(tmp_path / "bomb.png").startswith("decompression bomb")
    assert reason_of(tmp_path / "warn.png").startswith("decompression bomb")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_permission_denied(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    (tmp_path / "secret.png").chmod(0)
    assert reason_of(tmp_path / "secret.png").startswith("unreadable")


def test_permission_error_is_unreadable(tmp_path, monkeypatch):
    # Works as root too: stand in for the open() call that the OS would refuse.
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")

    def refuse(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", refuse, raising=False)
    assert reason_of(tmp_path / "x.png") == "unreadable: Permission denied"


def test_anything_else_is_cannot_decode(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")

    def boom(*args, **kwargs):
        raise ValueError("weird codec state\nsecond line")

    monkeypatch.setattr(images.Image, "open", boom)
    assert reason_of(tmp_path / "x.png") == "cannot decode: weird codec state"


# ---------------------------------------------------------------------------- listing
def test_listing_is_recursive_sorted_and_safe(tmp_path):
    for rel in ("b.png", "A.JPG", "sub/dir/c.webp", "with space.tif", "sub/z.gif", "notes.txt", "x.png.bak"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    odd = os.fsdecode(b"caf\xe9.bmp")  # latin-1 name: not valid UTF-8
    (tmp_path / odd).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # a folder loop must not be followed
    found = list_images(tmp_path)
    assert found == sorted(found, key=os.fsencode)
    assert found == ["A.JPG", "b.png", odd, "sub/dir/c.webp", "sub/z.gif", "with space.tif"]
    assert list_images(tmp_path) == found  # deterministic
