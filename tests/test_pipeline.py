"""The DVC workflow, end to end on tiny data: `dvc repro`, no-op reruns, param-scoped reruns,
and a push/clone/pull round trip through a local-folder remote (a folder of pictures:
tests/test_pipeline_folder.py).

Each project is a scratch copy of this repository's pipeline (dvc.yaml, stages/, src/,
.dvc/config) in a temp folder, with a tiny MNIST (IDX files) and tiny params, so
the lead's data and outputs in the working tree are never touched. The MNIST project is
built and reproduced once per module and shared by the tests, in file order.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, merge, write_mnist

STAGES = ("scan", "preprocess", "train", "sample", "evaluate")
SCAN_ONLY = {"scan": ["always changed"]}  # `dvc status` of a clean project: the scan stage runs on every repro
RUNNING = re.compile(r"Running stage '([^']+)'")
TIMEOUT = 900  # seconds for one dvc command; a tiny run takes well under a minute per stage

# Overrides of the repository's params.yaml (whichever MNIST model it defaults to: both shrunk).
TINY_MNIST = {
    "model": {"dcgan": {"g_filters": [16, 8], "d_filters": [8, 16]},
              "mlp": {"g_units": [32, 64], "d_units": [64, 32]}},
    "train": {"epochs": 4, "steps_per_epoch": 2, "batch_size": 16, "checkpoint_every": 2},
    "sample": {"every_epochs": 2},
    "evaluate": {"num_samples": 64, "batch_size": 32, "kid_subsets": 2, "kid_subset_size": 32, "bootstrap": 10,
                 "curve_samples": 32, "classifier": {"epochs": 1, "batch_size": 64}},
}

TINY_FOLDER = {
    "data": {"image_size": 16, "shard_size": 16},
    "model": {"latent_dim": 16, "dcgan": {"g_filters": [16, 8], "d_filters": [8, 16]}},
    "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 8, "checkpoint_every": 1},
    "sample": {"every_epochs": 1, "count": 8, "grid_columns": 4, "progress_columns": 4},
    "evaluate": {"num_samples": 16, "batch_size": 16, "kid_subsets": 2, "kid_subset_size": 8, "bootstrap": 10,
                 "swd_patches_per_image": 16, "swd_projections": 64, "inception_weights": "off",
                 "curve_samples": 16, "classifier": {"epochs": 1, "batch_size": 64}},
}


# ---------------------------------------------------------------------------- helpers
def _env(site_cache: Path) -> dict:
    """The venv first on PATH (stage commands say `python stages/X.py`), no GPU, quiet DVC."""
    return {**os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(site_cache),
            "GIT_AUTHOR_NAME": "pipeline test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "pipeline test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


class Project:
    """A scratch DVC project folder and a way to run dvc/git/make in it."""

    def __init__(self, root: Path, site_cache: Path):
        self.root = root
        self.env = _env(site_cache)

    def run(self, *cmd: str, check: bool = True, merged: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` here; ``merged``: stderr into stdout (else apart, for JSON on stdout)."""
        proc = subprocess.run(list(cmd), cwd=self.root, env=self.env, text=True, timeout=TIMEOUT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE)
        if check and proc.returncode != 0:
            raise AssertionError(f"`{' '.join(cmd)}` in {self.root} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-6000:]}{proc.stderr or ''}")
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def dvc_json(self, *args: str):
        """A dvc command's ``--json`` answer (warnings go to stderr and must not be there)."""
        proc = self.run(sys.executable, "-m", "dvc", *args, "--json", merged=False)
        assert "failed to load" not in proc.stderr, proc.stderr
        return json.loads(proc.stdout)

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("git", *args)

    def repro(self) -> tuple[set[str], str]:
        """`dvc repro`; the names of the stages that ran and the whole output."""
        out = self.dvc("repro").stdout
        return set(RUNNING.findall(out)), out

    def status_json(self) -> dict:
        return self.dvc_json("status")

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, raw: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def set_param(self, key: str, value) -> None:
        raw = self.params()
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
        self.write_params(raw)

    def metrics(self) -> dict:
        return json.loads((self.root / "outputs" / "metrics.json").read_text())


