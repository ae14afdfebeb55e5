"""Tests for src/generate.py: outputs, pixel mapping, slerp, memory-flat .npy, atomicity, errors."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, stderr_lines, tiny_raw
from src import generate
from src.atomic import save_arrays
from src.config import parse_params
from src.networks import build_generator, load_generator, variables_to_arrays
from src.pictures import PAD, read_png
from src.sampling import generate_batches, generate_images, to_uint8


def make_project(folder: Path, size=8, channels=1, value_range=(-1, 1), seed=1, logits=None, name="gen.npz"):
    """params.yaml + a tiny MLP generator (random weights, or constant output activation(logits))."""
    raw = tiny_raw(data={"image_size": size, "channels": channels, "range": list(value_range)},
                   model={"arch": "mlp"})
    raw["data"]["folder"] = str(folder)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    keras.utils.set_random_seed(seed)
    model = build_generator(params.model, params.data)
    if logits is not None:
        last = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
        last.kernel.assign(np.zeros(last.kernel.shape, np.float32))
        last.bias.assign(np.asarray(logits, np.float32).reshape(-1))
    path = folder / name
    if path.suffix == ".keras":
        model.save(path)
    else:
        save_arrays(path, variables_to_arrays(model, "g"))
    return params, path


def cli(folder: Path, params_path: Path, gen: Path, *args: str) -> list[str]:
    return ["--params", str(params_path), "--generator", str(gen), *args]


def run_main(argv, monkeypatch, capsys):
    """Run the CLI's wrapped main in-process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["generate", *argv])
    try:
        generate.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("value_range", [(-1, 1), (0, 1)])
@pytest.mark.parametrize("channels", [1, 3])
def test_npy_and_png_folder_pixels(tmp_path, monkeypatch, capsys, value_range, channels):
    logits = np.zeros((8, 8, channels), np.float32)
    logits[:3] = 30.0   # top of the range -> 255
    logits[3:5] = -30.0  # bottom of the range -> 0; the rest: middle -> 128
    expected = np.where(logits > 0, 255, np.where(logits < 0, 0, 128)).astype(np.uint8)
    params, gen = make_project(tmp_path, channels=channels, value_range=value_range, logits=logits)

    code, out, err = run_main(cli(tmp_path, tmp_path / "params.yaml", gen, "--n", "5", "--batch-size", "2",
                                  "--out", str(tmp_path / "a.npy")), monkeypatch, capsys)
    assert code == 0, err
    assert out.startswith("generate: 5 images as uint8 array (5, 8, 8, %d)" % channels)
    array = np.load(tmp_path / "a.npy")
    assert array.shape == (5, 8, 8, channels) and array.dtype == np.uint8
    assert (array == expected).all()

    code, _, err = run_main(cli(tmp_path, tmp_path / "params.yaml", gen, "--n", "3",
                                "--out", str(tmp_path / "pngs")), monkeypatch, capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "pngs")) == ["image_000000.png", "image_000001.png", "image_000002.png"]
    with Image.open(tmp_path / "pngs" / "image_000002.png") as picture:
        assert picture.mode == ("L" if channels == 1 else "RGB") and picture.size == (8, 8)
    assert (read_png(tmp_path / "pngs" / "image_000002.png", channels) == expected).all()


