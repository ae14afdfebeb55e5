"""Fault injection: killed, interrupted and starved runs lose nothing and explain themselves.

The main test builds a scratch DVC project on tiny MNIST-format data, runs `dvc repro` once
without interruption (the reference), and in a second copy kills every stage at several
points (SIGKILL after a shard is written, before a shard or manifest is renamed into place,
mid-epoch, during a checkpoint write, during a snapshot write, during sampling and between
evaluated snapshots; SIGINT mid-epoch), rerunning `dvc repro` after
each. The final shards, generator weights, metrics and samples must equal the reference
byte for byte. The kill points come from ``src/faults.py`` (``GAN_FAULT=<label>:<n>[:<action>]``).

The other tests fill the disk or make the output folder read-only (a small tmpfs when this
machine allows ``mount``, an injected ENOSPC/EROFS otherwise) and check for one clear line,
exit status 2 and untouched earlier outputs.
"""
from __future__ import annotations

import contextlib
import errno
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
    "evaluate": {"num_samples": 64, "batch_size": 64, "kid_subsets": 2, "kid_subset_size": 32,
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


# ---------------------------------------------------------------------------- full or read-only disk
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """Mount a small tmpfs at ``path``; yields False when this machine does not allow it
    (or GAN_TEST_NO_MOUNT is set, to exercise the injected-error fallback)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if shutil.which("mount") and not os.environ.get("GAN_TEST_NO_MOUNT"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` so that at most ``leave`` bytes stay free."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        block = b"\0" * (1 << 16)
        with contextlib.suppress(OSError):
            while True:
                handle.write(block)
    with contextlib.suppress(OSError):
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def snapshot_tree(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {k: v for k, v in tree_bytes(folder).items() if k not in skip}


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def run(root: Path, stage: str, fault: str | None = None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("GAN_FAULT", None)
    if fault:
        env["GAN_FAULT"] = fault
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_full_disk_during_training_keeps_the_last_checkpoint(project):
    root = project(train={"epochs": 1, "steps_per_epoch": 2})
    outputs = root / "outputs"
    with tmpfs(outputs, "4m") as mounted:
        assert run(root, "train").returncode == 0
        before = snapshot_tree(outputs)
        (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("epochs: 1", "epochs: 3"))
        if mounted:
            # Room for the small JSON files, not for a checkpoint: the first save after training fails.
            size = (outputs / "checkpoints" / checkpoint.checkpoint_name(1, 2)).stat().st_size
            filler = fill(outputs, leave=min(size // 2, 64 << 10))
            result = run(root, "train")
        else:
            filler = None
            result = run(root, "train", fault="atomic/outputs/checkpoints/ckpt_*:1:ENOSPC")
        line = one_error_line(result)
        assert result.returncode == 2
        assert "No space left on device" in line and "outputs/" in line, line
        after = snapshot_tree(outputs, skip=("filler.bin",))
        for name in ("checkpoints/" + checkpoint.checkpoint_name(1, 2), "snapshots/generator_epoch_0001.npz",
                     "generator.keras"):
            assert after[name] == before[name], f"{name} changed"
        log = "train_log/plots/metrics/d_loss.tsv"
        assert after[log].startswith(before[log])  # rows only added
        print("full disk:", line)
        assert not [k for k in after if Path(k).name.startswith(".")], "temporary files left behind"
        # Space again: the run resumes from the intact checkpoint and finishes.
        if filler is not None:
            filler.unlink()
        again = run(root, "train")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resuming from" in again.stdout + again.stderr
    print("full disk simulated with", "a 4 MB tmpfs" if mounted else "an injected ENOSPC")


def _preprocess_project(root: Path, shard_size: int) -> None:
    tiny_mnist(root / "mnist")
    raw = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    raw["data"].update(mnist_dir=str(root / "mnist"), shard_size=shard_size)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_preprocess_on_full_or_read_only_disk_keeps_the_previous_output(tmp_path, kind):
    root = tmp_path / "p"
    root.mkdir()
    _preprocess_project(root, shard_size=128)
    data = root / "data"
    with tmpfs(data, "2m") as mounted:
        first = run(root, "preprocess")
        assert first.returncode == 0, first.stderr
        before = snapshot_tree(data)
        _preprocess_project(root, shard_size=64)  # new params: the stage must rebuild the shards
        if mounted and kind == "full":
            fill(data, leave=64 << 10)  # room for about one of the four new shards
            result = run(root, "preprocess")
        elif mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
            result = run(root, "preprocess")
        else:
            result = run(root, "preprocess", fault="atomic/*shard_00002.npy:1:" + ("ENOSPC" if kind == "full" else "EROFS"))
        line = one_error_line(result)
        assert result.returncode == 2
        reason = os.strerror(errno.ENOSPC if kind == "full" else errno.EROFS)
        assert reason in line and "data/" in line, line
        assert snapshot_tree(data, skip=("filler.bin",)) == before  # the earlier shards, byte for byte
        assert not (data / ".processed.staging").exists()


# ---------------------------------------------------------------------------- SIGINT
def test_sigint_mid_epoch_saves_a_checkpoint_and_says_where_it_resumes(project):
    # (SIGTERM from outside is covered in test_train.py; the DVC test above resumes after SIGINT
    # to the same weights as an uninterrupted run.)
    root = project(train={"epochs": 3, "steps_per_epoch": 3, "checkpoint_every": 100})
    result = run(root, "train", fault="chunk:5:INT")  # step 5 of 9: inside epoch 2
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    said = [line for line in (result.stdout + result.stderr).splitlines() if "stopped by signal 2" in line]
    assert len(said) == 1, result.stdout + result.stderr
    name = checkpoint.checkpoint_name(1, 5)
    assert "at epoch 2, step 5" in said[0] and name in said[0] and "resumes from there" in said[0]
    assert [p.name for p in checkpoint.list_checkpoints(root / "outputs" / "checkpoints")] == [name]
    assert not (root / "outputs" / "generator.keras").exists()
