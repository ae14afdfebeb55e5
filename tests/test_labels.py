"""Labels in the data (``data.labels``): src/labels.py, through src/preprocess.py, read back by
src/dataset.py; every bad label case refused with one line naming the file; unlabelled data
keeps the bytes it had before labels existed."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import src.preprocess as prep
from conftest import REPO, tiny_raw, write_mnist
from src.atomic import save_npy, sha256_file, write_json
from src.config import DataParams, parse_params
from src.dataset import ShardReader, class_names, open_shards, read_manifest
from src.errors import UserError


def digest(out: Path) -> str:
    """One sha256 over every file of a processed folder (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(out.iterdir()):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def save_png(path: Path, rng: np.random.Generator, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(path)


def folder_params(folder: Path, **over) -> DataParams:
    base = dict(source="folder", folder=str(folder), image_size=16, channels=3, range=[-1, 1],
                shard_size=3, workers=1)
    return DataParams(**{**base, **over})


def make_mnist(folder: Path, n: int = 23, digits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (n, 28, 28), np.uint8)
    labels = (np.arange(n) * 7 % 10).astype(np.uint8) if digits is None else digits.astype(np.uint8)
    write_mnist(folder, (images, labels), (images[:2], labels[:2]))
    return images, labels


def make_tree(root: Path) -> Path:
    """Sub-folders as classes: cats (3, one nested deeper), dogs (2 usable + 1 broken), birds (1)."""
    rng = np.random.default_rng(0)
    folder = root / "tree"
    for rel in ("cats/a.png", "cats/b.png", "cats/x/deep.png", "dogs/d1.png", "dogs/d2.png", "birds/b.png"):
        save_png(folder / rel, rng)
    (folder / "dogs" / "broken.png").write_bytes(b"")
    (folder / "README.txt").write_text("not an image: ignored\n")
    return folder


def make_flat(root: Path, csv_text: str | None = None, name: str = "labels.csv") -> Path:
    """A flat folder of five images (one file name with a comma) and a label file."""
    rng = np.random.default_rng(1)
    folder = root / "flat"
    for rel in ("p1.png", "p2.png", "q, 1.png", "r.png", "sub/s.png"):
        save_png(folder / rel, rng)
    text = csv_text if csv_text is not None else (
        "path,class\n"
        "p1.png,star\n"
        "p2.png, moon \n"
        "\n"
        '"q, 1.png",star\n'
        "./r.png,comet\n"
        "sub/s.png,moon\n")
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------- labels none: bytes of before
# Computed by the same three runs on the code before labels existed (commit 9bcff62): with
# data.labels none, shards, manifest.json and report.json must stay exactly those bytes, so an
# unconditional run's data hash, and everything downstream of it, does not move. The inputs
# need no resampling (PNGs at the target size, MNIST arithmetic), so Pillow's resize filters
# cannot change them; paths are relative so the manifest holds no temporary folder name.
BEFORE_LABELS = {
    "mnist": "516fed4561c52512ad7895da6c4a8ac73e8fb48f96b3d3d39f52d33a63e0e533",
    "folder[-1, 1]": "c87be0e444b3eed98e3718051ef70e73cd66731d311d216b792c62a828014804",
    "folder[0, 1]": "37447dc51b21eb5fa44d5495cbe4ec0ed0454a6b5b5396b644d982bba66c6f76",
}


def test_labels_none_gives_the_bytes_of_before_labels_existed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 256, (12, 28, 28), np.uint8)
    write_mnist(Path("mnist"), (digits, (np.arange(12) % 10).astype(np.uint8)), (digits[:2], np.zeros(2, np.uint8)))
    prep.preprocess(DataParams(source="mnist", mnist_dir="mnist", shard_size=5), 42, Path("pm"))
    got = {"mnist": digest(Path("pm"))}
    for name in ["a.png", "b/c.png", "b/d.png", "e.png", "f.png"]:
        save_png(Path("images") / name, rng)
    Path("images/empty.png").write_bytes(b"")
    for value_range in ([-1, 1], [0, 1]):
        out = Path(f"pf{value_range[0]}")
        prep.preprocess(DataParams(source="folder", folder="images", image_size=16, channels=3, range=value_range,
                                   shard_size=3, workers=1), 7, out)
        got[f"folder{value_range}"] = digest(out)
    assert got == BEFORE_LABELS
    assert "classes" not in read_manifest(Path("pm")) and not list(Path("pm").glob("labels_*"))
    # And the label params make no difference while labels are none.
    prep.preprocess(DataParams(source="mnist", mnist_dir="mnist", shard_size=5, min_class_size=99), 42, Path("pm2"))
    assert digest(Path("pm2")) == BEFORE_LABELS["mnist"]


# ---------------------------------------------------------------------------- through preprocess
def test_mnist_labels(tmp_path, capsys):
    images, digits = make_mnist(tmp_path / "mnist")
    data = DataParams(source="mnist", mnist_dir=str(tmp_path / "mnist"), shard_size=5, labels="mnist", min_class_size=3)
    manifest = prep.preprocess(data, 1, tmp_path / "p")
    assert manifest == read_manifest(tmp_path / "p")
    assert class_names(manifest) == [str(d) for d in range(10)]
    assert manifest["params"]["data"]["labels"] == "mnist" and manifest["params"]["data"]["min_class_size"] == 3
    assert [s["labels"] for s in manifest["shards"]] == [f"labels_{i:05d}.npy" for i in range(5)]
    _, shards, labels = open_shards(tmp_path / "p", with_labels=True)
    np.testing.assert_array_equal(np.concatenate(labels), digits.astype(np.int32))
    assert all(a.dtype == np.int32 for a in labels)
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["class_counts"] == {str(d): int((digits == d).sum()) for d in range(10)}
    small = [str(d) for d in range(10) if (digits == d).sum() < 3]  # 0, 4 and 7 have 3 images, the others 2
    assert report["small_classes"] == small and len(small) == 7
    captured = capsys.readouterr()
    assert captured.out.strip().startswith("preprocess: 23 images -> 5 shard(s) of 28x28x1 in [-1, 1], 10 classes")
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert [line.split("'")[1] for line in warnings] == small
    assert "has 2 usable image(s), fewer than data.min_class_size (3)" in warnings[0]

    # The images are the same bytes with or without labels.
    prep.preprocess(DataParams(source="mnist", mnist_dir=str(tmp_path / "mnist"), shard_size=5), 1, tmp_path / "q")
    labelled, plain = files_of(tmp_path / "p"), files_of(tmp_path / "q")
    assert {k: v for k, v in labelled.items() if k.startswith("shard_")} == {
        k: v for k, v in plain.items() if k.startswith("shard_")}


def test_subfolder_labels(tmp_path, capsys):
    folder = make_tree(tmp_path)
    manifest = prep.preprocess(folder_params(folder, labels="subfolders", min_class_size=2), 0, tmp_path / "p")
    assert manifest["classes"] == ["birds", "cats", "dogs"]
    assert manifest["count"] == 6 and [s["count"] for s in manifest["shards"]] == [3, 3]
    # File order (sorted paths): birds/b, cats/a, cats/b, cats/x/deep, dogs/d1, dogs/d2 (dogs/broken skipped).
    _, shards, labels = open_shards(tmp_path / "p", with_labels=True)
    assert np.concatenate(labels).tolist() == [0, 1, 1, 1, 2, 2]
    from src.images import decode_image
    expect, _ = decode_image(folder / "cats" / "x" / "deep.png", 16, 3)
    np.testing.assert_allclose(shards[1][0], expect * 2 - 1, atol=1e-6)
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["class_counts"] == {"birds": 1, "cats": 3, "dogs": 2}
    assert report["small_classes"] == ["birds"]
    assert report["skipped"] == [{"file": "dogs/broken.png", "reason": "zero bytes"}]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [f"warning: class 'birds' ({folder / 'birds'}) has 1 usable image(s), fewer than "
                   "data.min_class_size (2)"]


@pytest.mark.parametrize("spreadsheet", [False, True])
def test_label_file(tmp_path, spreadsheet):
    folder = make_flat(tmp_path)
    if spreadsheet:  # as a spreadsheet saves it: a byte-order mark and CRLF line ends
        text = (folder / "labels.csv").read_bytes().replace(b"\n", b"\r\n")
        (folder / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text)
    manifest = prep.preprocess(folder_params(folder, labels="labels.csv", min_class_size=0), 0, tmp_path / "p")
    assert manifest["classes"] == ["comet", "moon", "star"]
    # File order: p1, p2, q, 1, r, sub/s
    _, _, labels = open_shards(tmp_path / "p", with_labels=True)
    assert np.concatenate(labels).tolist() == [2, 1, 2, 0, 1]
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["class_counts"] == {"comet": 1, "moon": 2, "star": 2} and report["small_classes"] == []


def test_labelled_output_is_deterministic(tmp_path):
    folder = make_tree(tmp_path)
    prep.preprocess(folder_params(folder, labels="subfolders"), 0, tmp_path / "one")
    prep.preprocess(folder_params(folder, labels="subfolders"), 0, tmp_path / "two")
    prep.preprocess(folder_params(folder, labels="subfolders", workers=2), 0, tmp_path / "three")
    one, three = files_of(tmp_path / "one"), files_of(tmp_path / "three")
    assert one == files_of(tmp_path / "two")
    assert {k: v for k, v in one.items() if k.endswith(".npy")} == {k: v for k, v in three.items() if k.endswith(".npy")}


# ---------------------------------------------------------------------------- bad input
def refused(data: DataParams, out: Path, match: str) -> str:
    """Preprocess must raise one UserError line matching ``match`` and leave ``out`` as it was."""
    before = files_of(out) if out.exists() else None
    with pytest.raises(UserError) as info:
        prep.preprocess(data, 0, out)
    message = one_line(info)
    assert match in message, message
    assert (files_of(out) if out.exists() else None) == before
    assert not list(out.parent.glob(".*.staging")), "a staging folder was left behind"
    return message


@pytest.fixture
def earlier(tmp_path):
    """An earlier complete output that a refused run must leave untouched."""
    rng = np.random.default_rng(9)
    src = tmp_path / "earlier-src"
    for i in range(3):
        save_png(src / f"e{i}.png", rng)
    out = tmp_path / "processed"
    prep.preprocess(folder_params(src), 0, out)
    return out


def test_label_file_naming_a_missing_file(tmp_path, earlier):
    folder = make_flat(tmp_path)
    with open(folder / "labels.csv", "a") as handle:
        handle.write("gone.png,star\n")
    message = refused(folder_params(folder, labels="labels.csv"), earlier, "no image file")
    assert message.startswith(f"{folder / 'labels.csv'} line 8: no image file {folder / 'gone.png'}")


def test_image_with_no_label_in_the_label_file(tmp_path, earlier):
    folder = make_flat(tmp_path)
    save_png(folder / "extra.png", np.random.default_rng(2))
    message = refused(folder_params(folder, labels="labels.csv"), earlier, "no label")
    assert message == f"{folder / 'extra.png'}: no label in {folder / 'labels.csv'}"


def test_image_outside_every_sub_folder_has_no_label(tmp_path, earlier):
    folder = make_tree(tmp_path)
    save_png(folder / "loose.png", np.random.default_rng(2))
    save_png(folder / "loose2.png", np.random.default_rng(3))
    message = refused(folder_params(folder, labels="subfolders"), earlier, "no label")
    assert message.startswith(f"{folder / 'loose.png'}: no label") and "1 more image(s) at the top level" in message


def test_sub_folder_without_images_is_an_empty_class(tmp_path, earlier):
    folder = make_tree(tmp_path)
    (folder / "fish").mkdir()
    (folder / "fish" / "notes.txt").write_text("no pictures yet\n")
    message = refused(folder_params(folder, labels="subfolders"), earlier, "empty")
    assert message.startswith(f"{folder / 'fish'}: class 'fish' is empty")


def test_sub_folder_of_unusable_images_is_an_empty_class(tmp_path, earlier):
    folder = make_tree(tmp_path)
    (folder / "fish").mkdir()
    (folder / "fish" / "zero.png").write_bytes(b"")
    (folder / "fish" / "text.png").write_text("not a picture\n")
    message = refused(folder_params(folder, labels="subfolders"), earlier, "empty")
    assert message == (f"{folder / 'fish'}: class 'fish' is empty (all its image files were skipped, "
                       "e.g. fish/text.png: not an image)")


def test_label_file_class_of_unusable_images_is_an_empty_class(tmp_path, earlier):
    folder = make_flat(tmp_path)
    (folder / "bad.png").write_bytes(b"")
    with open(folder / "labels.csv", "a") as handle:
        handle.write("bad.png,nebula\n")
    message = refused(folder_params(folder, labels="labels.csv"), earlier, "empty")
    assert message.startswith(f"{folder / 'labels.csv'}: class 'nebula' is empty")


def test_mnist_digit_with_no_image_is_an_empty_class(tmp_path, earlier):
    make_mnist(tmp_path / "mnist", n=12, digits=np.arange(12) % 9)  # no 9
    data = DataParams(source="mnist", mnist_dir=str(tmp_path / "mnist"), labels="mnist")
    message = refused(data, earlier, "empty")
    assert message == f"{tmp_path / 'mnist' / 'train-labels-idx1-ubyte.gz'}: class '9' is empty (no image has this label)"


def test_mnist_label_that_is_no_digit(tmp_path, earlier):
    make_mnist(tmp_path / "mnist", n=12, digits=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 0]))
    data = DataParams(source="mnist", mnist_dir=str(tmp_path / "mnist"), labels="mnist")
    refused(data, earlier, "label 12 of image 10 is not a digit 0-9")


