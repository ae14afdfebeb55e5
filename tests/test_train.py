"""The train stage: one-step smoke tests, update isolation, resume, kills and guards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import REPO, run_stage, tiny_params
from src import checkpoint, runtime
from src.atomic import load_arrays
from src.train_log import image_files, read_rows
from src.gan import STEP_RESULTS
from src.training_loop import LOG_COLUMNS, TrainPaths, build_gan, rampdown_factor, train

PATHS = dict(checkpoints="outputs/checkpoints", snapshots="outputs/snapshots",
             log="outputs/train_log", generator="outputs/generator.keras",
             environment="outputs/environment.json", tensorboard="outputs/tensorboard")


def _paths(root: Path) -> TrainPaths:
    return TrainPaths(**{k: root / v for k, v in PATHS.items()})


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
    """MirroredStrategy over two logical CPU devices trains and keeps replicas in sync."""
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
raw = tiny_raw(train={{"strategy": "mirrored", "epochs": 2, "steps_per_call": 2, "mirror": True, "lr_rampdown": 1.0,
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
print("OK", summary)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


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
    # spectral norm (its power-iteration vectors too), resize upsampling, minibatch std, a residual
    # D with FastGAN's decoder (its weights and their Adam moments are checkpointed) and lazy R1.
    {"model": {"dcgan": {"spectral_norm": True, "upsample": "bilinear", "minibatch_std": True, "dropout": 0.0,
                         "d_residual": True}},
     "train": {"augment": {"policy": ["color", "translation", "cutout"], "probability": 0.3, "adaptive": True,
                           "speed_kimg": 0.05}, "reconstruction": 1.0, "r1_gamma": 1.0, "r1_every": 2}},
], ids=["mlp-xla-chunks", "dcgan-adaptive-augment-sn"])
def test_resume_gives_the_same_weights(project, tmp_path_factory, variant):
    straight = project(**{**variant, "train": {**variant.get("train", {}), "epochs": 2}})
    assert run_stage(straight, "train").returncode == 0
    reference = _final_state(straight)
    other = _resume_after_losing_the_last_checkpoint(straight, tmp_path_factory.mktemp("resumed"))
    _assert_same_state(reference, _final_state(other))
    assert list(read_rows(other / PATHS["log"])) == [1, 2]  # epoch 2's row once, not twice


def test_learning_rates_ramp_down_linearly_to_zero_over_the_last_fraction():
    total = 100
    assert rampdown_factor(0, total, 0.0) == rampdown_factor(99, total, 0.0) == 1.0
    assert rampdown_factor(0, total, 0.5) == rampdown_factor(50, total, 0.5) == 1.0
    assert rampdown_factor(75, total, 0.5) == pytest.approx(0.5)
    assert rampdown_factor(100, total, 0.5) == 0.0
    whole = [rampdown_factor(s, total, 1.0) for s in range(total + 1)]
    assert all(a > b for a, b in zip(whole, whole[1:])) and whole[-1] == 0.0


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
    paths = _paths(root)
    train(tiny_params(train={"epochs": 1, "lr_rampdown": 0.5}), root / "data" / "processed", paths)
    capsys.readouterr()
    train(tiny_params(train={"epochs": 2, "lr_rampdown": 0.5}), root / "data" / "processed", paths)
    said = "".join(capsys.readouterr())
    assert "train.epochs" in said and "starting fresh" in said, said
    assert read_rows(root / PATHS["log"]) and list(read_rows(root / PATHS["log"])) == [1, 2]


def test_mirror_and_rampdown_resume_to_the_same_weights(project, tmp_path_factory):
    """A run stopped mid-way (SIGINT after its 6th of 8 chunks) and resumed ends with the
    weights of one that was not: the rates and the flips are functions of the step."""
    override = dict(train={"epochs": 2, "steps_per_epoch": 4, "checkpoint_every": 1,
                           "mirror": True, "lr_rampdown": 1.0})
    straight = project(**override)
    assert run_stage(straight, "train").returncode == 0
    reference = _final_state(straight)

    stopped = _copy_project(straight, tmp_path_factory.mktemp("stopped"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "GAN_FAULT": "chunk:6:INT"}
    first = subprocess.run([sys.executable, str(REPO / "stages" / "train.py")], cwd=stopped, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 128 + signal.SIGINT, first.stderr[-2000:]
    resumed = run_stage(stopped, "train")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr + resumed.stdout
    _assert_same_state(reference, _final_state(stopped))

    # Each option changes the weights (else the comparison above proves nothing about it).
    for key, off in (("mirror", False), ("lr_rampdown", 0.0)):
        other = _copy_project(straight, tmp_path_factory.mktemp(f"no-{key}"))
        raw = yaml.safe_load((other / "params.yaml").read_text())
        raw["train"][key] = off
        (other / "params.yaml").write_text(yaml.safe_dump(raw))
        assert run_stage(other, "train").returncode == 0
        state = _final_state(other)
        assert any(not np.array_equal(reference[k], state[k]) for k in reference), key


def test_killed_run_resumes_to_the_same_weights(project, tmp_path_factory):
    override = dict(train={"epochs": 6, "steps_per_epoch": 4, "checkpoint_every": 1})
    straight = project(**override)
    assert run_stage(straight, "train").returncode == 0
    reference = _final_state(straight)

    killed = _copy_project(straight, tmp_path_factory.mktemp("killed"))
    import os
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
    import os
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


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(project, monkeypatch):
    root = project(train={"epochs": 1})
    params = tiny_params(train={"epochs": 1})
    paths = _paths(root)
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


def test_model_param_change_starts_fresh(project):
    root = project(train={"epochs": 1})
    paths = _paths(root)
    train(tiny_params(train={"epochs": 1}), root / "data" / "processed", paths)
    first = checkpoint.list_checkpoints(paths.checkpoints)
    assert first
    changed = tiny_params(train={"epochs": 1}, model={"latent_dim": 6})
    import io
    import contextlib
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


def test_train_log_is_written_every_epoch_while_training_runs(project):
    """DVCLive rows appear epoch by epoch, long before the first checkpoint (live plots)."""
    root = project(train={"epochs": 400, "steps_per_epoch": 2, "checkpoint_every": 1000})
    import os
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


def test_lower_epochs_resumes_from_an_earlier_checkpoint(project):
    """Lowering train.epochs reuses the checkpoint at the new end, drops later files, and
    gives the same weights as a run that stopped there."""
    root = project(train={"epochs": 3, "keep_checkpoints": 5})
    paths = _paths(root)
    train(tiny_params(train={"epochs": 3, "keep_checkpoints": 5}), root / "data" / "processed", paths)
    at_two = load_arrays(paths.checkpoints / checkpoint.checkpoint_name(2, 6))
    summary = train(tiny_params(train={"epochs": 2, "keep_checkpoints": 5}), root / "data" / "processed", paths)
    assert summary["epoch"] == 2
    assert [p.name for p in checkpoint.list_checkpoints(paths.checkpoints)][-1] == checkpoint.checkpoint_name(2, 6)
    assert sorted(p.name for p in paths.snapshots.iterdir()) == ["generator_epoch_0001.npz", "generator_epoch_0002.npz"]
    _assert_same_state(at_two, load_arrays(checkpoint.list_checkpoints(paths.checkpoints)[-1]))


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
