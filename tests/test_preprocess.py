"""Tests for src/preprocess.py, src/dataset.py and stages/preprocess.py."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src.preprocess as prep
from conftest import REPO, bomb_png, write_mnist
from src.atomic import sha256_file
from src.config import DataParams, to_dict
from src.dataset import open_shards, read_manifest
from src.errors import UserError

GOOD = ("a.png", "b/c.JPG", "d e.gif", "f.webp")
BROKEN = {"empty.png": "zero bytes", "text.png": "not an image", "trunc.jpg": "truncated or corrupt",
          "trunc.png": "truncated or corrupt", "bomb.png": "decompression bomb"}


def make_folder(root: Path) -> Path:
    """A folder with four good images of mixed formats and sizes, five broken ones, one non-image."""
    rng = np.random.default_rng(0)
    folder = root / "images"
    (folder / "b").mkdir(parents=True)
    sizes = [(40, 30), (24, 48), (33, 33), (64, 20)]
    for name, (w, h) in zip(GOOD, sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / name)
    noise = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(noise, "JPEG")
    (folder / "trunc.jpg").write_bytes(noise.getvalue()[:400])
    noise = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(noise, "PNG")
    (folder / "trunc.png").write_bytes(noise.getvalue()[:1500])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not a picture\n")
    (folder / "notes.txt").write_text("ignored: no image extension\n")
    bomb_png(folder / "bomb.png")
    return folder


def folder_params(folder: Path, **over) -> DataParams:
    base = dict(source="folder", folder=str(folder), image_size=16, channels=3, range=[0, 1],
                shard_size=3, workers=2)
    return DataParams(**{**base, **over})


def make_mnist(folder: Path, n=12) -> np.ndarray:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 28, 28), np.uint8)
    write_mnist(folder, (images, rng.integers(0, 10, n).astype(np.uint8)), (images[:2], np.zeros(2, np.uint8)))
    return images


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("src"))


# ---------------------------------------------------------------------------- folder source
@pytest.mark.parametrize("value_range", [[0, 1], [-1, 1]])
def test_folder_shards_manifest_and_report(folder, tmp_path, capsys, value_range):
    out = tmp_path / "processed"
    data = folder_params(folder, range=value_range)
    manifest = prep.preprocess(data, 7, out)

    assert manifest == read_manifest(out)
    assert manifest["count"] == len(GOOD) and manifest["shape"] == [16, 16, 3]
    assert manifest["dtype"] == "float32" and manifest["range"] == value_range
    assert manifest["source"] == "folder" and manifest["folder"] == str(folder)
    # Unlabelled data records no label keys: its manifest keeps the bytes of before labels (test_labels.py).
    recorded = {k: v for k, v in to_dict(data).items() if k not in ("labels", "min_class_size", "clusters")}
    assert manifest["params"] == {"data": recorded, "seed": 7}
    assert [s["file"] for s in manifest["shards"]] == ["shard_00000.npy", "shard_00001.npy"]
    assert [s["count"] for s in manifest["shards"]] == [3, 1]
    for entry in manifest["shards"]:
        assert entry["sha256"] == sha256_file(out / entry["file"])

    _, shards = open_shards(out)
    stacked = np.concatenate(shards)
    assert stacked.shape == (4, 16, 16, 3) and stacked.dtype == np.float32
    lo, hi = value_range
    assert lo <= stacked.min() < lo + 0.1 and hi - 0.1 < stacked.max() <= hi  # noise spans the range

    report = json.loads((out / "report.json").read_text())
    got = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(got) == set(BROKEN)
    for name, kind in BROKEN.items():
        assert got[name].startswith(kind), (name, got[name])
    assert report["total_files"] == 9 and report["images"] == 4 and report["skipped_count"] == 5
    assert report["skipped_by_reason"] == {"decompression bomb": 1, "not an image": 1,
                                           "truncated or corrupt": 2, "zero bytes": 1}

    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert line.startswith(f"preprocess: 4 images -> 2 shard(s) of 16x16x3 in [{lo}, {hi}]; skipped 5 (")
    assert line.endswith(f"report: {out / 'report.json'}")


def test_order_follows_sorted_file_list(folder, tmp_path):
    out = tmp_path / "p"
    prep.preprocess(folder_params(folder, shard_size=10, workers=1), 0, out)
    _, (shard,) = open_shards(out)
    from src.images import decode_image
    for i, rel in enumerate(sorted(GOOD, key=os.fsencode)):
        expect, _ = decode_image(folder / rel, 16, 3, "center_crop", (255, 255, 255))
        np.testing.assert_array_equal(shard[i], expect)


def test_grayscale_pad_policy(folder, tmp_path):
    manifest = prep.preprocess(folder_params(folder, channels=1, resize="pad", image_size=8), 0, tmp_path / "p")
    assert manifest["shape"] == [8, 8, 1]
    _, shards = open_shards(tmp_path / "p")
    assert all(s.shape[1:] == (8, 8, 1) for s in shards)


def test_deterministic_bytes(folder, tmp_path):
    prep.preprocess(folder_params(folder), 0, tmp_path / "one")
    prep.preprocess(folder_params(folder), 0, tmp_path / "two")
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")  # shards, manifest, report
    # The worker count changes only the recorded params, never the shard bytes.
    prep.preprocess(folder_params(folder, workers=1), 0, tmp_path / "three")
    one, three = shard_bytes(tmp_path / "one"), shard_bytes(tmp_path / "three")
    assert {k: v for k, v in one.items() if k.endswith(".npy")} == {k: v for k, v in three.items() if k.endswith(".npy")}


def test_empty_folder_is_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="empty"):
        prep.preprocess(folder_params(tmp_path / "empty"), 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_only_broken_images_is_user_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    with pytest.raises(UserError, match=str(bad)):
        prep.preprocess(folder_params(bad), 0, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.staging").exists()


def test_interrupted_run_keeps_previous_output(folder, tmp_path, monkeypatch):
    out = tmp_path / "processed"
    prep.preprocess(folder_params(folder), 0, out)
    before = shard_bytes(out)

    real_save, calls = prep.save_npy, []

    def save_then_die(path, array):
        if calls:
            raise KeyboardInterrupt  # as if killed while writing the second shard
        calls.append(path)
        real_save(path, array)

    monkeypatch.setattr(prep, "save_npy", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        prep.preprocess(folder_params(folder, range=[-1, 1]), 0, out)
    assert calls, "the first shard should have been written before the failure"
    assert shard_bytes(out) == before  # the previous complete output, untouched
    open_shards(out)  # and still valid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]  # no staging folder left visible


# ---------------------------------------------------------------------------- MNIST source
@pytest.mark.parametrize("value_range", [[-1, 1], [0, 1]])
def test_mnist_source(tmp_path, value_range):
    mnist_dir = tmp_path / "mnist"
    mnist_dir.mkdir()
    images = make_mnist(mnist_dir)
    data = DataParams(source="mnist", mnist_dir=str(mnist_dir), range=value_range, shard_size=5)
    manifest = prep.preprocess(data, 42, tmp_path / "p")
    assert manifest["count"] == 12 and manifest["shape"] == [28, 28, 1] and manifest["range"] == value_range
    assert manifest["source"] == "mnist" and [s["count"] for s in manifest["shards"]] == [5, 5, 2]
    _, shards = open_shards(tmp_path / "p")
    lo, hi = value_range
    expect = (images.astype(np.float32) / 255 * (hi - lo) + lo)[..., None]
    np.testing.assert_allclose(np.concatenate(shards), expect, atol=1e-6)
    assert np.concatenate(shards).min() >= lo and np.concatenate(shards).max() <= hi


# ---------------------------------------------------------------------------- reader
@pytest.fixture
def processed(folder, tmp_path):
    out = tmp_path / "p"
    prep.preprocess(folder_params(folder), 0, out)
    return out


def test_open_shards_detects_sha_mismatch(processed):
    shard = processed / "shard_00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="shard_00001.npy.*sha256"):
        open_shards(processed)
    _, arrays = open_shards(processed, verify=False)  # same size: readable when not verifying
    assert len(arrays) == 2


def test_open_shards_detects_truncation(processed):
    shard = processed / "shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match="shard_00000.npy"):
        open_shards(processed)
    with pytest.raises(UserError, match="shard_00000.npy"):
        open_shards(processed, verify=False)


def test_open_shards_detects_missing_and_bad_manifest(processed):
    (processed / "shard_00001.npy").unlink()
    with pytest.raises(UserError, match="shard_00001.npy"):
        open_shards(processed, verify=False)
    (processed / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json"):
        read_manifest(processed)
    (processed / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest.json"):
        read_manifest(processed)


def test_open_shards_is_memory_mapped(processed):
    _, arrays = open_shards(processed)
    assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in arrays)


# ---------------------------------------------------------------------------- stage script
def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "stages" / "preprocess.py")], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_stage_bad_params_exits_2_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  channels: 5\n")
    result = run_stage(tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.channels" in lines[0], result.stderr


def test_stage_runs_on_mnist(tmp_path):
    mnist_dir = tmp_path / "data" / "raw" / "mnist"
    mnist_dir.mkdir(parents=True)
    make_mnist(mnist_dir)
    (tmp_path / "params.yaml").write_text("common:\n  seed: 3\n")
    result = run_stage(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("preprocess: 12 images -> 1 shard(s) of 28x28x1 in [-1, 1]; "
                                     "report: data/processed/report.json")
    assert read_manifest(tmp_path / "data" / "processed")["count"] == 12