def tiny_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 'digits' (labels 0-9): a bar and a column placed by the label, jittered."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = np.zeros((n, 28, 28), np.uint8)
    for img, k in zip(images, labels):
        row = 3 + 2 * int(k) + int(rng.integers(-1, 2))
        col = 3 + 2 * (9 - int(k)) + int(rng.integers(-1, 2))
        img[row:row + 3, 4:24] = 255
        img[4:24, col:col + 3] = 180
        img[:] = np.clip(img.astype(int) + rng.integers(0, 30, img.shape), 0, 255)
    return images, labels


def write_tiny_mnist(folder: Path, n_train: int = 256, n_test: int = 128) -> None:
    write_mnist(folder, tiny_digits(n_train, 1), tiny_digits(n_test, 2))


def write_tiny_images(folder: Path, n: int = 40) -> None:
    """``n`` small PNG/JPEG pictures (coloured rectangles on a coloured ground), mixed sizes and modes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(5)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = int(rng.integers(20, 41)), int(rng.integers(20, 41))
        ground = tuple(int(v) for v in rng.integers(0, 256, 3))
        img = Image.new("RGB", (w, h), ground)
        draw = ImageDraw.Draw(img)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        draw.rectangle([x0, y0, x0 + w // 2, y0 + h // 2], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        if i % 4 == 0:
            img.convert("RGBA").save(folder / "sub" / f"img_{i:03d}.png")
        elif i % 2 == 0:
            img.save(folder / f"img_{i:03d}.png")
        else:
            img.save(folder / f"img_{i:03d}.jpg", quality=90)


def make_project(root: Path, site_cache: Path, raw_params: dict) -> Project:
    """Scratch copy of the pipeline (code, dvc.yaml, DVC config) with tiny MNIST and ``raw_params``."""
    root.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("stages", "src", "presets"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("dvc.yaml", "Makefile", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "data" / "rulers", root / "data" / "rulers")  # the shipped rulers, as a clone has them
    shutil.copytree(REPO / "data" / "weights", root / "data" / "weights")  # a train dep, in git
    (root / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(REPO / ".dvc" / name, root / ".dvc" / name)
    write_tiny_mnist(root / "data" / "raw" / "mnist")
    project = Project(root, site_cache)
    project.write_params(raw_params)
    project.git("init", "-q")
    return project


def repo_params(**override) -> dict:
    return merge(yaml.safe_load((REPO / "params.yaml").read_text()), override)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


PLOT_IDS = ["Losses", "Discriminator_accuracy", "Throughput__images_per_second_", "Augmentation_probability",
            "outputs_eval_curve_tsv"]


def check_plots_page(project: Project, *revs: str) -> str:
    """`dvc plots show` (or `diff` of ``revs``): dvc.yaml's plots only, each once; the page's HTML."""
    out_dir = project.root.parent / f"{project.root.name}-plots"  # outside the git work tree
    shutil.rmtree(out_dir, ignore_errors=True)
    args = ("plots", "diff", *revs) if revs else ("plots", "show")
    project.dvc(*args, "-o", str(out_dir))
    html = (out_dir / "index.html").read_text()
    assert re.findall(r"vegaEmbed\('#([^']+)'", html) == PLOT_IDS
    images = sorted(p.name for p in (out_dir / "static").iterdir())
    grid = re.compile(r"^(.+)_outputs_train_log_plots_images_grid_\d+\.png$")  # the train log's grids
    want = sorted(f"{rev}_outputs_samples_{name}" for rev in (revs or ("workspace",))
                  for name in ("progress.png", "progress.gif"))
    assert [name for name in images if not grid.match(name)] == want
    assert {grid.match(name).group(1) for name in images if grid.match(name)} == set(revs or ("workspace",))
    return html


# ---------------------------------------------------------------------------- the shared project
@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """The MNIST preset on tiny data, reproduced once and committed: (project, stages run, repro output)."""
    base = tmp_path_factory.mktemp("pipeline")
    project = make_project(base / "project", base / "dvc-site-cache", repo_params(**TINY_MNIST))
    ran, out = project.repro()
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "tiny run")
    return project, ran, out


def test_mnist_pipeline_end_to_end(mnist):
    project, ran, out = mnist
    assert ran == set(STAGES), out
    root = project.root

    processed = root / "data" / "processed"
    manifest = json.loads((processed / "manifest.json").read_text())
    assert manifest["count"] == 256 and manifest["shape"] == [28, 28, 1]
    assert all((processed / s["file"]).is_file() for s in manifest["shards"])
    assert (processed / "report.json").is_file()

    outputs = root / "outputs"
    assert any(name.startswith("ckpt_") for name in _files(outputs / "checkpoints"))
    assert _files(outputs / "snapshots") == ["generator_epoch_0002.npz", "generator_epoch_0004.npz"]
    assert (outputs / "generator.keras").stat().st_size > 0
    # the default pipeline trains no ruler: it checks and uses the shipped one
    assert not (outputs / "classifier").exists() and "Epoch 1/" not in out
    assert _tree(root / "data" / "rulers") == _tree(REPO / "data" / "rulers")
    samples = _files(outputs / "samples")
    for epoch in (2, 4):  # the default is conditional: one row of grid_columns (8) images per digit
        assert f"grid_epoch_{epoch:04d}.png" in samples
        assert sum(n.startswith(f"generated_image_epoch_{epoch:04d}_") for n in samples) == 10 * 8
    assert "progress.png" in samples
    assert json.loads((outputs / "samples" / "classes.json").read_text())["rows"] == [str(d) for d in range(10)]
    assert manifest["classes"] == [str(d) for d in range(10)]

    metrics = project.metrics()
    for key in ("fid", "kid", "classifier_score", "coverage", "class_kl", "cond_accuracy", "intra_fid"):
        assert isinstance(metrics[key], (int, float)), key
        assert isinstance(metrics[key + "_real"], (int, float)), key + "_real"
    assert sorted(metrics["per_class"]) == [str(d) for d in range(10)]
    assert metrics["num_samples"] == 64 and metrics["feature_net"] == "mnist-cnn"
    curve = (outputs / "eval_curve.tsv").read_text().splitlines()
    assert curve[0] == "epoch\tfid" and [line.split("\t")[0] for line in curve[1:]] == ["2", "4"]
    scores = {int(e): float(v) for e, v in (line.split("\t") for line in curve[1:])}
    assert metrics["best_epoch"] in scores and metrics["best_curve_score"] == min(scores.values())
    assert metrics["final_epoch"] == 4 and metrics["final_curve_score"] == scores[4]
    assert (outputs / "generator_best.keras").stat().st_size > 0
    log = (outputs / "train_log" / "plots" / "metrics" / "d_loss.tsv").read_text().splitlines()
    assert log[0] == "step\td_loss" and [row.split("\t")[0] for row in log[1:]] == ["1", "2", "3", "4"]
    assert json.loads((outputs / "train_log" / "metrics.json").read_text())["step"] == 4
    assert _files(outputs / "train_log" / "plots" / "images" / "grid") == ["2.png", "4.png"]
    env = json.loads((outputs / "environment.json").read_text())
    train = project.params()["train"]
    assert env["tensorflow"] and env["replicas"] == 1 and env["gpus"] == []
    assert env["cpu"]["model"] and env["tensorflow_build"] == {"cuda": False, "onednn": True}
    assert env["jit_compile"] == train["jit_compile"] and env["mixed_precision"] == train["mixed_precision"]


def test_repro_again_reruns_nothing(mnist):
    project, _, _ = mnist
    ran, out = project.repro()
    assert ran == {"scan"}, out
    for stage in set(STAGES) - {"scan"}:
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert project.status_json() == SCAN_ONLY


def test_plots_page(mnist):
    project, _, _ = mnist
    html = check_plots_page(project)
    assert '"fid"' in html and '"d_loss"' in html


@pytest.mark.parametrize("key, old, new, expected", [
    ("sample.grid_columns", 8, 4, {"scan", "sample"}),
    # A seed sweep keeps the yardstick: the shipped rulers are never retrained.
    ("common.seed", 42, 43, {"scan", "preprocess", "train", "sample", "evaluate"}),
    ("evaluate.num_samples", 64, 48, {"scan", "evaluate"}),
    ("train.epochs", 4, 6, {"scan", "train", "sample", "evaluate"}),
])
def test_changing_one_param_reruns_only_its_readers(mnist, key, old, new, expected):
    project, _, _ = mnist
    rulers_before = _tree(project.root / "data" / "rulers")
    project.set_param(key, new)
    # the change is visible to DVC exactly: one key, its old and new value
    diff = project.dvc_json("params", "diff")
    assert diff == {"params.yaml": {key: {"old": old, "new": new, "diff": new - old}}}
    ran, out = project.repro()
    assert ran == expected, out
    for stage in set(STAGES) - expected:
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert project.status_json() == SCAN_ONLY
    project.git("commit", "-q", "-am", f"{key}={new}")

    samples = project.root / "outputs" / "samples"
    if key == "sample.grid_columns":  # re-rendered with 4 images per digit, stale ones removed
        assert sum(n.startswith("generated_image_epoch_0002_") for n in _files(samples)) == 10 * 4
    if key == "common.seed":
        assert _tree(project.root / "data" / "rulers") == rulers_before
    if key == "evaluate.num_samples":
        assert project.metrics()["num_samples"] == 48
        mdiff = project.dvc_json("metrics", "diff", "HEAD~1")  # old values come from the DVC cache
        assert mdiff["outputs/metrics.json"]["num_samples"] == {"old": 64, "new": 48, "diff": -16}
    if key == "train.epochs":  # continued from the epoch-4 checkpoint to epoch 6
        assert "generator_epoch_0006.npz" in _files(project.root / "outputs" / "snapshots")
        log = (project.root / "outputs" / "train_log" / "plots" / "metrics" / "d_loss.tsv").read_text().splitlines()
        assert [line.split("\t")[0] for line in log[1:]] == ["1", "2", "3", "4", "5", "6"]
        check_plots_page(project, "HEAD~1", "HEAD")  # two runs side by side


def test_remote_round_trip(mnist, tmp_path):
    """Push from one clone, pull into a fresh one: nothing to rerun, same metrics."""
    project, _, _ = mnist
    remote = tmp_path / "remote"
    project.git("add", "-A")
    project.git("commit", "-q", "--allow-empty", "-m", "before push")
    project.dvc("remote", "add", "-d", "local", str(remote))
    project.dvc("push")
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"

    clone = Project(tmp_path / "clone", Path(project.env["DVC_SITE_CACHE_DIR"]))
    subprocess.run(["git", "clone", "-q", str(project.root), str(clone.root)], check=True, env=clone.env,
                   timeout=TIMEOUT)
    assert not (clone.root / "outputs").exists()
    clone.dvc("remote", "add", "-d", "local", str(remote))
    clone.dvc("pull")

    assert clone.status_json() == SCAN_ONLY
    ran, out = clone.repro()
    assert ran == {"scan"}, out
    for rel in ("outputs/metrics.json", "outputs/eval_curve.tsv", "outputs/generator.keras",
                "outputs/generator_best.keras", "outputs/environment.json",
                "outputs/train_log/metrics.json", "outputs/train_log/plots/metrics/d_loss.tsv",
                "data/processed/manifest.json"):
        assert (clone.root / rel).read_bytes() == (project.root / rel).read_bytes(), rel
    for rel in ("outputs/checkpoints", "outputs/snapshots", "outputs/samples"):
        assert _files(clone.root / rel) == _files(project.root / rel), rel
