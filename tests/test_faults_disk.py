"""A full or read-only disk, and SIGINT, lose nothing and explain themselves: one clear line,
exit status 2, earlier outputs untouched.

The disk is a small tmpfs when this machine allows ``mount``, an injected ENOSPC/EROFS
otherwise (``src/faults.py``). Apart from tests/test_faults.py (the kill points against an
uninterrupted reference) so that the two run side by side under `make test`'s
one-file-per-worker split.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, merge
from src import checkpoint
from test_faults import TINY, tiny_mnist, tree_bytes

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
