"""Bad data, bad params and unsafe inputs: each is used correctly or refused with one clear line.

- A corpus of awkward and broken image files goes through the preprocess stage: every file
  is either used or listed with its reason in data/processed/report.json; nothing crashes.
- A truncated shard stops the train stage before training, with a line naming the shard.
- Every key of the params schema (found by walking the dataclasses in src/config.py, so a
  new key is covered automatically) is given a wrong type, an out-of-range value (where it
  has choices or a check) and a misspelled name: each stage script exits 2 with one line
  naming the key, before any work, and leaves its folder untouched.
- No pickle anywhere data is loaded; paths in params cannot make a stage write elsewhere.
"""
from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import src.preprocess as prep
from conftest import REPO, bomb_png, run_stage, write_mnist
from src import config, images
from src.atomic import sha256_file, write_json
from src.config import DataParams
from src.dataset import open_shards
from src.errors import UserError

STAGES = ("scan", "preprocess", "train", "sample", "evaluate")


# ============================================================================ bad data
def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


RED = (255, 0, 0)
ODD_GOOD = os.fsdecode(b"caf\xe9 na\xefve.png")   # latin-1 bytes: not valid UTF-8
ODD_BAD = os.fsdecode(b"broken \xff\xfe.jpg")

# name -> what the image must decode to (mean RGB in [0, 1], tolerance)
GOOD = {
    "plain.png": ((0.0, 0.0, 1.0), 0.02),
    "name with spaces.jpg": ((1.0, 0.0, 0.0), 0.05),
    ODD_GOOD: ((0.0, 1.0, 0.0), 0.02),
    "one_pixel_1x1.png": ((1.0, 0.0, 0.0), 0.02),
    "wide_10000x10.png": ((0.0, 0.0, 1.0), 0.02),
    "deep_16bit.tif": ((40000 / 65535,) * 3, 0.02),
    "cmyk.tif": ((1.0, 0.0, 0.0), 0.08),
    "animated.gif": ((1.0, 0.0, 0.0), 0.02),          # the first frame
    "png_bytes_named.jpg": ((0.0, 1.0, 0.0), 0.02),   # content decides, not the extension
    "folder.png/inside.png": ((0.0, 0.0, 1.0), 0.02),  # a folder with an image name is searched
}
# name -> the reasons the report may give
BAD = {
    "truncated.jpg": ("truncated or corrupt",),
    "truncated.png": ("truncated or corrupt",),
    "zero_bytes.png": ("zero bytes",),
    "text_named.png": ("not an image",),
    "bomb.png": ("decompression bomb",),
    "symlink_loop.png": ("symlink loop",),
    "dangling_link.png": ("dangling symlink: points to nowhere/missing.png",),
    "fifo.png": ("not a regular file (FIFO)",),  # must never block on open()
    "folder.png": ("a folder, not an image file",),  # listed, and its contents are still used
    ODD_BAD: ("truncated or corrupt",),
}


