"""Tests for src/render.py and stages/sample.py: names, pixel mapping, grids, determinism, increments."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, run_stage, stderr_lines, tiny_raw
from src.atomic import save_arrays
from src.config import parse_params
from src.errors import UserError
from src.networks import build_generator, variables_to_arrays
from src.pictures import PAD, PAD_VALUE, display_scale, encode_png, make_grid, read_png, upscale
from src.render import render_samples


def params_for(size=8, channels=1, value_range=(-1, 1), count=6, grid_columns=4, progress_columns=3,
               display_pixels=0, **extra):
    raw = tiny_raw(data={"image_size": size, "channels": channels, "range": list(value_range)},
                   model={"arch": "mlp"},
                   sample={"count": count, "grid_columns": grid_columns, "progress_columns": progress_columns,
                           "display_pixels": display_pixels},
                   **extra)
    return parse_params(raw)


def random_snapshot(params, path: Path, seed: int) -> Path:
    """A generator with random (seeded) weights: every latent point gives a different image."""
    keras.utils.set_random_seed(seed)
    model = build_generator(params.model, params.data)
    save_arrays(path, variables_to_arrays(model, "g"))
    return path


def constant_snapshot(params, path: Path, logits: np.ndarray) -> Path:
    """A generator whose output is activation(logits) for every latent (last Dense: zero kernel)."""
    model = build_generator(params.model, params.data)
    last = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    last.kernel.assign(np.zeros(last.kernel.shape, np.float32))
    last.bias.assign(np.asarray(logits, np.float32).reshape(-1))
    save_arrays(path, variables_to_arrays(model, "g"))
    return path


def outputs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------------------- pure image helpers
def test_make_grid_layout():
    images = np.stack([np.full((3, 4, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = make_grid(images, columns=2)
    assert grid.shape == (3 * 3 + 2 * PAD, 2 * 4 + PAD, 1)
    for i in range(5):
        r, c = divmod(i, 2)
        y, x = r * (3 + PAD), c * (4 + PAD)
        assert (grid[y:y + 3, x:x + 4] == 10 * (i + 1)).all()
    assert (grid[3:3 + PAD] == PAD_VALUE).all()              # horizontal padding line
    assert (grid[:, 4:4 + PAD] == PAD_VALUE).all()           # vertical padding line
    assert (grid[2 * (3 + PAD):, 4 + PAD:] == PAD_VALUE).all()  # empty sixth cell
    assert make_grid(images[:2], columns=8).shape == (3, 2 * 4 + PAD, 1)  # fewer images than columns


def test_png_modes_round_trip_and_bytes_are_stable(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8, 1)
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    for image, mode, channels in ((grey, "L", 1), (rgb, "RGB", 3)):
        data = encode_png(image)
        assert data == encode_png(image.copy())
        path = tmp_path / f"{mode}.png"
        path.write_bytes(data)
        with Image.open(path) as picture:
            assert picture.mode == mode and picture.size == (8, 6)
        assert (read_png(path, channels) == image).all()


# ---------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("value_range", [(-1, 1), (0, 1)])
@pytest.mark.parametrize("channels", [1, 3])
def test_known_generator_gives_known_pixels(tmp_path, value_range, channels):
    params = params_for(channels=channels, value_range=value_range, count=2, grid_columns=2, progress_columns=2)
    # logits +30 -> top of the range -> 255, -30 -> bottom -> 0, 0 -> middle (127.5) -> 128
    logits = np.zeros((8, 8, channels), np.float32)
    logits[:, :4] = 30.0
    logits[:, 4:6] = -30.0
    if channels == 3:
        logits[0, 0] = (30.0, -30.0, 0.0)  # channel order survives: R=255, G=0, B=128
    expected = np.where(logits > 0, 255, np.where(logits < 0, 0, 128)).astype(np.uint8)
    constant_snapshot(params, tmp_path / "snap" / "generator_epoch_0007.npz", logits)
    summary = render_samples(params, tmp_path / "snap", tmp_path / "out")
    assert summary["rendered"] == 1
    mode = "L" if channels == 1 else "RGB"
    for i in range(2):
        with Image.open(tmp_path / "out" / f"generated_image_epoch_0007_{i}.png") as picture:
            assert picture.mode == mode and picture.size == (8, 8)
            pixels = np.asarray(picture)
        assert (pixels.reshape(8, 8, channels) == expected).all()
    if channels == 3:
        assert tuple(pixels[0, 0]) == (255, 0, 128)


def test_upscale_is_whole_factor_nearest_neighbour():
    assert [display_scale(n, 112) for n in (28, 8, 112, 113, 128)] == [4, 14, 1, 1, 1]
    assert display_scale(28, 0) == 1
    image = np.arange(6, dtype=np.uint8).reshape(1, 2, 3, 1)
    big = upscale(image, 3)
    assert big.shape == (1, 6, 9, 1)
    assert (big[0, ::3, ::3] == image[0]).all() and (big[0, 2::3, 2::3] == image[0]).all()
    assert set(np.unique(big)) == set(np.unique(image))  # no new (smoothed) values


def test_grids_and_progress_enlarged_single_images_true_size(tmp_path):
    """With sample.display_pixels, grids and progress pictures are enlarged; single images are not."""
    params = params_for(count=6, grid_columns=4, progress_columns=3, display_pixels=30)  # 8 px -> x4 = 32
    snap = tmp_path / "snap"
    random_snapshot(params, snap / "generator_epoch_0001.npz", seed=1)
    out = tmp_path / "out"
    render_samples(params, snap, out)
    single = read_png(out / "generated_image_epoch_0001_5.png", 1)
    assert single.shape == (8, 8, 1)
    grid = read_png(out / "grid_epoch_0001.png", 1)
    assert grid.shape == (2 * 32 + PAD, 4 * 32 + 3 * PAD, 1)
    r, c = divmod(5, 4)
    cell = grid[r * (32 + PAD):r * (32 + PAD) + 32, c * (32 + PAD):c * (32 + PAD) + 32]
    assert (cell == upscale(single[None], 4)[0]).all()
    progress = read_png(out / "progress.png", 1)
    assert progress.shape == (32, 3 * 32 + 2 * PAD, 1)
    with Image.open(out / "progress.gif") as gif:
        assert gif.size == (grid.shape[1], grid.shape[0])
    # Changing the display size re-renders the grids (true-size images stay identical).
    summary = render_samples(params_for(count=6, grid_columns=4, progress_columns=3, display_pixels=0), snap, out)
    assert summary["rendered"] == 1
    assert read_png(out / "grid_epoch_0001.png", 1).shape == (2 * 8 + PAD, 4 * 8 + 3 * PAD, 1)
    assert (read_png(out / "generated_image_epoch_0001_5.png", 1) == single).all()


def test_names_grid_and_progress(tmp_path):
    params = params_for(count=6, grid_columns=4, progress_columns=3)
    snap = tmp_path / "snap"
    random_snapshot(params, snap / "generator_epoch_0010.npz", seed=1)
    random_snapshot(params, snap / "generator_epoch_0002.npz", seed=2)
    (snap / "notes.txt").write_text("not a snapshot")
    out = tmp_path / "out"
    summary = render_samples(params, snap, out)
    assert summary == {"rendered": 2, "skipped": 0, "removed": 0, "snapshots": 2, "progress": True, "classes": 0}
    expected = {f"generated_image_epoch_{e:04d}_{i}.png" for e in (2, 10) for i in range(6)}
    expected |= {"grid_epoch_0002.png", "grid_epoch_0010.png", "progress.png", "progress.gif", "index.json"}
    assert outputs(out) == expected

    # grid: 4 columns x 2 rows of 8x8 cells, each cell is the matching single image
    grid = read_png(out / "grid_epoch_0010.png", 1)
    assert grid.shape == (2 * 8 + PAD, 4 * 8 + 3 * PAD, 1)
    for i in range(6):
        r, c = divmod(i, 4)
        cell = grid[r * (8 + PAD):r * (8 + PAD) + 8, c * (8 + PAD):c * (8 + PAD) + 8]
        assert (cell == read_png(out / f"generated_image_epoch_0010_{i}.png", 1)).all()
    assert not (read_png(out / "generated_image_epoch_0010_0.png", 1)
                == read_png(out / "generated_image_epoch_0010_1.png", 1)).all()

    # progress: one row per snapshot in epoch order (2 before 10), first 3 latent points
    progress = read_png(out / "progress.png", 1)
    assert progress.shape == (2 * 8 + PAD, 3 * 8 + 2 * PAD, 1)
    for r, epoch in enumerate((2, 10)):
        for i in range(3):
            cell = progress[r * (8 + PAD):r * (8 + PAD) + 8, i * (8 + PAD):i * (8 + PAD) + 8]
            assert (cell == read_png(out / f"generated_image_epoch_{epoch:04d}_{i}.png", 1)).all()
    with Image.open(out / "progress.gif") as gif:
        assert gif.n_frames == 2

    index = json.loads((out / "index.json").read_text())
    assert set(index["snapshots"]) == {"generator_epoch_0002.npz", "generator_epoch_0010.npz"}
    assert index["snapshots"]["generator_epoch_0002.npz"]["params"]["seed"] == params.common.seed


def test_same_generator_and_seed_give_same_bytes_and_same_latents_for_every_snapshot(tmp_path):
    params = params_for(count=4)
    snap = tmp_path / "snap"
    random_snapshot(params, snap / "generator_epoch_0001.npz", seed=5)
    render_samples(params, snap, tmp_path / "a")
    render_samples(params, snap, tmp_path / "b")
    for name in outputs(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # a copy of the same weights under another epoch renders the same images (same latents)
    (snap / "generator_epoch_0002.npz").write_bytes((snap / "generator_epoch_0001.npz").read_bytes())
    render_samples(params, snap, tmp_path / "a")
    for i in range(4):
        assert ((tmp_path / "a" / f"generated_image_epoch_0001_{i}.png").read_bytes()
                == (tmp_path / "a" / f"generated_image_epoch_0002_{i}.png").read_bytes())
    # another seed gives other latents, so other images
    other = params_for(count=4, common={"seed": params.common.seed + 1})
    render_samples(other, snap, tmp_path / "c")
    assert ((tmp_path / "a" / "grid_epoch_0001.png").read_bytes()
            != (tmp_path / "c" / "grid_epoch_0001.png").read_bytes())


def test_incremental(tmp_path):
    params = params_for(count=4, grid_columns=2, progress_columns=2)
    snap, out = tmp_path / "snap", tmp_path / "out"
    random_snapshot(params, snap / "generator_epoch_0001.npz", seed=1)
    random_snapshot(params, snap / "generator_epoch_0002.npz", seed=2)
    assert render_samples(params, snap, out)["rendered"] == 2

    progress_before = (out / "progress.png").read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    summary = render_samples(params, snap, out)
    assert (summary["rendered"], summary["skipped"], summary["progress"]) == (0, 2, False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes  # nothing rewritten

    random_snapshot(params, snap / "generator_epoch_0003.npz", seed=3)
    summary = render_samples(params, snap, out)
    assert (summary["rendered"], summary["skipped"], summary["progress"]) == (1, 2, True)
    assert read_png(out / "progress.png", 1).shape[0] == 3 * 8 + 2 * PAD
    assert (out / "progress.png").read_bytes() != progress_before

    # a changed snapshot (same name, new weights) is rendered again
    random_snapshot(params, snap / "generator_epoch_0002.npz", seed=22)
    assert render_samples(params, snap, out)["rendered"] == 1

    # a removed snapshot's images go; the progress picture loses its row
    (snap / "generator_epoch_0001.npz").unlink()
    summary = render_samples(params, snap, out)
    assert (summary["rendered"], summary["removed"], summary["progress"]) == (0, 5, True)
    assert not any("epoch_0001" in name for name in outputs(out))
    assert read_png(out / "progress.png", 1).shape[0] == 2 * 8 + PAD
    assert "generator_epoch_0001.npz" not in json.loads((out / "index.json").read_text())["snapshots"]

    # a deleted output image makes its snapshot render again
    (out / "generated_image_epoch_0003_1.png").unlink()
    assert render_samples(params, snap, out)["rendered"] == 1

    # params that shape rendering re-render everything; images beyond a smaller count are removed
    smaller = params_for(count=3, grid_columns=2, progress_columns=2)
    summary = render_samples(smaller, snap, out)
    assert (summary["rendered"], summary["removed"]) == (2, 2)
    assert not (out / "generated_image_epoch_0002_3.png").exists()


def test_errors(tmp_path):
    params = params_for()
    with pytest.raises(UserError, match="missing"):
        render_samples(params, tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "other.npz").write_bytes(b"")
    with pytest.raises(UserError, match="empty: no generator snapshots"):
        render_samples(params, tmp_path / "empty", tmp_path / "out")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "generator_epoch_0001.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="generator_epoch_0001.npz: cannot read"):
        render_samples(params, corrupt, tmp_path / "out")

    other = tmp_path / "other"
    random_snapshot(params_for(size=16), other / "generator_epoch_0001.npz", seed=0)
    with pytest.raises(UserError, match="generator_epoch_0001.npz: array .* has shape"):
        render_samples(params, other, tmp_path / "out2")


# ---------------------------------------------------------------------------- the stage script
def write_project(folder: Path, **sample) -> None:
    raw = tiny_raw(model={"arch": "mlp"}, sample={"count": 4, "grid_columns": 2, "progress_columns": 2, **sample})
    raw["data"]["folder"] = str(folder)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))


def test_stage_without_snapshots_exits_2_with_one_line(tmp_path):
    write_project(tmp_path)
    result = run_stage(tmp_path, "sample", timeout=120)
    assert result.returncode == 2
    assert stderr_lines(result.stderr) == [
        "error: outputs/snapshots: snapshot folder not found (run the train stage first)"]


def test_stage_renders_then_stops_at_a_corrupt_snapshot_with_one_line(tmp_path):
    """One subprocess (TensorFlow starts once): epoch 1 renders, epoch 2 is corrupt -> exit 2."""
    write_project(tmp_path)
    params = parse_params(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    snap = tmp_path / "outputs" / "snapshots"
    random_snapshot(params, snap / "generator_epoch_0001.npz", seed=1)
    (snap / "generator_epoch_0002.npz").write_bytes(b"garbage")
    result = run_stage(tmp_path, "sample", timeout=180)
    assert result.returncode == 2
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: outputs/snapshots/generator_epoch_0002.npz: cannot read")
    samples = tmp_path / "outputs" / "samples"
    assert (samples / "generated_image_epoch_0001_3.png").is_file()  # work done before the error is kept
    assert list(json.loads((samples / "index.json").read_text())["snapshots"]) == ["generator_epoch_0001.npz"]


def test_stage_main_prints_one_summary_line(tmp_path, monkeypatch, capsys):
    import importlib.util

    write_project(tmp_path)
    params = parse_params(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    random_snapshot(params, tmp_path / "outputs" / "snapshots" / "generator_epoch_0001.npz", seed=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "stages"))
    spec = importlib.util.spec_from_file_location("sample_stage", REPO / "stages" / "sample.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main()
    stage.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sample: 1 snapshots, 1 rendered, 0 unchanged")
    assert lines[1].startswith("sample: 1 snapshots, 0 rendered, 1 unchanged") and "progress unchanged" in lines[1]