def test_npy_matches_generator_seed_and_keras_export(tmp_path, monkeypatch, capsys):
    params, gen = make_project(tmp_path, name="gen.keras")
    argv = cli(tmp_path, tmp_path / "params.yaml", gen, "--n", "7", "--batch-size", "3", "--seed", "11")
    assert run_main([*argv, "--out", str(tmp_path / "a.npy")], monkeypatch, capsys)[0] == 0
    assert run_main([*argv, "--out", str(tmp_path / "b.npy")], monkeypatch, capsys)[0] == 0
    a = np.load(tmp_path / "a.npy")
    assert a.tobytes() == np.load(tmp_path / "b.npy").tobytes()  # same seed -> same images
    model = load_generator(params, gen)
    direct = to_uint8(generate_images(model, 7, params.model.latent_dim, 11, batch_size=3), params.data.value_range)
    assert (a == direct).all()
    assert len({a[i].tobytes() for i in range(7)}) == 7
    assert run_main([*argv[:-2], "--seed", "12", "--out", str(tmp_path / "c.npy")], monkeypatch, capsys)[0] == 0
    assert not (np.load(tmp_path / "c.npy") == a).all()
    assert run_main([*argv, "--truncation", "0.5", "--out", str(tmp_path / "t.npy")], monkeypatch, capsys)[0] == 0
    assert np.load(tmp_path / "t.npy").shape == (7, 8, 8, 1)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_interpolation_picture(tmp_path, monkeypatch, capsys):
    params, gen = make_project(tmp_path)
    argv = cli(tmp_path, tmp_path / "params.yaml", gen, "--interpolate", "5", "--rows", "2")
    code, out, err = run_main([*argv, "--out", str(tmp_path / "walk.png")], monkeypatch, capsys)
    assert code == 0, err
    grid = read_png(tmp_path / "walk.png", 1)
    assert grid.shape == (2 * 8 + PAD, 5 * 8 + 4 * PAD, 1)
    # row r starts at latent 2r and ends at latent 2r + 1 of the seed
    model = load_generator(params, gen)
    ends = generate.interpolation_latents(2, 5, params.model.latent_dim, params.common.seed, None)
    images = to_uint8(np.asarray(model(ends, training=False)), params.data.value_range)
    for r in range(2):
        for s in range(5):
            y, x = r * (8 + PAD), s * (8 + PAD)
            assert (grid[y:y + 8, x:x + 8] == images[r * 5 + s]).all()
    assert run_main([*argv, "--out", str(tmp_path / "walk.npy")], monkeypatch, capsys)[0] == 0
    assert np.load(tmp_path / "walk.npy").shape == (2, 5, 8, 8, 1)


