"""Multi-worker training on real processes: two workers on this machine, as a user runs them.

Each worker is its own process with its own ``TF_CONFIG`` (two localhost ports, CPU only),
running the train stage's code on the same tiny shards: the chief (worker 0) through
``dvc repro``, the other with ``python stages/train.py`` from its own copy of the project,
whose ``outputs/checkpoints`` is a link to the chief's (the storage every worker can read).

The tiny MNIST data is labelled (``data.labels: mnist``), so the workers train the
conditional networks: labelled batches, the class embedding and the projection head are
all-reduced across processes like every other variable.

Run them alone with ``pytest -m multiworker``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import free_ports
from test_faults import BIN, DVC, build_project, dvc

pytestmark = pytest.mark.multiworker

TRAIN = {"epochs": 4, "steps_per_epoch": 2, "batch_size": 16, "checkpoint_every": 1, "steps_per_call": 1,
         "strategy": "auto", "worker_timeout": 60, "jit_compile": False}  # XLA has no CPU collectives
KILL_AT_CHUNK = 5      # of 8: epoch 3, step 1; the checkpoints of epochs 1 and 2 exist by then
SURVIVOR_BOUND = 120   # seconds the surviving worker may take to stop once the other is dead


def worker_env(cluster: dict, index: int, tmp: Path, fault: str | None = None) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONDONTWRITEBYTECODE": "1", "DVC_NO_ANALYTICS": "1", "TMPDIR": str(tmp),
           "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
    env.pop("GAN_FAULT", None)
    if fault:
        env["GAN_FAULT"] = fault
    return env


class Cluster:
    """Two workers started together: the chief runs ``dvc repro train`` in ``chief_dir``,
    worker 1 runs the stage script in ``worker_dir``. Output goes to ``<dir>.log`` files."""

    def __init__(self, chief_dir: Path, worker_dir: Path, worker_fault: str | None = None):
        ports = free_ports(2)
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        self.dirs = (chief_dir, worker_dir)
        self.tmps = (chief_dir.parent / "tmp-chief", worker_dir.parent / "tmp-worker")
        self.logs = (chief_dir.parent / "chief.log", worker_dir.parent / "worker.log")
        commands = ([str(DVC), "repro", "train"], [sys.executable, "stages/train.py"])
        self.procs = []
        for i in range(2):
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    commands[i], cwd=self.dirs[i], env=worker_env(cluster, i, self.tmps[i], worker_fault if i else None),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def wait(self, timeout: float = 600) -> tuple[int, int]:
        try:
            return tuple(p.wait(timeout=timeout) for p in self.procs)
        finally:
            for p in self.procs:
                if p.poll() is None:
                    os.killpg(p.pid, 9)
                    p.wait()

    def output(self, i: int) -> str:
        return self.logs[i].read_text()


def worker_copy(chief_dir: Path, worker_dir: Path) -> Path:
    """Another host's checkout: the code, params and shards, and the shared checkpoint folder."""
    shutil.copytree(chief_dir, worker_dir, symlinks=True, ignore=shutil.ignore_patterns("outputs", ".dvc", ".git"))
    (worker_dir / "outputs").mkdir()
    (chief_dir / "outputs" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (worker_dir / "outputs" / "checkpoints").symlink_to(chief_dir / "outputs" / "checkpoints")
    return worker_dir


def scratch_folders(tmp: Path) -> list[str]:
    """What the train stage left in a worker's temporary folder (TensorFlow's own autograph
    files, which a killed process leaves behind, are not ours)."""
    return [p.name for p in tmp.iterdir() if p.name.startswith("gan-train-")]


def final_checkpoint(project: Path) -> tuple[str, dict[str, np.ndarray]]:
    from src import checkpoint
    arrays, meta, path = checkpoint.load_latest(project / "outputs" / "checkpoints")
    return path.name, arrays


def loss_columns(project: Path) -> dict[int, dict[str, float]]:
    """The train log without the throughput column (the only one that depends on timing)."""
    from src.train_log import read_rows
    rows = read_rows(project / "outputs" / "train_log")
    return {epoch: {k: v for k, v in row.items() if k != "images_per_sec"} for epoch, row in rows.items()}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A DVC project (tiny MNIST-format data, tiny DCGAN) with its shards already made."""
    if DVC is None:
        pytest.skip("dvc is not installed")
    root = build_project(tmp_path_factory.mktemp("mw-template") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(TRAIN)
    params["data"]["labels"] = "mnist"  # the conditional networks, labels through every worker
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(root, "repro", "preprocess")
    assert result.returncode == 0, result.output[-3000:]
    return root


@pytest.fixture(scope="module")
def two_workers(template, tmp_path_factory):
    """One uninterrupted two-worker run: (chief project folder, worker project folder, cluster)."""
    base = tmp_path_factory.mktemp("mw-run")
    chief = base / "chief" / "project"
    shutil.copytree(template, chief, symlinks=True)
    worker = worker_copy(chief, base / "worker" / "project")
    cluster = Cluster(chief, worker)
    codes = cluster.wait()
    assert codes == (0, 0), f"chief:\n{cluster.output(0)[-3000:]}\nworker:\n{cluster.output(1)[-3000:]}"
    return chief, worker, cluster


def test_only_the_chief_writes_and_both_finish(two_workers):
    chief, worker, cluster = two_workers
    assert "Traceback" not in cluster.output(0) + cluster.output(1)
    # The chief has every output of the stage.
    out = chief / "outputs"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "ckpt_e000002_s000000004.npz", "ckpt_e000003_s000000006.npz", "ckpt_e000004_s000000008.npz", "config.json"]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["generator_epoch_0002.npz",
                                                                      "generator_epoch_0004.npz"]
    assert (out / "generator.keras").is_file() and sorted(loss_columns(chief)) == [1, 2, 3, 4]
    import keras
    from src.networks import generator_classes
    assert generator_classes(keras.models.load_model(out / "generator.keras", compile=False)) == \
        [str(d) for d in range(10)]  # the conditional generator, trained across both processes
    env = json.loads((out / "environment.json").read_text())
    assert (env["workers"], env["replicas"], env["strategy"]) == (2, 2, "MultiWorkerMirroredStrategy"), env
    # The other worker wrote nothing of its own outputs: its outputs/ holds only the link to the
    # shared checkpoints, and its scratch folder (under its TMPDIR) is gone.
    assert [p.name for p in (worker / "outputs").iterdir()] == ["checkpoints"]
    assert (worker / "outputs" / "checkpoints").is_symlink()
    assert scratch_folders(cluster.tmps[1]) == []
    assert f"train: done at epoch {TRAIN['epochs']}" in cluster.output(1)


def test_two_workers_equal_one_worker_at_the_same_global_batch(two_workers, template, tmp_path):
    """Two worker processes give exactly the weights of one process with two replicas.

    The comparison is with one worker holding the same two replicas (MirroredStrategy over
    two logical CPU devices), each with half of the global batch of 16: that is the same
    maths. Each replica draws its own noise (seeded by its replica number) and normalises
    with its own BatchNorm statistics, and a gradient all-reduce of two values is one float
    addition, which gives the same bits in either order. So the result must be exact, and is.
    (A single-replica run at batch 16 is a different, equally valid computation: one noise
    draw of 16 and BatchNorm over 16 images; it is not expected to match.)
    """
    chief, _, _ = two_workers
    single = tmp_path / "project"
    shutil.copytree(template, single, symlinks=True)
    params = yaml.safe_load((single / "params.yaml").read_text())
    params["train"]["strategy"] = "mirrored"
    (single / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    script = ("import runpy, sys; sys.path.insert(0, 'stages')\n"
              "import tensorflow as tf\n"
              "cpu = tf.config.list_physical_devices('CPU')[0]\n"
              "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
              "runpy.run_path('stages/train.py', run_name='__main__')\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=single, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    env_json = json.loads((single / "outputs" / "environment.json").read_text())
    assert (env_json["workers"], env_json["replicas"]) == (1, 2)

    name_two, two = final_checkpoint(chief)
    name_one, one = final_checkpoint(single)
    assert name_two == name_one
    assert sorted(two) == sorted(one)
    for key in one:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    assert loss_columns(chief) == loss_columns(single)


def test_killed_worker_stops_the_other_then_dvc_repro_resumes(two_workers, template, tmp_path):
    chief = tmp_path / "chief" / "project"
    shutil.copytree(template, chief, symlinks=True)
    worker = worker_copy(chief, tmp_path / "worker" / "project")
    cluster = Cluster(chief, worker, worker_fault=f"chunk:{KILL_AT_CHUNK}")
    # Worker 1 kills itself (SIGKILL) after its 5th chunk; the chief must stop on its own.
    assert cluster.procs[1].wait(timeout=600) == -9, cluster.output(1)[-3000:]
    died = time.monotonic()
    chief_code = cluster.procs[0].wait(timeout=SURVIVOR_BOUND + 60)
    waited = time.monotonic() - died
    cluster.wait()
    log = cluster.output(0)
    assert chief_code != 0 and waited < SURVIVOR_BOUND, (waited, log[-3000:])
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if line.startswith("error: train:")]
    assert len(errors) == 1 and "lost contact with another worker" in errors[0], log[-3000:]
    assert "resumes from the newest checkpoint" in errors[0]
    print(f"the surviving chief stopped {waited:.1f} s after worker 1 died")

    # Start both again: the chief's `dvc repro` resumes from the newest checkpoint (epoch 2)
    # and ends with exactly the weights of the uninterrupted run.
    again = Cluster(chief, worker)
    assert again.wait() == (0, 0), f"chief:\n{again.output(0)[-3000:]}\nworker:\n{again.output(1)[-3000:]}"
    assert "train: resuming from outputs/checkpoints/ckpt_e000002_s000000004.npz" in again.output(0)
    assert "train: resuming from outputs/checkpoints/ckpt_e000002_s000000004.npz" in again.output(1)
    name, resumed = final_checkpoint(chief)
    name_ref, reference = final_checkpoint(two_workers[0])
    assert name == name_ref
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    assert loss_columns(chief) == loss_columns(two_workers[0])
    # The killed worker's scratch copies are gone too (removed when it started again).
    assert scratch_folders(again.tmps[1]) == []
