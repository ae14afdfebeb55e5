"""The DVC workflow of a folder of pictures, end to end on tiny data: the folder preset's every
stage, and pictures that travel through DVC (add, push, clone, pull) with entries in the folder
that no tool can read. Apart from tests/test_pipeline.py (the MNIST project) so that the two
long files run side by side under `make test`'s one-file-per-worker split.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from conftest import REPO, merge
from test_pipeline import (SCAN_ONLY, STAGES, TIMEOUT, TINY_FOLDER, TINY_MNIST, Project, _files, _tree,
                           check_plots_page, make_project, repo_params, write_tiny_images)


# ---------------------------------------------------------------------------- the folder preset
def test_folder_preset_end_to_end(tmp_path):
    """`make preset PRESET=folder-128`, shrunk to 16x16 on 40 tiny pictures, runs every stage."""
    project = make_project(tmp_path / "project", tmp_path / "dvc-site-cache", repo_params(**TINY_MNIST))
    write_tiny_images(project.root / "data" / "raw" / "images")
    out = project.run("make", "--no-print-directory", "preset", "PRESET=folder-128").stdout
    assert "keys presets/folder-128.yaml sets changed" in out
    preset = project.params()
    assert preset == merge(repo_params(**TINY_MNIST), yaml.safe_load((REPO / "presets" / "folder-128.yaml").read_text()))
    assert preset["data"]["source"] == "folder" and preset["data"]["channels"] == 3
    project.write_params(merge(preset, TINY_FOLDER))

    ran, out = project.repro()
    assert ran == set(STAGES), out
    root = project.root
    manifest = json.loads((root / "data" / "processed" / "manifest.json").read_text())
    assert manifest["count"] == 40 and manifest["shape"] == [16, 16, 3] and manifest["range"] == [0, 1]
    assert len(manifest["shards"]) == 3  # 16 + 16 + 8
    assert _files(root / "outputs" / "snapshots") == ["generator_epoch_0001.npz", "generator_epoch_0002.npz"]
    from PIL import Image
    side = 16 * -(-preset["sample"]["display_pixels"] // 16)  # enlarged by a whole factor (112 px: 7x)
    with Image.open(root / "outputs" / "samples" / "grid_epoch_0002.png") as grid:
        assert grid.mode == "RGB" and grid.size == (4 * side + 3 * 2, 2 * side + 2)
    with Image.open(root / "outputs" / "samples" / "generated_image_epoch_0002_0.png") as one:
        assert one.size == (16, 16)  # single images stay at the true size
    metrics = project.metrics()
    assert metrics["feature_net"] == "random-conv" and "inception_weights is off" in metrics["note"]
    assert metrics["num_samples"] == 16 and "swd" in metrics and "swd_real" in metrics
    for key in ("swd", "swd_real", "fd_random", "fd_random_real", "kd_random", "kd_random_real"):
        assert set(metrics[key + "_ci95"]) == {"lo", "hi"}, key
    assert "fid" not in metrics and "fid_keras_inception" not in metrics
    assert not (root / "outputs" / "classifier").exists()  # the shipped random conv net: nothing built
    curve = (root / "outputs" / "eval_curve.tsv").read_text().splitlines()
    assert curve[0] == "epoch\tswd" and len(curve) == 3
    assert '"swd"' in check_plots_page(project)

    ran, out = project.repro()
    assert ran == {"scan"}, out
    assert project.status_json() == SCAN_ONLY


# ---------------------------------------------------------------------------- pictures are DVC data
def _add_bad_entries(folder: Path) -> dict[str, str]:
    """What no tool can hash or read as a picture, in ``folder``; the report reason each must get."""
    os.symlink("nowhere/gone.png", folder / "broken link.png")
    os.symlink("loop.png", folder / "loop.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "album.png").mkdir()
    locked = folder / "locked.png"
    locked.write_bytes(b"not readable by the stage")
    os.chmod(locked, 0)
    want = {"broken link.png": "dangling symlink", "loop.png": "symlink loop",
            "pipe.png": "not a regular file (FIFO)", "album.png": "a folder, not an image file",
            # root reads any file: then it is read, and is not an image
            "locked.png": "unreadable: Permission denied" if os.geteuid() != 0 else "not an image"}
    return want


def _check_report(root: Path, want: dict[str, str], images: int) -> None:
    report = json.loads((root / "data" / "processed" / "report.json").read_text())
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(want), reasons
    for name, reason in want.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert report["images"] == images


def test_pictures_travel_through_dvc_and_no_folder_entry_stops_repro(tmp_path):
    """`dvc add` the pictures, push, clone, pull: nothing reruns, same shards. Then a dangling
    symlink, a symlink loop, a FIFO, an unreadable file and a folder named like an image, in
    the added folder and in a folder outside the repository: `dvc repro` runs to the end."""
    project = make_project(tmp_path / "project", tmp_path / "dvc-site-cache", repo_params(**TINY_MNIST))
    images = project.root / "data" / "raw" / "images"
    write_tiny_images(images, n=24)
    project.run("make", "--no-print-directory", "preset", "PRESET=folder-fast")
    project.write_params(merge(project.params(), TINY_FOLDER))
    project.dvc("add", "data/raw/images")
    ran, out = project.repro()
    assert ran == set(STAGES), out
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "pictures by DVC")
    tracked = project.run("git", "ls-files").stdout.split()
    assert "data/raw/images.dvc" in tracked and not any(t.startswith("data/raw/images/") for t in tracked)

    remote = tmp_path / "remote"
    project.dvc("remote", "add", "-d", "local", str(remote))
    project.dvc("push")
    clone = Project(tmp_path / "clone", Path(project.env["DVC_SITE_CACHE_DIR"]))
    subprocess.run(["git", "clone", "-q", str(project.root), str(clone.root)], check=True, env=clone.env,
                   timeout=TIMEOUT)
    assert not (clone.root / "data" / "raw" / "images").exists()
    clone.dvc("remote", "add", "-d", "local", str(remote))
    clone.dvc("pull")
    assert _tree(clone.root / "data" / "raw" / "images") == _tree(images)
    ran, out = clone.repro()
    assert ran == {"scan"}, out  # the index of the pulled pictures is the same bytes: nothing else reruns
    assert _tree(clone.root / "data" / "processed") == _tree(project.root / "data" / "processed")

    # Entries no tool can hash, in the DVC-tracked folder: the pipeline still runs to the end.
    want = _add_bad_entries(images)
    ran, out = project.repro()
    # the report in data/processed lists them: train reruns (and resumes, its shards are the same)
    assert {"scan", "preprocess", "train", "evaluate"} <= ran, out
    _check_report(project.root, want, 24)
    assert (project.root / "outputs" / "metrics.json").is_file()

    # The same in a folder outside the repository (an absolute data.folder).
    outside = tmp_path / "outside pictures"
    write_tiny_images(outside, n=20)
    want = _add_bad_entries(outside)
    project.set_param("data.folder", str(outside))
    ran, out = project.repro()
    assert ran == set(STAGES), out
    _check_report(project.root, want, 20)
    assert "ERROR" not in out and "Traceback" not in out
    # a quiet folder run: no TensorFlow error lines, no DVC warning about an empty output
    assert "E0000" not in out and "remapper" not in out and "is empty" not in out, out
    assert (project.root / "outputs" / "tensorboard" / "README.txt").is_file()
    os.chmod(outside / "locked.png", 0o644)
    os.chmod(images / "locked.png", 0o644)