def make_corpus(folder: Path) -> tuple[Path, dict, dict]:
    """The corpus, and the GOOD and BAD tables for it (a file system that refuses
    non-UTF-8 names, e.g. macOS APFS, gets the corpus without those two files)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    good, bad = dict(GOOD), dict(BAD)
    try:
        (folder / ODD_GOOD).write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        del good[ODD_GOOD], bad[ODD_BAD]
    Image.new("RGB", (40, 30), (0, 0, 255)).save(folder / "plain.png")
    Image.new("RGB", (33, 47), RED).save(folder / "name with spaces.jpg", quality=95)
    if ODD_GOOD in good:
        Image.new("RGB", (20, 20), (0, 255, 0)).save(folder / ODD_GOOD)
        noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8))
        (folder / ODD_BAD).write_bytes(_encoded(noisy, "JPEG")[:500])
    Image.new("RGB", (1, 1), RED).save(folder / "one_pixel_1x1.png")
    Image.new("RGB", (10000, 10), (0, 0, 255)).save(folder / "wide_10000x10.png")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "deep_16bit.tif")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(folder / "cmyk.tif")
    frames = [Image.new("RGB", (20, 20), c).convert("P") for c in (RED, (0, 0, 255), (0, 255, 0))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    (folder / "png_bytes_named.jpg").write_bytes(_encoded(Image.new("RGB", (12, 12), (0, 255, 0)), "PNG"))
    (folder / "folder.png").mkdir()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(folder / "folder.png" / "inside.png")

    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8))
    (folder / "truncated.jpg").write_bytes(_encoded(noise, "JPEG")[:600])
    (folder / "truncated.png").write_bytes(_encoded(noise, "PNG")[:3000])
    (folder / "zero_bytes.png").write_bytes(b"")
    (folder / "text_named.png").write_text("this is not a picture\n")
    bomb_png(folder / "bomb.png")
    os.symlink("symlink_loop.png", folder / "symlink_loop.png")
    os.symlink("nowhere/missing.png", folder / "dangling_link.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "back_up")  # a folder loop: must not be followed
    (folder / "notes.txt").write_text("no image extension: not listed\n")
    return folder, good, bad


def _check_report(out: Path, good: dict, bad: dict) -> dict:
    report = json.loads((out / "report.json").read_text())
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(bad), (sorted(reasons), sorted(bad))
    for name, allowed in bad.items():
        assert reasons[name].startswith(allowed), (name, reasons[name])
    assert report["images"] == len(good) and report["skipped_count"] == len(bad)
    assert report["total_files"] == len(good) + len(bad)

    manifest, shards = open_shards(out)
    assert manifest["count"] == len(good)
    stacked = np.concatenate(shards)
    assert stacked.shape == (len(good), 16, 16, 3) and np.isfinite(stacked).all()
    assert 0.0 <= stacked.min() and stacked.max() <= 1.0
    order = sorted(good, key=os.fsencode)  # the stage keeps the sorted file order
    for i, name in enumerate(order):
        want, tol = good[name]
        np.testing.assert_allclose(stacked[i].reshape(-1, 3).mean(axis=0), want, atol=tol, err_msg=name)
    return report


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "images")


def test_bad_files_are_used_or_skipped_with_a_reason_by_the_stage(corpus, tmp_path):
    corpus, good, bad = corpus
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(source="folder", folder=str(corpus), image_size=16, channels=3, range=[0, 1],
                       shard_size=4, workers=2, labels="none")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = run_stage(tmp_path, "preprocess", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"preprocess: {len(good)} images -> 3 shard(s)"), result.stdout
    assert f"skipped {len(bad)} (" in lines[0]
    assert "Traceback" not in result.stderr
    _check_report(tmp_path / "data" / "processed", good, bad)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                    reason="the patched open() reaches the decoding workers only when they are forked")
def test_an_unreadable_file_is_skipped_with_its_reason(corpus, tmp_path, monkeypatch):
    # Root reads anything, so the OS's refusal is stood in for (the fork start method
    # carries the patch into the decoding workers).
    corpus, good, bad = corpus
    real_open = open

    def refuse(path, *args, **kwargs):
        if os.fspath(path).endswith("plain.png"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(images, "open", refuse, raising=False)
    data = DataParams(source="folder", folder=str(corpus), image_size=16, channels=3, range=[0, 1],
                      shard_size=4, workers=2)
    prep.preprocess(data, 0, tmp_path / "processed")
    good = {k: v for k, v in good.items() if k != "plain.png"}
    _check_report(tmp_path / "processed", good, {**bad, "plain.png": ("unreadable: Permission denied",)})


def test_truncated_shard_is_reported_before_training(project):
    root = project()
    shard = root / "data" / "processed" / "shard_00001.npy"
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    result = run_stage(root, "train")
    assert result.returncode == 2, result.stderr[-3000:]
    # (TensorFlow's own start-up notices may precede it: the stage's message is the one error line)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shard_00001.npy" in errors[0] and "preprocess" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "outputs" / "checkpoints").exists() and not (root / "outputs" / "snapshots").exists()


def test_truncated_shard_with_a_matching_checksum_is_still_refused(project):
    # E.g. a manifest rewritten by hand after the file was cut: the sha256 matches, the size does not.
    root = project()
    folder = root / "data" / "processed"
    shard = folder / "shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-256])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = sha256_file(shard)
    write_json(folder / "manifest.json", manifest)
    with pytest.raises(UserError, match="shard_00000.npy"):
        open_shards(folder)


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "sub/shard_00000.npy"])
def test_manifest_cannot_name_files_outside_its_folder(project, name):
    folder = project() / "data" / "processed"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    write_json(folder / "manifest.json", manifest)
    with pytest.raises(UserError, match="plain file name"):
        open_shards(folder, verify=False)


# ============================================================================ bad params
def _leaves(cls=config.Params, prefix: str = ""):
    """(dotted key, type, field) of every leaf of the schema, and the sections."""
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        key, tp = prefix + fld.name, hints[fld.name]
        if dataclasses.is_dataclass(tp):
            yield key, tp, None
            yield from _leaves(tp, key + ".")
        else:
            yield key, tp, fld


def _wrong_types(tp) -> list:
    if tp in (int, float, bool):
        return ["ten"]
    if tp is str:
        return [[1, 2]]
    if typing.get_origin(tp) is list:
        return ["ten", [1, "two"]]
    raise AssertionError(f"no wrong-type value for schema type {tp}; add one here")


_OUT_OF_RANGE = {
    int: [-1, 0, 10 ** 9],
    float: [-0.5, 1.5, 1e9, 0.0],
    list: [[0, 2], [0], [-1, -1, -1], [256, 0, 0], []],
    str: ["no-such-choice"],
}


def _out_of_range(key: str, tp, fld) -> list:
    choices, check = fld.metadata.get("choices"), fld.metadata.get("check")
    if choices is not None:
        if tp is str:
            return [f"no-such-{choices[0]}"]
        return [max(choices) + 1]
    if check is not None:
        base = list if typing.get_origin(tp) is list else tp
        for value in _OUT_OF_RANGE[base]:
            if check(value) is not None:
                return [value]
        raise AssertionError(f"no out-of-range candidate for '{key}'; add one to _OUT_OF_RANGE")
    return []  # free-form (paths, switches): no range to leave


def _misspelled(name: str) -> str:
    return name + name[-1]


def _set(raw: dict, key: str, value) -> None:
    *path, last = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def _get(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        node = node[part]
    return node


def bad_params_table() -> list[tuple[str, str, str, dict]]:
    """(case id, key the error must name, kind, params) for every key of the schema."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    config.parse_params(base)  # the base itself is valid
    cases = []
    for key, tp, fld in _leaves():
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        wrong_name = parent + _misspelled(key.rsplit(".", 1)[-1])
        raw = yaml.safe_load(yaml.safe_dump(base))
        node = raw if not parent else _get(raw, parent[:-1])
        try:
            value = _get(base, key)
        except KeyError:  # a key params.yaml leaves at its default
            value = fld.default if fld is not None and fld.default is not dataclasses.MISSING else {}
        node[_misspelled(key.rsplit(".", 1)[-1])] = value
        cases.append((f"{key}:misspelled", wrong_name, "unknown", raw))
        if fld is None:  # a section: must be a mapping
            raw = yaml.safe_load(yaml.safe_dump(base))
            _set(raw, key, 5)
            cases.append((f"{key}:not-a-mapping", key, "mapping", raw))
            continue
        for i, value in enumerate(_wrong_types(tp)):
            raw = yaml.safe_load(yaml.safe_dump(base))
            _set(raw, key, value)
            cases.append((f"{key}:type{i}", key, "type", raw))
        for value in _out_of_range(key, tp, fld):
            raw = yaml.safe_load(yaml.safe_dump(base))
            _set(raw, key, value)
            cases.append((f"{key}:range", key, "range", raw))
    return cases


