"""Which levers raise a preset's training img/s on this machine: short alternating runs, side by side.

Speed only: a lever that wins here must still show that quality per image holds
(``bench_folder.py``) before a preset takes it. Two groups:

- in one process (the preset's threads and precision), each variant's compiled train step
  (``GAN.train_chunk`` on images in memory), timed in alternating windows so that a change
  of load on a shared machine hits every variant alike: the preset; batch 64 and 128 where the preset is not at it (learning
  rates scaled by the square root of the batch ratio; about the same images per compiled
  call); half the channels; three quarters of them (at the preset's batch and at 64); no
  augmentation; the recipes' costs (lazy R1, a residual D, FastGAN's decoder in D, 1.5x the
  pixels); XLA (``jit_compile``: fuses element-wise ops);
- process settings (fixed when TensorFlow starts, so one process each, run in alternating
  rounds), on the training loop end to end (synthetic shards): intra-op x inter-op threads, and ``train.malloc_top_pad_mb`` (the memory glibc
  keeps for the next step; 0 = glibc's defaults, as before it existed).

Prints img/s (best window and median) and the ratio to the preset.

    python benchmarks/bench_levers.py [--preset folder-fast] [--repeats 3] [--window 8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

from bench_roofline import load_preset, loop_rates  # noqa: E402
from src.config import parse_params  # noqa: E402

IMAGES_PER_CALL = 352  # the preset's 11 steps x 32


def _at_batch(raw: dict, batch: int) -> dict:
    """A copy of ``raw`` at ``batch``, both learning rates scaled by the square root of the batch ratio."""
    v = copy.deepcopy(raw)
    scale = (batch / raw["train"].get("batch_size", 32)) ** 0.5
    v["train"]["batch_size"] = batch
    for opt in ("g_optimizer", "d_optimizer"):
        v["train"][opt]["learning_rate"] = raw["train"][opt]["learning_rate"] * scale
    return v


def _at_width(v: dict, width: Callable[[int], int]) -> dict:
    """``v`` with every generator and discriminator channel count passed through ``width``."""
    for key in ("g_filters", "d_filters"):
        v["model"]["dcgan"][key] = [width(f) for f in v["model"]["dcgan"][key]]
    return v


def variants(raw: dict) -> dict[str, dict]:
    """The in-process levers, as raw params derived from the preset's."""
    out = {"preset": raw}
    base_batch = raw["train"].get("batch_size", 32)
    for batch in sorted({64, 128} - {base_batch}):
        out[f"batch {batch}, lr x{(batch / base_batch) ** 0.5:.2f}"] = _at_batch(raw, batch)
    out["half the channels"] = _at_width(copy.deepcopy(raw), lambda f: f // 2)
    for batch in sorted({base_batch, 64}):  # between the two widths, in multiples of 16 (bfloat16 matrix tiles)
        out[f"three quarters the channels, batch {batch}"] = _at_width(_at_batch(raw, batch),
                                                                      lambda f: max(16, f * 3 // 4 // 16 * 16))
    if raw["train"].get("augment", {}).get("policy"):
        v = copy.deepcopy(raw)
        v["train"]["augment"]["policy"] = []
        out["no augmentation"] = v
    v = copy.deepcopy(raw)
    v["train"]["r1_gamma"] = 0.01
    out["R1 every 16 steps (a recipe: its cost)"] = v
    if raw["model"].get("arch") == "dcgan":
        v = copy.deepcopy(raw)
        v["model"]["dcgan"]["d_residual"] = True
        out["residual D (a recipe: its cost)"] = v
        v = copy.deepcopy(raw)
        v["train"]["reconstruction"] = 10.0
        out["FastGAN decoder in D (a recipe: its cost)"] = v
        v = copy.deepcopy(raw)
        v["data"]["image_size"] = raw["data"]["image_size"] * 3 // 2
        out[f"{v['data']['image_size']} pixels (a recipe: its cost)"] = v
    v = copy.deepcopy(raw)
    v["train"]["jit_compile"] = True
    out["XLA (jit_compile)"] = v
    for v in out.values():
        v["train"]["steps_per_call"] = max(1, IMAGES_PER_CALL // v["train"].get("batch_size", 32))
    return out


def _rates(gans: dict, real: dict, repeats: int, window: float) -> dict[str, list[float]]:
    rates = {name: [] for name in gans}
    for _ in range(repeats):
        for name, (gan, k, b) in gans.items():
            start, steps = time.perf_counter(), 0
            while True:
                gan.train_chunk(real[name], steps)
                steps += k
                if time.perf_counter() - start >= window:
                    break
            rates[name].append(steps * b / (time.perf_counter() - start))
    return rates


def _build(raw: dict):
    import tensorflow as tf
    from src.training_loop import build_gan

    params = parse_params(raw)
    b, k = params.train.batch_size, params.train.steps_per_call
    s, c = params.data.image_size, params.data.channels
    real = tf.constant(np.random.default_rng(0).uniform(0, 1, (k * b, s, s, c)).astype(np.float32))
    gan = build_gan(params, tf.distribute.get_strategy())
    gan.train_chunk(real, 0)  # trace
    return gan, k, b, real


def part_levers(args) -> dict:
    from src import runtime

    raw = load_preset(args.preset)
    params = parse_params(raw)
    runtime.retain_freed_memory(params.train.malloc_top_pad_mb)
    runtime.set_cpu_threads(params.train.intra_op_threads, params.train.inter_op_threads)
    runtime.configure(params.train, params.common.seed)
    gans, real = {}, {}
    for name, v in variants(raw).items():
        if args.only and name != "preset" and not any(word in name for word in args.only):
            continue
        gan, k, b, images = _build(v)
        gans[name], real[name] = (gan, k, b), images
    return _rates(gans, real, args.repeats, args.window)


def part_threads(args) -> dict:
    """One process's settings, measured on the training loop end to end (synthetic shards in
    the preset's shape; data feeding, Python and logging included, as a user's run has them):
    the img/s of each epoch after the first (which traces)."""
    raw = load_preset(args.preset)
    raw["train"]["intra_op_threads"], raw["train"]["inter_op_threads"] = args.threads
    raw["train"]["malloc_top_pad_mb"] = args.pad
    return {"x": loop_rates(raw, 1 + args.repeats, args.loop_images)[1:]}


def _child(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], stdout=subprocess.PIPE, text=True,
                          cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed (status {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(name: str, values: list[float], base: float) -> str:
    best = max(values)
    return f"| {name} | {best:.1f} | {float(np.median(values)):.1f} | {best / base:.2f}x | {len(values)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="folder-fast")
    parser.add_argument("--repeats", type=int, default=3, help="alternating windows per variant")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window (at least one call)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the thread processes (0: skip)")
    parser.add_argument("--processes", default="1x2:0,1x2:64,0x0:64,1x1:64,2x1:64",
                        help="process settings to compare, intra x inter threads : malloc_top_pad_mb "
                             "(threads 0: TensorFlow's default; pad 0: glibc's defaults); the first is the reference")
    parser.add_argument("--part", choices=["levers", "threads"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--pad", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--loop-images", type=int, default=1408, help="images per epoch of the process runs")
    parser.add_argument("--only", type=lambda s: s.split(","), default=[],
                        help="comma-separated words: only the in-process variants whose name holds one (and the preset)")
    parser.add_argument("--skip-levers", action="store_true", help="only the process settings")
    args = parser.parse_args()
    if args.repeats < 1 or args.window <= 0:
        raise SystemExit("error: --repeats must be at least 1 and --window above 0")
    if args.part == "levers":
        print(json.dumps(part_levers(args)))
        return
    if args.part == "threads":
        print(json.dumps(part_threads(args)))
        return
    common = ["--preset", args.preset, "--repeats", str(args.repeats), "--window", str(args.window),
              *(["--only", ",".join(args.only)] if args.only else [])]
    start = time.perf_counter()
    if not args.skip_levers:
        levers = _child(["--part", "levers", *common])
        base = max(levers["preset"])
        print(f"# levers: preset {args.preset}, best of {args.repeats} alternating {args.window:g} s windows, "
              f"~{IMAGES_PER_CALL} images per compiled call")
        print("| variant | img/s best | img/s median | vs preset | windows |\n|---|---|---|---|---|")
        for name, values in levers.items():
            print(_row(name, values, base), flush=True)
    settings = [(*map(int, p.split(":")[0].split("x")), int(p.split(":")[1])) for p in args.processes.split(",")]
    settings = settings if args.rounds else []
    rates = {s: [] for s in settings}
    for _ in range(args.rounds):
        for s in settings:
            rates[s] += _child(["--part", "threads", "--threads", str(s[0]), str(s[1]), "--pad", str(s[2]),
                                "--loop-images", str(args.loop_images), *common])["x"]
    if rates:
        ref = max(rates[settings[0]])
        print(f"\n# the training loop end to end, one process per setting, {args.rounds} alternating rounds, "
              f"{args.repeats} epochs of {args.loop_images} images each after the first")
        print("| threads intra x inter, malloc_top_pad_mb | img/s best | img/s median | vs the first | epochs |")
        print("|---|---|---|---|---|")
        for (intra, inter, pad), values in rates.items():
            print(_row(f"{intra} x {inter}, {pad}", values, ref), flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