def test_slerp():
    from src.sampling import latents

    a, b = latents(2, 16, seed=3)
    path = generate.slerp(a, b, np.linspace(0, 1, 9))
    assert np.allclose(path[0], a, atol=1e-5) and np.allclose(path[-1], b, atol=1e-5)
    # orthogonal unit vectors: the path stays on the unit circle
    u, v = np.eye(2, dtype=np.float32)
    arc = generate.slerp(u, v, np.linspace(0, 1, 5))
    assert np.allclose(np.linalg.norm(arc, axis=1), 1.0, atol=1e-6)
    assert np.allclose(arc[2], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert np.allclose(generate.slerp(u, u, np.array([0.5])), [u])  # parallel: no division by zero


# ---------------------------------------------------------------------------- memory and atomicity
def test_npy_generation_is_memory_flat(tmp_path):
    params, gen = make_project(tmp_path, size=16, channels=3)
    model = load_generator(params, gen)
    n, batch = 20000, 250
    total_uint8 = n * 16 * 16 * 3  # 15 MB (61 MB as float32)

    def peak_for(count: int) -> int:
        batches = generate_batches(model, count, params.model.latent_dim, 1, batch)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            generate.write_npy(batches, tmp_path / "big.npy", count, (16, 16, 3), params.data.value_range,
                               quiet=True)
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    small, large = peak_for(n // 10), peak_for(n)
    # flat: ten times the images costs no more memory (a few batches' worth, not the whole array)
    assert large < 1.2 * small + 200_000, f"peak {large / 1e6:.2f} MB vs {small / 1e6:.2f} MB for a tenth"
    assert large < total_uint8 / 4, f"peak {large / 1e6:.1f} MB for {total_uint8 / 1e6:.1f} MB of images"
    array = np.load(tmp_path / "big.npy", mmap_mode="r")
    assert array.shape == (n, 16, 16, 3) and array.dtype == np.uint8
    first = to_uint8(next(generate_batches(model, n, params.model.latent_dim, 1, batch)), params.data.value_range)
    assert (array[:batch] == first).all() and array[-1].any()


def test_interrupted_npy_leaves_no_file(tmp_path):
    def failing():
        yield np.zeros((2, 8, 8, 1), np.float32)
        raise KeyboardInterrupt

    target = tmp_path / "out.npy"
    with pytest.raises(KeyboardInterrupt):
        generate.write_npy(failing(), target, 4, (8, 8, 1), (-1.0, 1.0), quiet=True)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- errors
def one_error_line(stderr: str) -> str:
    lines = stderr_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_error_cases_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    params, gen = make_project(tmp_path)
    base = ["--params", str(tmp_path / "params.yaml")]
    cases = {
        "not found": [*base, "--generator", str(tmp_path / "nope.keras"), "--n", "2", "--out", "x.npy"],
        "--n: must be an integer >= 1": [*base, "--generator", str(gen), "--n", "0", "--out", "x.npy"],
        "--truncation: must be a finite number > 0": [*base, "--generator", str(gen), "--n", "2",
                                                      "--truncation", "-1", "--out", "x.npy"],
        "--interpolate: must be an integer >= 2": [*base, "--generator", str(gen), "--interpolate", "1",
                                                   "--out", "x.png"],
        "--n is required": [*base, "--generator", str(gen), "--out", "x.npy"],
        "the following arguments are required: --out": [*base, "--n", "2"],
        "params file not found": ["--params", str(tmp_path / "no.yaml"), "--n", "2", "--out", "x.npy"],
    }
    (tmp_path / "afile").write_text("")
    cases["is not a folder"] = [*base, "--generator", str(gen), "--n", "2", "--out", str(tmp_path / "afile" / "x.npy")]
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    cases["bad.npz: cannot read the generator snapshot"] = [*base, "--generator", str(tmp_path / "bad.npz"),
                                                            "--n", "2", "--out", str(tmp_path / "y.npy")]
    (tmp_path / "bad.keras").write_bytes(b"junk")
    cases["bad.keras: cannot load the generator"] = [*base, "--generator", str(tmp_path / "bad.keras"),
                                                     "--n", "2", "--out", str(tmp_path / "y.npy")]
    other = tmp_path / "other"
    other.mkdir()
    _, wrong = make_project(other, size=16)  # weights for 16x16 images, params say 8x8
    cases["has shape"] = [*base, "--generator", str(wrong), "--n", "2", "--out", str(tmp_path / "y.npy")]
    for needle, argv in cases.items():
        code, out, err = run_main(argv, monkeypatch, capsys)
        assert code == 2, (needle, err)
        assert needle in one_error_line(err), (needle, err)
        assert out == ""
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(tmp_path, monkeypatch, capsys):
    _, gen = make_project(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_main(["--params", str(tmp_path / "params.yaml"), "--generator", str(gen), "--n", "2",
                             "--out", str(locked / "x.npy")], monkeypatch, capsys)
    assert code == 2 and "not writable" in one_error_line(err)


def test_command_line(tmp_path):
    """The real command: python -m src.generate (one process; TensorFlow starts once)."""
    make_project(tmp_path)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "src.generate", "--params", str(tmp_path / "params.yaml"),
               "--generator", str(tmp_path / "gen.npz")]
    result = subprocess.run([*command, "--n", "300", "--batch-size", "64", "--out", str(tmp_path / "s.npy")],
                            cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("generate: 300 images as uint8 array (300, 8, 8, 1) written to")
    assert "generate:" in result.stderr and "300/300" in result.stderr  # the tqdm bar
    assert np.load(tmp_path / "s.npy").shape == (300, 8, 8, 1)

    bad = subprocess.run([*command, "--n", "many", "--out", "x.npy"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert one_error_line(bad.stderr) == "error: argument --n: must be an integer >= 1, got 'many' (see --help)"


def test_snapshot_arrays_are_keyed_by_path_and_old_positional_ones_are_named(tmp_path):
    from src.errors import UserError

    params = parse_params(tiny_raw(data={"image_size": 8, "channels": 1}))
    model = build_generator(params.model, params.data)
    arrays = variables_to_arrays(model, "g")
    assert all(key.startswith("g/") and key.count("/") >= 2 for key in arrays)
    # BatchNorm's gamma and beta (and its two statistics) share a shape: keyed apart, they load into their own places.
    gamma = next(k for k in arrays if k.endswith("/gamma"))
    arrays[gamma] = np.full_like(arrays[gamma], 3.0)
    save_arrays(tmp_path / "keyed.npz", arrays)
    loaded = load_generator(params, tmp_path / "keyed.npz")
    first_bn = next(layer for layer in loaded.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert np.all(first_bn.gamma.numpy() == 3.0) and not np.any(first_bn.beta.numpy() == 3.0)
    save_arrays(tmp_path / "old.npz", {f"g.{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)})
    with pytest.raises(UserError, match=r"old\.npz: this generator file predates arrays keyed by variable path"):
        load_generator(params, tmp_path / "old.npz")
    del arrays[gamma]
    save_arrays(tmp_path / "short.npz", arrays)
    with pytest.raises(UserError, match=rf"short\.npz: generator file has no array '{gamma}'"):
        load_generator(params, tmp_path / "short.npz")