MALFORMED = {
    "three fields": ("path,class\np1.png,star\np2.png,moon,extra\n", 3, "expected 2 fields (path,class), got 3"),
    "one field": ("path,class\np1.png\n", 2, "expected 2 fields (path,class), got 1"),
    "no header": ("p1.png,star\n", 1, "the first row must be the header 'path,class'"),
    "empty class": ("path,class\n\np1.png,  \n", 3, "empty class"),
    "empty path": ("path,class\n,star\n", 2, "empty path"),
    "duplicate": ("path,class\np1.png,star\np2.png,moon\n./p1.png,moon\n", 4, "already has a label (line 2)"),
    "climbs out": ("path,class\n../flat/p1.png,star\n", 2, "must be relative to"),
    "absolute": ("path,class\n/etc/passwd,star\n", 2, "must be relative to"),
    "bad quoting": ('path,class\np1.png,star\n"p2.png"x,moon\n', 3, "not valid CSV"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_label_file_names_the_file_and_line(tmp_path, earlier, case):
    text, line, what = MALFORMED[case]
    folder = make_flat(tmp_path, text)
    message = refused(folder_params(folder, labels="labels.csv"), earlier, what)
    assert message.startswith(f"{folder / 'labels.csv'} line {line}: "), message


@pytest.mark.parametrize("content, what", [(b"", "label file is empty"), (b"path,class\n\xff\xfe,x\n", "not UTF-8"),
                                           (None, "label file not found")])
def test_unreadable_label_file(tmp_path, earlier, content, what):
    folder = make_flat(tmp_path)
    if content is None:
        (folder / "labels.csv").unlink()
    else:
        (folder / "labels.csv").write_bytes(content)
    message = refused(folder_params(folder, labels="labels.csv"), earlier, what)
    assert message.startswith(f"{folder / 'labels.csv'}: ")


def test_small_class_is_a_warning_not_an_error(tmp_path, capsys):
    folder = make_tree(tmp_path)
    manifest = prep.preprocess(folder_params(folder, labels="subfolders", min_class_size=3), 0, tmp_path / "p")
    assert manifest["count"] == 6
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert [line.split("'")[1] for line in err] == ["birds", "dogs"]
    prep.preprocess(folder_params(folder, labels="subfolders", min_class_size=0), 0, tmp_path / "q")
    assert "warning:" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- params
@pytest.mark.parametrize("data, what", [
    ({"labels": "subfolder"}, "must be none, mnist, subfolders, clusters or a .csv label file inside data.folder"),
    ({"labels": "../labels.csv"}, "must be none, mnist, subfolders, clusters or a .csv label file"),
    ({"labels": "/abs/labels.csv"}, "must be none, mnist, subfolders, clusters or a .csv label file"),
    ({"labels": "mnist"}, "must be none, clusters, subfolders or a .csv label file for data.source folder"),
    ({"labels": "missing.csv"}, "must name a label file in data.folder"),
    ({"source": "mnist", "image_size": 28, "labels": "subfolders"}, "must be none, clusters or mnist for data.source mnist"),
    ({"min_class_size": -1}, "data.min_class_size"),
])
def test_bad_label_params(tmp_path, data, what):
    raw = tiny_raw(data={**data})
    raw["data"]["folder"] = str(tmp_path)
    with pytest.raises(UserError) as info:
        parse_params(raw)
    message = one_line(info)
    assert "'data.labels'" in message or "'data.min_class_size'" in message
    assert what in message, message


def test_good_label_params(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "l.csv").write_text("path,class\n")
    for labels in ("none", "subfolders", "sub/l.csv"):
        raw = tiny_raw(data={"labels": labels})
        raw["data"]["folder"] = str(tmp_path)
        assert parse_params(raw).data.labels == labels
    assert parse_params(tiny_raw(data={"source": "mnist", "image_size": 28, "labels": "mnist"})).data.labels == "mnist"
    assert parse_params(tiny_raw()).data.labels == "none"  # the default: today's behaviour


# ---------------------------------------------------------------------------- reader
@pytest.fixture
def labelled(tmp_path):
    out = tmp_path / "p"
    prep.preprocess(folder_params(make_tree(tmp_path), labels="subfolders"), 0, out)
    return out


def test_reader_gives_labels_alongside_images(labelled):
    manifest, shards = open_shards(labelled)  # existing callers: images only, as before
    assert len(shards) == 2
    _, shards2, labels = open_shards(labelled, with_labels=True)
    assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in labels)
    reader = ShardReader(shards2, labels)
    idx = np.array([5, 0, 3, 3, 1])
    assert reader.gather_labels(idx).tolist() == [2, 0, 1, 1, 1]
    np.testing.assert_array_equal(reader.gather(idx), ShardReader(shards).gather(idx))
    with pytest.raises(ValueError, match="no labels"):
        ShardReader(shards).gather_labels(idx)


def test_reader_on_unlabelled_data_has_no_labels(earlier):
    manifest, shards, labels = open_shards(earlier, with_labels=True)
    assert labels is None and class_names(manifest) == []


def test_reader_verifies_labels_like_images(labelled):
    path = labelled / "labels_00001.npy"
    save_npy(path, np.array([0, 1, 9], np.int32))  # same size, other bytes, a label out of range
    with pytest.raises(UserError, match="labels_00001.npy.*sha256"):
        open_shards(labelled, with_labels=True)
    open_shards(labelled)  # images alone are still fine
    with pytest.raises(UserError, match=r"labels_00001.npy: labels outside 0..2"):
        open_shards(labelled, verify=False, with_labels=True)
    save_npy(path, np.array([0, 1], np.int32))
    with pytest.raises(UserError, match=r"labels_00001.npy: shard is int32 \[2\], manifest says int32 \[3\]"):
        open_shards(labelled, verify=False, with_labels=True)
    path.unlink()
    with pytest.raises(UserError, match="labels_00001.npy.*missing"):
        open_shards(labelled, with_labels=True)


@pytest.mark.parametrize("change, what", [
    (lambda m: m.update(classes=[]), "'classes' must be a non-empty list"),
    (lambda m: m.update(classes=["a", "a", "b"]), "'classes' must be a non-empty list of distinct"),
    (lambda m: m["shards"][0].pop("labels"), "must name its 'labels' file"),
    (lambda m: m["shards"][0].update(labels="../x.npy"), "must be a plain file name"),
])
def test_manifest_labels_are_checked(labelled, change, what):
    manifest = json.loads((labelled / "manifest.json").read_text())
    change(manifest)
    write_json(labelled / "manifest.json", manifest)
    with pytest.raises(UserError, match=what):
        read_manifest(labelled)


# ---------------------------------------------------------------------------- the stage script
def run_preprocess(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, str(REPO / "stages" / "preprocess.py")], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


def test_stage_refuses_a_bad_label_file_with_one_line_and_exit_2(tmp_path):
    project = tmp_path / "project"
    folder = make_flat(project / "data" / "raw")
    params = {"data": {"source": "folder", "folder": "data/raw/flat", "image_size": 16, "channels": 3,
                       "workers": 1, "labels": "labels.csv"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_preprocess(project)
    assert result.returncode == 0, result.stderr
    assert "5 images -> 1 shard(s) of 16x16x3 in [-1, 1], 3 classes" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3  # every class of this folder is below the default 10
    before = files_of(project / "data" / "processed")

    with open(folder / "labels.csv", "a") as handle:
        handle.write("p1.png\n")
    result = run_preprocess(project)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: data/raw/flat/labels.csv line 8: expected 2 fields (path,class), got 1"], result.stderr
    assert files_of(project / "data" / "processed") == before
    assert sorted(p.name for p in (project / "data").iterdir()) == ["processed", "raw"]


# ---------------------------------------------------------------------------- DVC stays honest
def test_dvc_reruns_preprocess_when_the_label_file_changes(tmp_path):
    """The label file lives in data.folder; the scan stage's index holds its sha256 and is a
    dep of preprocess: relabelling one image reruns preprocess, which stores the new label."""
    from test_pipeline import make_project, repo_params
    raw = repo_params(data={"source": "folder", "image_size": 16, "channels": 3, "workers": 1, "shard_size": 16,
                            "labels": "labels.csv", "min_class_size": 0})
    project = make_project(tmp_path / "project", tmp_path / "dvc-site-cache", raw)
    folder = project.root / "data" / "raw" / "images"
    rng = np.random.default_rng(4)
    for i in range(4):
        save_png(folder / f"i{i}.png", rng)
    (folder / "labels.csv").write_text("path,class\ni0.png,a\ni1.png,a\ni2.png,b\ni3.png,b\n")
    project.dvc("repro", "preprocess")
    processed = project.root / "data" / "processed"
    assert np.load(processed / "labels_00000.npy").tolist() == [0, 0, 1, 1]
    assert project.dvc_json("status", "preprocess") == {}
    assert "Running stage 'preprocess'" not in project.dvc("repro", "preprocess").stdout

    (folder / "labels.csv").write_text("path,class\ni0.png,a\ni1.png,b\ni2.png,b\ni3.png,b\n")
    ran = project.dvc("repro", "preprocess").stdout
    assert "Running stage 'preprocess'" in ran, ran
    assert np.load(processed / "labels_00000.npy").tolist() == [0, 1, 1, 1]
    assert json.loads((processed / "report.json").read_text())["class_counts"] == {"a": 1, "b": 3}
