"""What telling the GAN what to draw costs per image: a preset's compiled train step,
unconditional against conditional, side by side in one process, alternating windows.

Both variants are the preset exactly (threads, precision, XLA, steps per call); the
conditional one is built with ``--classes`` classes (the class embedding beside the latent,
the projection head in the discriminator) and trains on ``(images, labels)`` chunks. Timed
in alternating windows so that a change of load on a shared machine hits both alike.
Prints img/s (best window and median) and the ratio, with the CPU model and TensorFlow build.

    python benchmarks/bench_conditional.py [--preset mnist-cond] [--classes 10] [--repeats 5] [--window 6]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

from bench_roofline import load_preset  # noqa: E402
from src.config import parse_params  # noqa: E402


def _build(raw: dict, classes: int):
    import tensorflow as tf
    from src.training_loop import build_gan

    params = parse_params(raw)
    b, k = params.train.batch_size, params.train.steps_per_call
    s, c = params.data.image_size, params.data.channels
    lo, hi = params.data.value_range
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(lo, hi, (k * b, s, s, c)).astype(np.float32))
    names = [str(i) for i in range(classes)]
    gan = build_gan(params, tf.distribute.get_strategy(), names)
    chunk = (images, tf.constant(rng.integers(0, classes, k * b).astype(np.int32))) if classes else images
    gan.train_chunk(chunk, 0)  # trace
    return gan, chunk, k * b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mnist-cond")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=float, default=6.0, help="seconds per timed window")
    args = parser.parse_args()

    from src import runtime

    raw = load_preset(args.preset)
    params = parse_params(raw)
    runtime.set_cpu_threads(params.train.intra_op_threads, params.train.inter_op_threads)
    runtime.configure(params.train, params.common.seed)
    variants = {"unconditional": _build(raw, 0), f"conditional ({args.classes} classes)": _build(raw, args.classes)}
    rates = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (gan, chunk, per_call) in variants.items():
            start, done = time.perf_counter(), 0
            while time.perf_counter() - start < args.window:
                gan.train_chunk(chunk, done)
                done += per_call // params.train.batch_size
            rates[name].append(done * params.train.batch_size / (time.perf_counter() - start))
    import tensorflow as tf

    env = runtime.environment(params.train, tf.distribute.get_strategy())
    cpu = env["cpu"]
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['matrix_flags'])}); TensorFlow {tf.__version__} "
          f"{json.dumps(env['tensorflow_build'])}; preset {args.preset}, precision {env['precision_policy']}, "
          f"XLA {'on' if params.train.jit_compile else 'off'}")
    base = max(next(iter(rates.values())))
    for name, values in rates.items():
        print(f"{name:28s} best {max(values):8.0f} img/s  median {statistics.median(values):8.0f}  "
              f"ratio {max(values) / base:.3f}")


if __name__ == "__main__":
    main()