def test_table_covers_every_schema_key():
    table = bad_params_table()
    keys = {key for key, _, _ in _leaves()}
    assert {c[0].split(":")[0] for c in table} == keys
    kinds = {kind for *_, kind, _ in table}
    assert kinds == {"unknown", "mapping", "type", "range"}
    # in-process: every case is refused with one line naming the key
    for case, key, kind, raw in table:
        with pytest.raises(UserError) as info:
            config.parse_params(raw)
        message = str(info.value)
        assert "\n" not in message and f"'{key}'" in message, (case, message)


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _scratch(root: Path, raw: dict) -> Path:
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # Earlier outputs that a refused run must not touch.
    for rel, text in (("data/processed/manifest.json", "{}\n"), ("outputs/metrics.json", "{\"fid\": 1}\n"),
                      ("outputs/checkpoints/ckpt_e000001_s000000010.npz", "x"), ("data/raw/mnist/SHA256SUMS", "")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _run_script(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("GAN_FAULT", None)
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_every_bad_param_stops_every_stage_with_one_line_and_touches_nothing(tmp_path):
    """Each case runs against one stage script (in turn, so every script gets a share of
    every kind); two at a time, since each is a separate short process."""
    table = bad_params_table()
    jobs, kinds = [], {}
    for i, (case, key, kind, raw) in enumerate(table):
        stage = STAGES[sum(1 for job in jobs if job[5] == kind) % len(STAGES)]  # each kind round the stages
        folder = _scratch(tmp_path / f"case{i:03d}", raw)
        jobs.append((case, key, stage, folder, _tree(folder), kind))
        kinds.setdefault(stage, set()).add(kind)
    assert all(kinds[s] == {"unknown", "mapping", "type", "range"} for s in STAGES), kinds

    def check(job) -> str | None:
        case, key, stage, folder, before, _ = job
        result = _run_script(stage, folder)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        problems = []
        if result.returncode != 2:
            problems.append(f"exit {result.returncode}")
        if len(lines) != 1 or not lines[0].startswith("error: ") or f"'{key}'" not in lines[0]:
            problems.append(f"stderr {result.stderr.strip()[-500:]!r}")
        if result.stdout.strip():
            problems.append(f"stdout {result.stdout.strip()[-200:]!r}")
        if _tree(folder) != before:
            problems.append("the folder changed")
        return f"{case} via stages/{stage}.py: {'; '.join(problems)}" if problems else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        failures = [f for f in pool.map(check, jobs) if f]
    assert not failures, f"{len(failures)} of {len(jobs)} cases failed:\n" + "\n".join(failures)
    per_stage = {s: sum(1 for j in jobs if j[2] == s) for s in STAGES}
    print(f"{len(jobs)} bad-params cases over {len({j[0].split(':')[0] for j in jobs})} keys; per stage: {per_stage}")


# ============================================================================ safety
def _python_files() -> list[Path]:
    return sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "stages").glob("*.py"))


