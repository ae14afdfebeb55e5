"""Classes as one concept: conditional networks of both families, labelled training, resume,
the row-per-class grid, ``generate --class`` and class names inside the exported generator."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import class_blobs, run_stage, tiny_params, tiny_raw, write_processed
from src import generate, runtime
from src.atomic import load_arrays, save_arrays
from src.best_snapshot import canonical_names
from src.config import parse_params
from src.dataset import ShardReader, open_shards
from src.gan import STEP_RESULTS
from src.keras_file import save_model
from src.networks import (build_discriminator, build_generator, discriminator_classes, generator_classes,
                          load_generator, snapshot_arrays)
from src.pictures import PAD, read_png
from src.render import render_samples
from src.sampling import balanced_labels, grid_inputs, run_generator, to_uint8
from src.training_loop import DataPlan, build_gan
from test_resume import _assert_same_state, _final_state, _resume_after_losing_the_last_checkpoint

CLASSES = ["top", "bottom", "left"]


def _gan(params, classes=CLASSES):
    runtime.configure(params.train, params.common.seed)
    return build_gan(params, tf.distribute.get_strategy(), classes)


def _labelled_chunk(params, steps):
    images, labels, _ = class_blobs(steps * params.train.batch_size, params.data.image_size, params.data.channels,
                                    params.data.value_range)
    return tf.constant(images), tf.constant(labels)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


# ---------------------------------------------------------------------------- networks
@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_conditional_networks_take_a_label_and_zero_classes_builds_the_unconditional_ones(arch):
    params = tiny_params(model={"arch": arch})
    plain_g, plain_d = build_generator(params.model, params.data), build_discriminator(params.model, params.data)
    assert len(plain_g.inputs) == 1 and len(plain_d.inputs) == 1
    assert generator_classes(plain_g) == [] and discriminator_classes(plain_d) == 0
    g = build_generator(params.model, params.data, CLASSES)
    d = build_discriminator(params.model, params.data, len(CLASSES))
    assert generator_classes(g) == CLASSES and discriminator_classes(d) == 3
    # The conditional networks add the class layers and nothing else.
    plain_keys = {w.path.split("/", 1)[1] for w in plain_g.weights}
    extra = {w.path for w in g.weights if w.path.split("/", 1)[1] not in plain_keys}
    assert all("class_embedding" in key or "dense" in key for key in extra), extra

    z = np.random.default_rng(0).standard_normal((6, params.model.latent_dim)).astype(np.float32)
    same_z = np.repeat(z[:1], 3, axis=0)
    images = np.asarray(run_generator(g, same_z, np.array([0, 1, 2], np.int32)))
    assert images.shape == (3, 8, 8, 1)
    assert not np.allclose(images[0], images[1]) and not np.allclose(images[1], images[2])  # the label matters
    x = tf.constant(np.repeat(images[:1], 3, axis=0))
    logits = np.asarray(d([x, tf.constant([0, 1, 2], tf.int32)], training=False))
    assert logits.shape == (3, 1) and len(np.unique(logits.round(6))) == 3  # the projection term differs by class


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("loss", ["nsgan", "hinge", "wgan-gp"])
def test_one_conditional_step_each_family_and_loss(arch, loss):
    params = tiny_params(model={"arch": arch}, train={"loss": loss, "steps_per_call": 2})
    gan = _gan(params)
    assert gan.conditional
    g_before, d_before = _values(gan.generator.trainable_variables), _values(gan.discriminator.trainable_variables)
    sums, bad = gan.train_chunk(_labelled_chunk(params, 2), 0)
    assert bad == -1 and set(sums) == set(STEP_RESULTS) and np.isfinite(list(sums.values())).all()
    g_moved = {v.path for v, a in zip(gan.generator.trainable_variables, g_before) if not np.array_equal(a, v.numpy())}
    d_moved = {v.path for v, a in zip(gan.discriminator.trainable_variables, d_before)
               if not np.array_equal(a, v.numpy())}
    assert any("class_embedding" in p for p in g_moved), g_moved   # G learns its class vectors
    assert any("projection" in p for p in d_moved), d_moved         # D learns its projection


@pytest.mark.parametrize("switches", [
    {"augment": {"policy": ["color", "translation", "cutout"], "adaptive": True}, "jit_compile": True},
    {"mixed_precision": "mixed_float16", "ema": {"enabled": True}},
    {"d_steps": 2, "loss": "wgan-gp"},
], ids=["diffaugment-ada-xla", "mixed-float16-ema", "d-steps-gp"])
def test_conditional_step_with_augmentation_precision_and_d_steps(switches):
    params = tiny_params(model={"dcgan": {"spectral_norm": True, "minibatch_std": True}},
                         train={"steps_per_call": 2, **switches})
    try:
        gan = _gan(params)
        sums, bad = gan.train_chunk(_labelled_chunk(params, 2), 0)
        assert bad == -1 and np.isfinite(list(sums.values())).all()
        ema = gan.sync_ema_model()
        assert generator_classes(ema) == CLASSES
    finally:
        runtime.configure(tiny_params().train, 0)


def test_the_data_plan_serves_each_image_with_its_own_label():
    params = tiny_params(train={"batch_size": 4, "steps_per_epoch": 3, "steps_per_call": 3})
    images, labels, _ = class_blobs(32, 8, 1, (-1, 1))
    images = images.copy()
    images[:, 0, 0, 0] = np.arange(32)           # each image carries its index in one pixel
    reader = ShardReader([images[:20], images[20:]], [labels[:20], labels[20:]])
    plan = DataPlan.make(params, reader.count)
    batches = plan.batches(tf.distribute.get_strategy(), reader, 0, 0)
    for _ in range(params.train.epochs):  # one call of 3 steps an epoch
        chunk_images, chunk_labels = next(batches)
        index = np.asarray(chunk_images)[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(np.asarray(chunk_labels), labels[index])


@pytest.mark.parametrize("variant", [
    {"model": {"arch": "mlp"}, "train": {"jit_compile": True, "steps_per_call": 2, "steps_per_epoch": 4}},
    {"model": {"dcgan": {"spectral_norm": True}},
     "train": {"loss": "wgan-gp", "augment": {"policy": ["color", "translation", "cutout"], "probability": 0.3,
                                              "adaptive": True, "speed_kimg": 0.05}}},
], ids=["mlp-xla", "dcgan-gp-ada-sn"])
def test_labelled_run_resumes_to_the_same_weights(project, tmp_path_factory, variant):
    override = {**variant, "train": {**variant.get("train", {}), "epochs": 2}}
    straight = project(labelled=True, **override)
    first = run_stage(straight, "train")
    assert first.returncode == 0, first.stderr
    reference = _final_state(straight)
    assert any("projection" in key for key in reference) and any("class_embedding" in key for key in reference)

    other = _resume_after_losing_the_last_checkpoint(straight, tmp_path_factory.mktemp("resumed"))
    _assert_same_state(reference, _final_state(other))


def test_new_labels_for_the_same_images_start_fresh(project):
    root = project(labelled=True, train={"epochs": 1})
    assert run_stage(root, "train").returncode == 0
    processed = root / "data" / "processed"
    manifest = json.loads((processed / "manifest.json").read_text())
    images = np.concatenate([np.load(processed / s["file"]) for s in manifest["shards"]])
    labels = np.concatenate([np.load(processed / s["labels"]) for s in manifest["shards"]])
    write_processed(processed, images, (-1, 1), labels=(labels + 1) % 3, classes=CLASSES)
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("epochs: 1", "epochs: 2"))
    result = run_stage(root, "train")
    assert result.returncode == 0, result.stderr
    assert "resuming from" not in result.stderr + result.stdout


# ---------------------------------------------------------------------------- pictures and generation
def _conditional_files(folder: Path, params, seed=3):
    keras.utils.set_random_seed(seed)
    g = build_generator(params.model, params.data, CLASSES)
    save_arrays(folder / "generator_epoch_0001.npz", snapshot_arrays(g))
    save_model(g, folder / "gen.keras")
    return g


def test_sample_grid_has_one_row_per_class_with_fixed_latents(tmp_path):
    raw = tiny_raw(model={"arch": "mlp"}, sample={"count": 5, "grid_columns": 4, "progress_columns": 2,
                                                  "display_pixels": 0})
    params = parse_params(raw)
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    g = _conditional_files(snaps, params)
    summary = render_samples(params, snaps, tmp_path / "samples")
    assert summary["classes"] == 3
    out = tmp_path / "samples"
    assert json.loads((out / "classes.json").read_text()) == {"rows": CLASSES, "images_per_row": 4}
    assert len(list(out.glob("generated_image_epoch_0001_*.png"))) == 12  # 3 classes x 4 columns
    grid = read_png(out / "grid_epoch_0001.png", 1)
    assert grid.shape == (3 * 8 + 2 * PAD, 4 * 8 + 3 * PAD, 1)
    z, labels = grid_inputs(5, 4, 3, params.model.latent_dim, params.common.seed)
    np.testing.assert_array_equal(labels, [0] * 4 + [1] * 4 + [2] * 4)
    assert len({row.tobytes() for row in z}) == 12  # each row its own latents
    expected = to_uint8(np.asarray(run_generator(g, z, labels)), params.data.value_range)
    for c in range(3):
        for k in range(4):
            y, x = c * (8 + PAD), k * (8 + PAD)
            np.testing.assert_array_equal(grid[y:y + 8, x:x + 8], expected[c * 4 + k])
    # the progress strip: the first image of each class, up to progress_columns of them
    progress = read_png(out / "progress.png", 1)
    assert progress.shape == (8, 2 * 8 + PAD, 1)
    np.testing.assert_array_equal(progress[:, 8 + PAD:], expected[4])


def test_generate_class_by_name_or_index_mix_and_interpolation(tmp_path, monkeypatch, capsys):
    raw = tiny_raw(model={"arch": "mlp"})
    raw["data"]["folder"] = str(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    g = _conditional_files(tmp_path, params)
    base = ["--params", str(tmp_path / "params.yaml"), "--generator", str(tmp_path / "gen.keras"), "--seed", "5"]

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["generate", *base, *args])
        try:
            generate.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr()

    from src.sampling import latents
    z = latents(500, params.model.latent_dim, [5, 0])[:6]
    for chosen in ("bottom", "1"):
        code, out = run("--n", "6", "--class", chosen, "--out", str(tmp_path / f"{chosen}.npy"))
        assert code == 0, out.err
        assert "class 'bottom'" in out.out
        expected = to_uint8(np.asarray(run_generator(g, z, np.full(6, 1, np.int32))), params.data.value_range)
        np.testing.assert_array_equal(np.load(tmp_path / f"{chosen}.npy"), expected)
    code, out = run("--n", "6", "--out", str(tmp_path / "mix.npy"))
    assert code == 0 and "balanced mix of 3 classes" in out.out
    expected = to_uint8(np.asarray(run_generator(g, z, balanced_labels(6, 3))), params.data.value_range)
    np.testing.assert_array_equal(np.load(tmp_path / "mix.npy"), expected)

    code, out = run("--interpolate", "4", "--rows", "2", "--class", "left", "--out", str(tmp_path / "walk.npy"))
    assert code == 0, out.err
    walk = np.load(tmp_path / "walk.npy")
    ends = generate.interpolation_latents(2, 4, params.model.latent_dim, 5, None)
    expected = to_uint8(np.asarray(run_generator(g, ends, np.full(8, 2, np.int32))), params.data.value_range)
    np.testing.assert_array_equal(walk.reshape(8, 8, 8, 1), expected)

    code, out = run("--n", "2", "--class", "sideways", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert "'sideways'" in out.err and "top, bottom, left" in out.err and not (tmp_path / "x.npy").exists()
    code, out = run("--n", "2", "--class", "3", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and "0..2" in out.err


def test_class_on_an_unconditional_generator_is_one_line(tmp_path, monkeypatch, capsys):
    raw = tiny_raw(model={"arch": "mlp"})
    raw["data"]["folder"] = str(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    save_model(build_generator(params.model, params.data), tmp_path / "gen.keras")
    monkeypatch.setattr(sys, "argv", ["generate", "--params", str(tmp_path / "params.yaml"), "--generator",
                                      str(tmp_path / "gen.keras"), "--n", "2", "--class", "0",
                                      "--out", str(tmp_path / "x.npy")])
    with pytest.raises(SystemExit) as exit_info:
        generate.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs a conditional generator" in err and len(err.strip().splitlines()) == 1


def test_class_names_travel_inside_the_exported_generator(tmp_path):
    params = tiny_params(model={"arch": "dcgan"})
    g = _conditional_files(tmp_path, params)
    loaded = keras.models.load_model(tmp_path / "gen.keras", compile=False)  # no params, no data
    assert generator_classes(loaded) == CLASSES
    z = np.random.default_rng(1).standard_normal((3, params.model.latent_dim)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(run_generator(loaded, z, np.array([2, 1, 0], np.int32))),
                               np.asarray(run_generator(g, z, np.array([2, 1, 0], np.int32))), atol=1e-6)
    # the best-snapshot export (canonical layer names) and the snapshot .npz keep them too
    save_model(canonical_names(load_generator(params, tmp_path / "generator_epoch_0001.npz")), tmp_path / "best.keras")
    assert generator_classes(keras.models.load_model(tmp_path / "best.keras", compile=False)) == CLASSES
    assert [str(c) for c in load_arrays(tmp_path / "generator_epoch_0001.npz")["classes"]] == CLASSES


def test_labelled_train_and_sample_stages_end_to_end(project):
    root = project(labelled=True, model={"arch": "mlp"})
    for stage in ("train", "sample"):
        result = run_stage(root, stage)
        assert result.returncode == 0, result.stderr
    loaded = keras.models.load_model(root / "outputs" / "generator.keras", compile=False)
    assert generator_classes(loaded) == CLASSES
    assert json.loads((root / "outputs" / "samples" / "classes.json").read_text())["rows"] == CLASSES
    manifest, _, labels = open_shards(root / "data" / "processed", with_labels=True)
    assert labels is not None and manifest["classes"] == CLASSES
