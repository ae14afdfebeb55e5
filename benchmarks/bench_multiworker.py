"""Time per training step with one worker and with two worker processes on this machine.

Both runs train the default model (params.yaml: the MLP GAN) at the same global batch on
the same synthetic 28x28 shards, through the train stage (``python stages/train.py``):
- one worker: one process, one replica (TensorFlow's default strategy);
- two workers: two processes with ``TF_CONFIG`` on two localhost ports
  (MultiWorkerMirroredStrategy), each with half of the batch, gradients all-reduced
  over gRPC after every step.
XLA is off in both (TensorFlow's XLA has no CPU collectives) and ``steps_per_call`` is 10
(with several replicas the steps of a call are unrolled). The first epoch (tracing) is
left out; the figure is the median over the other epochs of the train log.

    python benchmarks/bench_multiworker.py [--epochs 6] [--steps 200]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from bench_train import synthetic_shards  # noqa: E402
from conftest import free_ports  # noqa: E402


def project(root: Path, epochs: int, steps: int) -> Path:
    shutil.copytree(REPO / "stages", root / "stages")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["folder"] = str(root)
    raw["data"]["source"] = "folder"
    raw["train"].update({"epochs": epochs, "steps_per_epoch": steps, "jit_compile": False, "steps_per_call": 10,
                         "checkpoint_every": epochs})
    raw["sample"]["every_epochs"] = epochs
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    synthetic_shards(root / "data" / "processed", 4096, 28, 1, (-1, 1))
    return root


def seconds_per_step(root: Path, batch: int) -> float:
    from src.train_log import read_rows
    rows = read_rows(root / "outputs" / "train_log")
    return statistics.median(batch / row["images_per_sec"] for epoch, row in rows.items() if epoch > 1)  # 1: tracing


def run(root: Path, workers: int) -> float:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    started = time.perf_counter()
    if workers == 1:
        subprocess.run([sys.executable, "stages/train.py"], cwd=root, env=env, check=True, capture_output=True)
    else:
        cluster = {"worker": [f"localhost:{p}" for p in free_ports(workers)]}
        procs = []
        for i in range(workers):
            cwd = root if i == 0 else root.parent / f"worker{i}"
            if i:
                shutil.copytree(root, cwd, ignore=shutil.ignore_patterns("outputs"))
            e = {**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            procs.append(subprocess.Popen([sys.executable, "stages/train.py"], cwd=cwd, env=e,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise SystemExit(f"worker failed:\n{err[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    args = parser.parse_args()
    batch = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["batch_size"]
    print(f"default model, global batch {batch}, {args.epochs} epochs of {args.steps} steps, XLA off, "
          f"10 steps per call, {os.cpu_count()} CPU cores")
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            root = project(Path(tmp) / "w0", args.epochs, args.steps)
            wall = run(root, workers)
            per_step = seconds_per_step(root, batch)
            env = json.loads((root / "outputs/environment.json").read_text())
            print(f"{workers} worker(s): {per_step * 1000:.1f} ms per step ({batch / per_step:.0f} images/s), "
                  f"{env['replicas']} replica(s), {env['strategy']}; whole run {wall:.0f} s")


if __name__ == "__main__":
    main()
