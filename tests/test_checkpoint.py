"""Checkpoints keyed by variable path: what loading says about a missing, unexpected or
old-format key, and that same-shaped variables (Adam's two slots) never swap."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_params
from src import checkpoint, runtime, weights
from src.atomic import load_arrays, save_arrays
from src.errors import UserError
from src.training_loop import RunState, build_gan

KERNEL = "generator/dense/kernel"  # the first Dense layer of the tiny DCGAN's generator


def _gan(**override):
    params = tiny_params(**override)
    runtime.configure(params.train, params.common.seed)
    return params, build_gan(params, tf.distribute.get_strategy())


def _trained_gan(**override):
    """A GAN after two steps: Adam's momentum and velocity hold different values."""
    params, gan = _gan(**override)
    b, size = params.train.batch_size, params.data.image_size
    real = np.random.default_rng(0).uniform(-1, 1, (2 * b, size, size, 1)).astype(np.float32)
    gan.train_chunk(tf.constant(real), 0)
    return params, gan


def _save(tmp_path, gan) -> tuple[dict, object]:
    path = checkpoint.save(tmp_path, gan.state_variables(), RunState(epoch=1, step=2).meta({}), keep=2)
    arrays, _, found = checkpoint.load_latest(tmp_path)
    assert found == path
    return arrays, path


def _one_line_error(excinfo, path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_keys_name_network_layer_variable_and_optimizer_slot(tmp_path):
    _, gan = _trained_gan()
    arrays, _ = _save(tmp_path, gan)
    assert {KERNEL, f"ema/{KERNEL}", f"g_opt/momentum/{KERNEL}", f"g_opt/velocity/{KERNEL}",
            "g_opt/iteration", "generator/batch_normalization/moving_mean", "discriminator/conv2d/kernel",
            "discriminator/dropout/seed_generator_state", "d_opt/momentum/discriminator/conv2d/kernel"} <= set(arrays)
    assert not any(weights._POSITIONAL.match(k) for k in arrays)


def test_keys_do_not_depend_on_what_the_process_built_before():
    """Keras numbers layers process-wide (dense, then dense_4 in the next model): keys do not."""
    _, first = _gan()
    _, second = _gan()
    assert second.generator.layers[1].name != first.generator.layers[1].name
    assert list(first.state_variables()) == list(second.state_variables())


def test_adam_momentum_and_velocity_are_keyed_apart_and_load_into_their_own_slots(tmp_path):
    _, gan = _trained_gan()
    arrays, path = _save(tmp_path, gan)
    m, v = arrays[f"g_opt/momentum/{KERNEL}"], arrays[f"g_opt/velocity/{KERNEL}"]
    assert m.shape == v.shape and not np.array_equal(m, v)  # a swap would go unnoticed by shape

    _, fresh = _gan()
    reordered = dict(reversed(list(arrays.items())))  # keys decide, not the order in the file
    fresh.load_state(reordered, str(path))
    state = fresh.state_variables()
    for key, value in arrays.items():
        np.testing.assert_array_equal(np.asarray(state[key].numpy()), value, err_msg=key)
    slot = {"momentum": fresh.g_opt._momentums, "velocity": fresh.g_opt._velocities}
    index = fresh.g_opt._get_variable_index(fresh.generator.layers[1].kernel)
    np.testing.assert_array_equal(slot["momentum"][index].numpy(), m)
    np.testing.assert_array_equal(slot["velocity"][index].numpy(), v)


def test_loss_scale_optimizer_variables_are_keyed_too(tmp_path):
    try:
        _, gan = _gan(train={"mixed_precision": "mixed_float16"})
        keys = set(gan.state_variables())
        assert {"g_opt/loss_scale/dynamic_scale", f"g_opt/momentum/{KERNEL}", f"g_opt/velocity/{KERNEL}"} <= keys
    finally:
        runtime.configure(tiny_params().train, 0)  # back to float32 for the other tests


def test_a_missing_key_is_named(tmp_path):
    _, gan = _trained_gan()
    arrays, path = _save(tmp_path, gan)
    del arrays[f"g_opt/velocity/{KERNEL}"]
    _, fresh = _gan()
    before = np.asarray(fresh.generator.layers[1].kernel.numpy())
    with pytest.raises(UserError) as excinfo:
        fresh.load_state(arrays, str(path))
    assert f"no array 'g_opt/velocity/{KERNEL}'" in _one_line_error(excinfo, path)
    np.testing.assert_array_equal(fresh.generator.layers[1].kernel.numpy(), before)  # nothing half-loaded


def test_an_unexpected_key_is_named(tmp_path):
    _, gan = _trained_gan()
    arrays, path = _save(tmp_path, gan)
    arrays["generator/dense_9/kernel"] = np.zeros((2, 2), np.float32)
    _, fresh = _gan()
    with pytest.raises(UserError) as excinfo:
        fresh.load_state(arrays, str(path))
    assert "holds array 'generator/dense_9/kernel'" in _one_line_error(excinfo, path)


def test_another_architecture_names_the_first_key_that_differs(tmp_path):
    _, gan = _trained_gan()
    arrays, path = _save(tmp_path, gan)
    _, other = _gan(model={"arch": "mlp"})
    with pytest.raises(UserError, match="other model params") as excinfo:
        other.load_state(arrays, str(path))
    _one_line_error(excinfo, path)


def test_an_old_positional_checkpoint_is_named_as_such(tmp_path):
    from src.networks import variables_to_arrays
    _, gan = _gan()
    old = {**variables_to_arrays(gan.generator, "g"), **variables_to_arrays(gan.discriminator, "d"),
           **{f"gopt.{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(gan.g_opt.variables)}}
    path = tmp_path / checkpoint.checkpoint_name(1, 3)
    with pytest.raises(UserError) as excinfo:
        gan.load_state(old, str(path))
    message = _one_line_error(excinfo, path)
    assert "predates" in message and f"delete {tmp_path} to start fresh" in message


def test_training_stops_on_an_old_checkpoint_with_the_same_params(project):
    """Resuming from a positional checkpoint is refused with one line, not a wrong load."""
    import json
    from conftest import run_stage
    root = project(train={"epochs": 1})
    assert run_stage(root, "train").returncode == 0
    folder = root / "outputs" / "checkpoints"
    (path,) = checkpoint.list_checkpoints(folder)
    arrays = load_arrays(path)
    meta = arrays.pop("meta")
    old = {f"g.{i:03d}": a for i, a in enumerate(arrays.values())}
    save_arrays(path, {**old, "meta": meta})
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("epochs: 1", "epochs: 2"))
    result = run_stage(root, "train")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert "predates" in lines[-1] and str(path.name) in lines[-1], result.stderr[-2000:]
    assert json.loads(meta.tobytes())["epoch"] == 1


def test_a_folder_removed_while_listed_holds_no_checkpoints(tmp_path, monkeypatch):
    """A non-chief worker lists the shared folder while the chief clears it for a fresh start:
    the folder exists when looked at and is gone when read. That is no checkpoint, not a crash."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / checkpoint.checkpoint_name(1, 10)).write_bytes(b"x")
    assert [p.name for p in checkpoint.list_checkpoints(folder)] == [checkpoint.checkpoint_name(1, 10)]

    def removed(self):
        shutil.rmtree(folder)
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(type(folder), "iterdir", removed)
    assert checkpoint.list_checkpoints(folder) == []
    assert checkpoint.list_checkpoints(tmp_path / "dangling") == []
