"""Fault injection: killed, interrupted and starved runs lose nothing and explain themselves.

The main test builds a scratch DVC project on tiny MNIST-format data, runs `dvc repro` once
without interruption (the reference), and in a second copy kills every stage at several
points (SIGKILL after a shard is written, before a shard or manifest is renamed into place,
mid-epoch, during a checkpoint write, during a snapshot write, during sampling and between
evaluated snapshots; SIGINT mid-epoch), rerunning `dvc repro` after
each. The final shards, generator weights, metrics and samples must equal the reference
byte for byte. The kill points come from ``src/faults.py`` (``GAN_FAULT=<label>:<n>[:<action>]``).

A full or read-only disk and SIGINT: tests/test_faults_disk.py.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, merge, write_mnist
from src import checkpoint
from src.atomic import load_arrays

BIN = Path(sys.executable).parent
DVC = BIN / "dvc" if (BIN / "dvc").exists() else shutil.which("dvc")

TINY = {
    "common": {"seed": 5},
    "data": {"source": "mnist", "shard_size": 64, "workers": 1},
    "model": {"arch": "dcgan", "latent_dim": 16,
              "dcgan": {"g_filters": [16, 8], "d_filters": [8, 16]}},
    "train": {"epochs": 4, "steps_per_epoch": 2, "batch_size": 16, "checkpoint_every": 1,
              "keep_checkpoints": 3, "steps_per_call": 1},
    "sample": {"every_epochs": 2, "count": 8, "grid_columns": 4, "progress_columns": 4},
    "evaluate": {"num_samples": 64, "batch_size": 64, "kid_subsets": 2, "kid_subset_size": 32, "bootstrap": 10,
                 "swd_patches_per_image": 8, "swd_projections": 32, "curve_samples": 32,
                 "classifier": {"epochs": 1, "batch_size": 64}},
}
TRAIN_IMAGES = 256   # 4 shards of 64
TEST_IMAGES = 64


# ---------------------------------------------------------------------------- scratch project
def tiny_mnist(folder: Path) -> None:
    """MNIST-format IDX files: a bright bar whose position is the label, plus noise."""
    rng = np.random.default_rng(3)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            image[4 + 2 * label:6 + 2 * label, 4:24] = 255
        return images, labels

    write_mnist(folder, split(TRAIN_IMAGES), split(TEST_IMAGES))


def build_project(root: Path) -> Path:
    """A self-contained DVC project: this repo's pipeline and code, tiny data and params."""
    root.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("stages", "src"):
        shutil.copytree(REPO / item, root / item, ignore=ignore)
    for item in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / item, root / item)
    shutil.copytree(REPO / "data" / "rulers", root / "data" / "rulers")  # shipped, as a clone has them
    shutil.copytree(REPO / "data" / "weights", root / "data" / "weights")  # a train dep, in git
    (root / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
    tiny_mnist(root / "data" / "raw" / "mnist")
    (root / "data" / "raw" / "images").mkdir(parents=True)
    (root / "data" / "raw" / "images" / "README.md").write_text("folder source (unused here)\n")
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def dvc(root: Path, *args: str, fault: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("GAN_FAULT", None)
    if fault:
        env["GAN_FAULT"] = fault
    result = subprocess.run([str(DVC), *args], cwd=root, env=env, capture_output=True, text=True,
                            timeout=timeout)
    result.output = result.stdout + result.stderr
    return result


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stale_temps(root: Path) -> list[str]:
    """Temporary files left inside the folders DVC tracks (they would be cached as outputs)."""
    found = []
    for out in ("data/processed", "outputs/checkpoints", "outputs/snapshots", "outputs/samples"):
        if (root / out).is_dir():
            found += [p.relative_to(root).as_posix() for p in (root / out).rglob(".*") if p.is_file()]
    return found


def final_state(root: Path) -> dict:
    """What must not depend on interruptions: shards, weights, metrics, curves, samples."""
    ckpts = checkpoint.list_checkpoints(root / "outputs" / "checkpoints")
    return {
        "processed": tree_bytes(root / "data" / "processed"),
        "checkpoint": (ckpts[-1].name, load_arrays(ckpts[-1])),
        "snapshots": {p.name: load_arrays(p) for p in sorted((root / "outputs" / "snapshots").glob("*.npz"))},
        "metrics": (root / "outputs" / "metrics.json").read_bytes(),
        "curve": (root / "outputs" / "eval_curve.tsv").read_bytes(),
        "samples": tree_bytes(root / "outputs" / "samples"),
    }


def assert_same_arrays(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), what
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


def checkpoint_names(root: Path) -> list[str]:
    return [p.name for p in checkpoint.list_checkpoints(root / "outputs" / "checkpoints")]


# ---------------------------------------------------------------------------- kill and rerun
# (GAN_FAULT, dvc target, stage that must fail, check of the state the kill left behind)
def _after_shard_kill(root):
    assert not (root / "data" / "processed").exists()
    staged = sorted(p.name for p in (root / "data" / ".processed.staging").glob("shard_*.npy"))
    assert staged == ["shard_00000.npy", "shard_00001.npy"]  # killed after the second of four


def _after_manifest_kill(root):
    assert not (root / "data" / "processed").exists()
    assert len(list((root / "data" / ".processed.staging").glob("shard_*.npy"))) == 4


def _after_mid_epoch_kill(root):
    assert checkpoint_names(root) == [checkpoint.checkpoint_name(1, 2)]
    assert not (root / "outputs" / "generator.keras").exists()


def _after_sigint(root):
    # A clean stop half-way through epoch 2 saves the exact state (step 3 of 8).
    assert checkpoint_names(root)[-1] == checkpoint.checkpoint_name(1, 3)


def _after_checkpoint_write_kill(root):
    assert checkpoint_names(root)[-1] == checkpoint.checkpoint_name(2, 4)
    assert load_arrays(root / "outputs" / "checkpoints" / checkpoint.checkpoint_name(2, 4))


def _after_snapshot_write_kill(root):
    assert checkpoint_names(root)[-1] == checkpoint.checkpoint_name(3, 6)
    assert sorted(p.name for p in (root / "outputs" / "snapshots").glob("*.npz")) == ["generator_epoch_0002.npz"]


def _after_render_kill(root):
    pngs = sorted(p.name for p in (root / "outputs" / "samples").glob("grid_*.png"))
    assert pngs == ["grid_epoch_0002.png"]


def _after_curve_kill(root):
    assert not (root / "outputs" / "metrics.json").exists()


KILLS = [
    ("shard:2", "preprocess", "preprocess", _after_shard_kill),
    ("atomic/data/.processed.staging/manifest.json:1", "preprocess", "preprocess", _after_manifest_kill),
    ("chunk:3", "train", "train", _after_mid_epoch_kill),
    ("chunk:1:INT", "train", "train", _after_sigint),
    ("atomic/outputs/checkpoints/ckpt_e000003_*:1", "train", "train", _after_checkpoint_write_kill),
    ("atomic/outputs/snapshots/generator_epoch_0004.npz:1", "train", "train", _after_snapshot_write_kill),
    ("render:1", "sample", "sample", _after_render_kill),
    ("curve:1", "evaluate", "evaluate", _after_curve_kill),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    if DVC is None:
        pytest.skip("dvc is not installed")
    return build_project(tmp_path_factory.mktemp("template") / "project")


def test_killed_stages_rerun_to_the_same_bytes(template, tmp_path):
    timings = {}
    reference = tmp_path / "reference"
    shutil.copytree(template, reference, symlinks=True)
    faulted = tmp_path / "faulted"
    shutil.copytree(template, faulted, symlinks=True)

    # The uninterrupted reference runs in the background while the faulted copy is worked on.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("GAN_FAULT", None)
    started = time.perf_counter()
    with open(tmp_path / "reference.log", "w") as log:
        ref_proc = subprocess.Popen([str(DVC), "repro"], cwd=reference, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    finished = False
    try:
        for fault, target, stage, check in KILLS:
            t0 = time.perf_counter()
            result = dvc(faulted, "repro", target, fault=fault)
            timings[fault] = round(time.perf_counter() - t0, 1)
            assert result.returncode != 0, f"{fault}: the run was not interrupted\n{result.output[-3000:]}"
            assert "fault injected:" in result.output, f"{fault}: the fault point was never reached\n{result.output[-3000:]}"
            assert f"'{stage}'" in result.output, f"{fault}: expected stage {stage} to fail\n{result.output[-3000:]}"
            if fault.endswith(":INT"):
                assert "stopped by signal 2 at epoch 2, step 3" in result.output, result.output[-3000:]
                assert "resumes from there" in result.output and "Traceback" not in result.output
            check(faulted)
        t0 = time.perf_counter()
        final = dvc(faulted, "repro")
        timings["final rerun"] = round(time.perf_counter() - t0, 1)
        assert final.returncode == 0, final.output[-4000:]
        assert "Traceback" not in final.output, final.output[-4000:]
        status = dvc(faulted, "status")  # the scan stage runs on every repro (dvc.yaml): nothing else
        assert status.returncode == 0 and status.output.split() == ["scan:", "always", "changed"], status.output
        finished = True
    finally:
        if not finished:  # no need for the reference: stop it (its own process group) and report
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ref_proc.pid, signal.SIGKILL)
        ref_proc.wait(timeout=900)
    timings["reference (in parallel)"] = round(time.perf_counter() - started, 1)
    ref_log = (tmp_path / "reference.log").read_text()
    assert ref_proc.returncode == 0, ref_log[-4000:]
    print("timings (s):", timings)

    want, got = final_state(reference), final_state(faulted)
    assert got["processed"] == want["processed"], "shards, manifest or report differ"
    assert got["checkpoint"][0] == want["checkpoint"][0]
    assert_same_arrays(want["checkpoint"][1], got["checkpoint"][1], "final checkpoint")
    assert sorted(got["snapshots"]) == sorted(want["snapshots"]) == ["generator_epoch_0002.npz",
                                                                     "generator_epoch_0004.npz"]
    for name in want["snapshots"]:
        assert_same_arrays(want["snapshots"][name], got["snapshots"][name], name)
    assert got["metrics"] == want["metrics"]
    assert got["curve"] == want["curve"]
    assert got["samples"] == want["samples"]
    assert stale_temps(faulted) == []
    # The generator export holds the EMA weights of the last snapshot.
    assert (faulted / "outputs" / "generator.keras").is_file()
