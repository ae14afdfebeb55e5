"""Resume: a stopped, killed, lengthened or shortened run ends with the weights of one that
was not; a change of what shapes the weights starts fresh instead."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TRAIN_PATHS as PATHS, run_stage, tiny_params, train_paths
from src import checkpoint
from src.atomic import load_arrays
from src.train_log import image_files, read_rows
from src.training_loop import LOG_COLUMNS, train


def _final_state(project_dir: Path) -> dict:
    found = checkpoint.load_latest(project_dir / PATHS["checkpoints"])
    assert found is not None
    return found[0]


def _copy_project(source: Path, target: Path) -> Path:
    for item in ("params.yaml", "data"):
        subprocess.run(["cp", "-r", str(source / item), str(target)], check=True)
    return target


def _assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _resume_after_losing_the_last_checkpoint(straight: Path, target: Path):
    """A copy of the finished run in ``straight`` whose newest checkpoint is gone (as if the
    run had been killed while writing it), trained again: it must resume from the one before."""
    other = _copy_project(straight, target)
    subprocess.run(["cp", "-r", str(straight / "outputs"), str(other)], check=True)
    *_, before, last = checkpoint.list_checkpoints(other / PATHS["checkpoints"])
    (other / PATHS["checkpoints"] / last.name).unlink()
    result = run_stage(other, "train")
    assert result.returncode == 0, result.stderr
    assert f"resuming from {PATHS['checkpoints']}/{before.name}" in result.stderr + result.stdout
    return other


def test_raising_epochs_continues_a_finished_run_to_the_same_weights(project, tmp_path_factory):
    straight = project(train={"epochs": 2})
    assert run_stage(straight, "train").returncode == 0
    reference = _final_state(straight)

    other = _copy_project(straight, tmp_path_factory.mktemp("resumed"))
    text = (other / "params.yaml").read_text()
    (other / "params.yaml").write_text(text.replace("epochs: 2", "epochs: 1"))
    assert run_stage(other, "train").returncode == 0
    (other / "params.yaml").write_text(text)
    second = run_stage(other, "train")
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stderr + second.stdout
    _assert_same_state(reference, _final_state(other))
    assert list(read_rows(other / PATHS["log"])) == [1, 2]


@pytest.mark.parametrize("variant", [
    {"model": {"arch": "mlp"}, "train": {"jit_compile": True, "steps_per_call": 2, "steps_per_epoch": 5}},
    # The small-folder options: adaptive augmentation (its probability is checkpointed state),
    # spectral norm (its power-iteration vectors too), resize upsampling with deeper generator
    # blocks (their BatchNorm statistics), self-attention, minibatch std, a residual
    # D with FastGAN's decoder (its weights and their Adam moments are checkpointed), lazy R1,
    # LeCam (its moving averages are checkpointed), and the mirror and the learning-rate ramp-down (functions of the step: no state of their own).
    {"model": {"dcgan": {"spectral_norm": True, "upsample": "bilinear", "minibatch_std": True, "dropout": 0.0,
                         "d_residual": True, "g_block_convs": 1, "attention": 4}},
     "train": {"augment": {"policy": ["color", "translation", "cutout"], "probability": 0.3, "adaptive": True,
                           "speed_kimg": 0.05}, "reconstruction": 1.0, "r1_gamma": 1.0, "r1_every": 2,
               "lecam": 0.3, "mirror": True, "lr_rampdown": 1.0}},
], ids=["mlp-xla-chunks", "dcgan-adaptive-augment-sn"])
def test_resume_gives_the_same_weights(project, tmp_path_factory, variant):
    straight = project(**{**variant, "train": {**variant.get("train", {}), "epochs": 2}})
    assert run_stage(straight, "train").returncode == 0
    reference = _final_state(straight)
    other = _resume_after_losing_the_last_checkpoint(straight, tmp_path_factory.mktemp("resumed"))
    _assert_same_state(reference, _final_state(other))
    assert list(read_rows(other / PATHS["log"])) == [1, 2]  # epoch 2's row once, not twice


def test_with_rampdown_another_length_starts_fresh(project, capsys):
    """The rates follow the run's length: with lr_rampdown, raising train.epochs is a new run
    (without it, the same run continued), and a checkpoint from before a key existed (no such
    key in its fingerprint) still resumes when the key is at its default, and not otherwise."""
    manifest = {"shards": [{"sha256": "x"}]}
    fp = lambda **t: checkpoint.fingerprint(tiny_params(train=t), manifest)  # noqa: E731
    assert fp(epochs=1) == fp(epochs=2)
    assert fp(epochs=1, lr_rampdown=0.5) != fp(epochs=2, lr_rampdown=0.5)
    assert fp(mirror=True) != fp() and fp(lr_rampdown=0.5) != fp()

    def changed(new, *dropped):  # what a checkpoint made before the ``dropped`` keys existed sees
        old = checkpoint.fingerprint(tiny_params(), manifest)
        for section, key in dropped:
            del old[section][key]
        return checkpoint._changed_keys(old, new, checkpoint._default_fingerprint())
    before = [("train", "mirror"), ("train", "lr_rampdown"), ("train", "reconstruction")]
    assert changed(fp(), *before) == []
    assert changed(fp(mirror=True), *before) == ["train.mirror"]
    assert changed(fp(reconstruction=1.0), *before) == ["train.reconstruction"]
    assert changed(fp(lr_rampdown=0.5), *before) == ["train.epochs", "train.lr_rampdown"]
    assert changed(fp(epochs=7), ("train", "mirror")) == []
    assert changed(fp(mirror=True)) == ["train.mirror"]  # keys both have compare as before

    root = project(train={"epochs": 1, "lr_rampdown": 0.5})
    paths = train_paths(root)
    train(tiny_params(train={"epochs": 1, "lr_rampdown": 0.5}), root / "data" / "processed", paths)
    capsys.readouterr()
    train(tiny_params(train={"epochs": 2, "lr_rampdown": 0.5}), root / "data" / "processed", paths)
    said = "".join(capsys.readouterr())
    assert "train.epochs" in said and "starting fresh" in said, said
    assert read_rows(root / PATHS["log"]) and list(read_rows(root / PATHS["log"])) == [1, 2]


def test_mirror_and_rampdown_each_change_the_weights(project):
    """Each option reaches the trained weights (else the resume test above, which has both on,
    would prove nothing about them)."""
    on = {"epochs": 1, "steps_per_epoch": 4, "mirror": True, "lr_rampdown": 1.0}
    root = project(train=on)

    def weights(**change):  # each run in its own outputs folder, from the same shards
        paths = train_paths(root / f"run-{len(list(root.glob('run-*')))}")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train(tiny_params(train={**on, **change}), root / "data" / "processed", paths)
        return load_arrays(checkpoint.list_checkpoints(paths.checkpoints)[-1])

    both = weights()
    assert _same_arrays(both, weights())  # the comparison below is not noise
    for key, off in (("mirror", False), ("lr_rampdown", 0.0)):
        assert not _same_arrays(both, weights(**{key: off})), key


def _same_arrays(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_to_the_same_weights(project, tmp_path_factory):
    override = dict(train={"epochs": 6, "steps_per_epoch": 4, "checkpoint_every": 1})
    straight = project(**override)
    assert run_stage(straight, "train").returncode == 0
    reference = _final_state(straight)

    killed = _copy_project(straight, tmp_path_factory.mktemp("killed"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, str(REPO / "stages" / "train.py")], cwd=killed, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(checkpoint.list_checkpoints(killed / PATHS["checkpoints"])) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.list_checkpoints(killed / PATHS["checkpoints"]), "no checkpoint before the kill"
    assert not (killed / PATHS["generator"]).exists()
    resumed = run_stage(killed, "train")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr + resumed.stdout
    _assert_same_state(reference, _final_state(killed))
    # The train log holds each epoch once, with the uninterrupted run's values (throughput aside),
    # the same snapshot grids, and the exported generator has the same bytes.
    want, got = read_rows(straight / PATHS["log"]), read_rows(killed / PATHS["log"])
    assert list(got) == [1, 2, 3, 4, 5, 6] and set(got[6]) == set(LOG_COLUMNS) - {"epoch"}

    def without_speed(rows):
        return {e: {k: v for k, v in r.items() if k != "images_per_sec"} for e, r in rows.items()}
    assert without_speed(got) == without_speed(want)
    assert [p.read_bytes() for _, p in image_files(killed / PATHS["log"])] == \
        [p.read_bytes() for _, p in image_files(straight / PATHS["log"])]
    assert (killed / PATHS["generator"]).read_bytes() == (straight / PATHS["generator"]).read_bytes()


def test_sigterm_saves_a_checkpoint_and_says_where_it_resumes(project):
    root = project(train={"epochs": 200, "steps_per_epoch": 4, "checkpoint_every": 1000})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, str(REPO / "stages" / "train.py")], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = root / PATHS["snapshots"]
    deadline = time.time() + 240
    while time.time() < deadline and not (log.is_dir() and any(log.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "resumes from there" in out + err and "Traceback" not in err
    saved = checkpoint.list_checkpoints(root / PATHS["checkpoints"])
    assert len(saved) == 1


def test_model_param_change_starts_fresh(project):
    root = project(train={"epochs": 1})
    paths = train_paths(root)
    train(tiny_params(train={"epochs": 1}), root / "data" / "processed", paths)
    first = checkpoint.list_checkpoints(paths.checkpoints)
    assert first
    changed = tiny_params(train={"epochs": 1}, model={"latent_dim": 6})
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        train(changed, root / "data" / "processed", paths)
    assert "model.latent_dim" in buffer.getvalue() and "starting fresh" in buffer.getvalue()
    arrays = load_arrays(checkpoint.list_checkpoints(paths.checkpoints)[-1])
    assert arrays["generator/dense/kernel"].shape[0] == 6  # the first Dense kernel takes the new latent size


def test_same_params_same_checkpoint_bytes(project, tmp_path_factory):
    a = project(train={"epochs": 1})
    b = _copy_project(a, tmp_path_factory.mktemp("b"))
    for root in (a, b):
        assert run_stage(root, "train").returncode == 0
    files_a = checkpoint.list_checkpoints(a / PATHS["checkpoints"])
    files_b = checkpoint.list_checkpoints(b / PATHS["checkpoints"])
    assert [p.read_bytes() for p in files_a] == [p.read_bytes() for p in files_b]
    # The exported generator too: Keras's save date and zip times are pinned (src/keras_file.py).
    assert (a / PATHS["generator"]).read_bytes() == (b / PATHS["generator"]).read_bytes()


def test_lower_epochs_resumes_from_an_earlier_checkpoint(project):
    """Lowering train.epochs reuses the checkpoint at the new end, drops later files, and
    gives the same weights as a run that stopped there."""
    root = project(train={"epochs": 3, "keep_checkpoints": 5})
    paths = train_paths(root)
    train(tiny_params(train={"epochs": 3, "keep_checkpoints": 5}), root / "data" / "processed", paths)
    at_two = load_arrays(paths.checkpoints / checkpoint.checkpoint_name(2, 6))
    summary = train(tiny_params(train={"epochs": 2, "keep_checkpoints": 5}), root / "data" / "processed", paths)
    assert summary["epoch"] == 2
    assert [p.name for p in checkpoint.list_checkpoints(paths.checkpoints)][-1] == checkpoint.checkpoint_name(2, 6)
    assert sorted(p.name for p in paths.snapshots.iterdir()) == ["generator_epoch_0001.npz", "generator_epoch_0002.npz"]
    _assert_same_state(at_two, load_arrays(checkpoint.list_checkpoints(paths.checkpoints)[-1]))