UNSAFE = [
    (r"allow_pickle\s*=\s*True", "allow_pickle set to " "True"),
    (r"^\s*(import|from)\s+(c?pickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\b", "a pickle-like import"),
    (r"\b(pd|pandas)\.read_pickle\b", "pandas.read_pickle"),
    (r"\btorch\.load\b", "torch.load"),
    (r"\byaml\.(load|unsafe_load|full_load)\s*\(", "yaml.load without safe_load"),
    (r"safe_mode\s*=\s*False", "Keras safe_mode=False (allows code in .keras files)"),
]


def test_no_pickle_where_data_is_loaded():
    found = []
    for path in _python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for pattern, what in UNSAFE:
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_np_load_refuses_pickles():
    calls, bad = 0, []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = ast.unparse(node.func)
            if name not in ("np.load", "numpy.load", "np.lib.format.read_array", "numpy.lib.format.read_array"):
                continue
            calls += 1
            flag = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert calls >= 3, "expected np.load calls in src/ (dataset, atomic, mnist)"
    assert not bad, "np.load without allow_pickle=False:\n" + "\n".join(bad)


def _all_files(folder: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            # a folder's own mtime changes when an entry is added: the entries themselves are listed
            out[path.relative_to(folder).as_posix()] = "dir" if path.is_dir() else (st.st_mtime_ns, st.st_size)
    return out


@pytest.mark.parametrize("source", ["mnist", "folder"])
def test_paths_in_params_cannot_make_a_stage_write_outside_data_and_outputs(tmp_path, source):
    elsewhere = tmp_path / "elsewhere"
    mnist = elsewhere / "mnist"
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, (20, 28, 28), np.uint8)
    digit_labels = (np.arange(20) % 10).astype(np.uint8)  # every class present (the default reads labels)
    write_mnist(mnist, (digits, digit_labels), (digits, digit_labels))
    pictures = elsewhere / "pictures"
    pictures.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).save(pictures / f"p{i}.png")

    project = tmp_path / "project"
    project.mkdir()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # One path relative and climbing out of the project, the other absolute.
    raw["data"].update(mnist_dir="../elsewhere/mnist", folder=str(pictures), shard_size=8)
    if source == "folder":
        raw["data"].update(source="folder", image_size=16, channels=3, range=[0, 1], workers=1, labels="none")
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    before = _all_files(tmp_path)
    result = run_stage(project, "preprocess", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _all_files(tmp_path)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    allowed = ("project/data", "project/data/", "project/outputs", "project/outputs/")
    outside = [k for k in changed if not k.startswith(allowed)]
    assert not outside, f"written outside data/ and outputs/: {outside}"
    assert any(k.startswith("project/data/processed/shard_") for k in changed)
    assert json.loads((project / "data" / "processed" / "manifest.json").read_text())["count"] == (
        20 if source == "mnist" else 5)
