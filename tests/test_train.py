"""The train stage: one-step smoke tests, update isolation, devices, the live log and guards
(resume and kills: tests/test_resume.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, TRAIN_PATHS as PATHS, run_stage, tiny_params, train_paths
from src import checkpoint, runtime
from src.train_log import read_rows
from src.gan import STEP_RESULTS
from src.training_loop import build_gan, rampdown_factor, train


def _make_gan(params):
    runtime.configure(params.train, params.common.seed)
    return build_gan(params, tf.distribute.get_strategy())


def _one_chunk(gan, params, steps=1):
    b = params.train.batch_size
    real = np.random.default_rng(0).uniform(-1, 1, (steps * b, params.data.image_size, params.data.image_size,
                                                    params.data.channels)).astype(np.float32)
    if params.data.range == [0, 1]:
        real = (real + 1) / 2
    return gan.train_chunk(tf.constant(real), 0)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _changed(before, variables):
    return [not np.array_equal(a, np.asarray(v.numpy())) for a, v in zip(before, variables)]


@pytest.mark.parametrize("arch", ["dcgan", "mlp"])
@pytest.mark.parametrize("loss", ["nsgan", "hinge", "wgan-gp"])
def test_one_step_each_model_and_loss(arch, loss):
    params = tiny_params(model={"arch": arch}, train={"loss": loss, "label_smoothing": 0.1})
    gan = _make_gan(params)
    g_before, d_before = _values(gan.generator.trainable_variables), _values(gan.discriminator.trainable_variables)
    sums, bad = _one_chunk(gan, params, steps=2)
    assert bad == -1 and set(sums) == set(STEP_RESULTS) and np.isfinite(list(sums.values())).all()
    # Every kernel moves (a bias can have an exactly zero gradient, e.g. hinge at init).
    assert all(c for c, v in zip(_changed(g_before, gan.generator.trainable_variables),
                                 gan.generator.trainable_variables) if "kernel" in v.path)
    assert all(c for c, v in zip(_changed(d_before, gan.discriminator.trainable_variables),
                                 gan.discriminator.trainable_variables) if "kernel" in v.path)


_NEEDS_BF16 = pytest.mark.skipif(not runtime.native_bfloat16(), reason="bfloat16 on a CPU needs native support "
                                 "(avx512_bf16/amx_bf16); without it the stage stops (test_runtime)")


@pytest.mark.parametrize("switches", [{"jit_compile": True}, {"mixed_precision": "mixed_float16"},
                                      pytest.param({"mixed_precision": "mixed_bfloat16"}, marks=_NEEDS_BF16),
                                      pytest.param({"jit_compile": True, "mixed_precision": "mixed_bfloat16"},
                                                   marks=_NEEDS_BF16)])
def test_xla_and_mixed_precision_steps_on_cpu(switches):
    params = tiny_params(train={"steps_per_call": 3, **switches})
    try:
        gan = _make_gan(params)
        d_before = _values(gan.discriminator.trainable_variables)
        sums, bad = _one_chunk(gan, params, steps=3)
        assert bad == -1 and set(sums) == set(STEP_RESULTS) and np.isfinite(list(sums.values())).all()
        assert any(_changed(d_before, gan.discriminator.trainable_variables))
        # The rates set between calls (lr_rampdown) are what the compiled step reads, through
        # XLA and a loss-scale optimizer too: at 0 neither network moves.
        gan.set_learning_rates(0.0, 0.0)
        g_before, d_before = _values(gan.generator.trainable_variables), _values(gan.discriminator.trainable_variables)
        _one_chunk(gan, params, steps=3)
        assert not any(_changed(g_before, gan.generator.trainable_variables))
        assert not any(_changed(d_before, gan.discriminator.trainable_variables))
        if params.train.mixed_precision != "none":
            assert gan.generator.layers[1].compute_dtype in ("float16", "bfloat16")
            assert gan.generator.output.dtype == "float32"
    finally:
        runtime.configure(tiny_params().train, 0)  # back to float32 for the other tests


def test_discriminator_step_changes_only_the_discriminator():
    """The frozen-discriminator recipe of the original script never trained D under Keras 3;
    this catches that class of bug: each update must change its own network and only it."""
    params = tiny_params(model={"dcgan": {"dropout": 0.0}})
    gan = _make_gan(params)
    real = tf.constant(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32))
    g_before, d_before = _values(gan.generator.trainable_variables), _values(gan.discriminator.trainable_variables)
    tf.function(gan.d_step)(real, tf.constant(0, tf.int64))
    assert not any(_changed(g_before, gan.generator.trainable_variables))
    assert any(_changed(d_before, gan.discriminator.trainable_variables))


@pytest.mark.parametrize("frozen", ["generator", "discriminator"])
def test_joint_step_updates_each_network_from_its_own_loss(frozen):
    params = tiny_params()
    gan = _make_gan(params)
    (gan.g_opt if frozen == "generator" else gan.d_opt).learning_rate.assign(0.0)
    real = tf.constant(np.random.default_rng(2).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32))
    g_before, d_before = _values(gan.generator.trainable_variables), _values(gan.discriminator.trainable_variables)
    tf.function(gan.joint_step)(real, tf.constant(0, tf.int64))
    g_changed = any(_changed(g_before, gan.generator.trainable_variables))
    d_changed = any(_changed(d_before, gan.discriminator.trainable_variables))
    assert (g_changed, d_changed) == ((False, True) if frozen == "generator" else (True, False))


def test_two_logical_devices_mirrored(tmp_path):
    """MirroredStrategy over two logical CPU devices trains (with every option that keeps state or
    draws per replica, LeCam's averages included) and keeps replicas in sync."""
    script = f"""
import sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pathlib import Path
import numpy as np
from conftest import tiny_raw, write_processed, blob_images
from src.config import parse_params
from src.training_loop import train, TrainPaths
raw = tiny_raw(train={{"strategy": "mirrored", "epochs": 2, "steps_per_epoch": 2, "steps_per_call": 2, "mirror": True, "lr_rampdown": 1.0,
                      "lecam": 0.3,
                      "augment": {{"policy": ["color", "translation", "cutout"], "adaptive": True}}}},
               model={{"dcgan": {{"spectral_norm": True}}}})
raw["data"]["folder"] = {str(tmp_path)!r}
params = parse_params(raw)
root = Path({str(tmp_path)!r})
write_processed(root / "p", blob_images(32))
summary = train(params, root / "p", TrainPaths(root / "c", root / "s", root / "l.tsv", root / "g.keras", root / "e.json"))
import json
env = json.loads((root / "e.json").read_text())
assert env["replicas"] == 2 and env["strategy"] == "MirroredStrategy", env
assert np.isfinite(summary["d_loss"]), summary
from src.checkpoint import load_latest
arrays, _, _ = load_latest(root / "c")
assert float(arrays["loss/lecam/mean_real"]) != 0.0, sorted(arrays)  # LeCam's averages moved and were saved
print("OK", summary)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_learning_rates_ramp_down_linearly_to_zero_over_the_last_fraction():
    total = 100
    assert rampdown_factor(0, total, 0.0) == rampdown_factor(99, total, 0.0) == 1.0
    assert rampdown_factor(0, total, 0.5) == rampdown_factor(50, total, 0.5) == 1.0
    assert rampdown_factor(75, total, 0.5) == pytest.approx(0.5)
    assert rampdown_factor(100, total, 0.5) == 0.0
    whole = [rampdown_factor(s, total, 1.0) for s in range(total + 1)]
    assert all(a > b for a, b in zip(whole, whole[1:])) and whole[-1] == 0.0


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(project, monkeypatch):
    root = project(train={"epochs": 1})
    params = tiny_params(train={"epochs": 1})
    paths = train_paths(root)
    train(params, root / "data" / "processed", paths)
    good = checkpoint.list_checkpoints(paths.checkpoints)
    before = {p.name: p.read_bytes() for p in good}

    from src import losses, training_loop
    real = losses.get_loss("nsgan")
    broken = losses.GANLoss(lambda x: real.d_loss(x) * np.nan, real.g_loss)
    monkeypatch.setattr(training_loop, "get_loss", lambda *a: broken)
    with pytest.raises(training_loop.NonFiniteLoss, match=r"non-finite loss at epoch 2, step 3"):
        train(tiny_params(train={"epochs": 2}), root / "data" / "processed", paths)
    assert {p.name: p.read_bytes() for p in checkpoint.list_checkpoints(paths.checkpoints)} == before


def test_train_log_is_written_every_epoch_while_training_runs(project):
    """DVCLive rows appear epoch by epoch, long before the first checkpoint (live plots)."""
    root = project(train={"epochs": 400, "steps_per_epoch": 2, "checkpoint_every": 1000})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, str(REPO / "stages" / "train.py")], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        summaries = []  # every read of metrics.json while DVCLive rewrites it each epoch
        while time.time() < deadline and len(read_rows(root / PATHS["log"])) < 6:
            path = root / PATHS["log"] / "metrics.json"
            if path.exists():  # a reader never catches it empty or half-written (atomic rename)
                summaries.append(json.loads(path.read_text()))
            time.sleep(0.002)
        rows = read_rows(root / PATHS["log"])
        assert proc.poll() is None, "training ended before the check"
        assert len(rows) >= 6 and not checkpoint.list_checkpoints(root / PATHS["checkpoints"])
        assert len(summaries) > 20 and all("d_loss" in s for s in summaries)
        assert max(s["step"] for s in summaries) >= 4
    finally:
        proc.kill()
        proc.wait()


def test_tampered_shard_is_reported_before_training(project):
    root = project()
    shard = root / "data" / "processed" / "shard_00000.npy"
    with open(shard, "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x80\x7f")
    result = run_stage(root, "train")
    assert result.returncode == 2
    assert "shard_00000.npy" in result.stderr and "Traceback" not in result.stderr
    assert not (root / PATHS["checkpoints"]).exists()


def test_mirror_flips_about_half_the_real_images_the_same_way_at_the_same_step():
    images = tf.random.stateless_uniform([64, 8, 8, 3], seed=[1, 2])
    gan = build_gan(tiny_params(train={"mirror": True}))
    with tf.distribute.get_strategy().scope():
        once, again, later = (gan.mirrored(images, step).numpy() for step in (3, 3, 4))
    np.testing.assert_array_equal(once, again)
    flipped = [np.array_equal(m, x[:, ::-1]) for m, x in zip(once, images.numpy())]
    kept = [np.array_equal(m, x) for m, x in zip(once, images.numpy())]
    assert all(f != k for f, k in zip(flipped, kept))  # each image exactly one of the two
    assert 16 <= sum(flipped) <= 48
    assert not np.array_equal(once, later)
    off = build_gan(tiny_params(train={"mirror": False}))
    assert off.mirrored(images, 3) is images
