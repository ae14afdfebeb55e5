"""Roofline of a preset on this machine: the matrix peak, the train step's achieved FLOP/s, and where the rest goes.

One run, three parts, each in its own process (TensorFlow fixes its thread pools at start):

1. peak (TensorFlow's default threads: every core on one op): large square matmuls in
   float32 and bfloat16, and the forward pass of every Dense, Conv2D and Conv2DTranspose
   layer of the preset's generator and discriminator at their own shapes, at the preset's
   batch and at ``--big-batch``, in both dtypes;
2. step (the preset's own threads and precision): the compiled train step
   (``GAN.train_chunk`` on images already in memory) as img/s and achieved GFLOP/s
   (FLOPs per training image from ``bench_flops.py``), the same step without augmentation,
   and a TensorFlow profiler trace of a few chunks summed by op kind: matrix (convolutions
   and matmuls, forward and backward), BatchNorm, augmentation (its forward and gradient
   ops), Adam updates, activations, other element-wise ops (loss, EMA, bias gradients);
3. loop: ``src.training_loop.train`` end to end on synthetic shards (data feeding from
   memory-mapped shards, Python, logging): the share of time outside the compiled step.

Every timing is the best of ``--repeats`` (the machine may be shared: the best run is the
one least disturbed). Prints tables; about 3-4 minutes with the defaults on 2 cores,
``--quick`` for about one.

    python benchmarks/bench_roofline.py [--preset folder-fast] [--repeats 5] [--quick]

ROOFLINE_NAMES=1 also lists the 60 costliest ops of the profile by name (on stderr).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

from src.config import parse_params  # noqa: E402
from src.presets import preset_params  # noqa: E402


def load_preset(name: str):
    raw = preset_params(name, REPO / "params.yaml")
    raw["data"]["folder"] = str(REPO)  # the networks need no images; any existing folder validates
    return raw


def best_time(fn, repeats: int, min_seconds: float = 0.2) -> float:
    """Seconds per call of ``fn``: best of ``repeats`` windows of at least ``min_seconds``."""
    fn()  # trace / warm up
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(1, int(min_seconds / once))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


# ---------------------------------------------------------------------------- part 1: peak
def layer_shapes(params) -> list[dict]:
    """Every Dense / Conv2D / Conv2DTranspose of G and D: input shape, kernel, strides, MACs per image."""
    import keras
    from bench_flops import forward_macs
    from src.networks import build_discriminator, build_generator

    found = []
    for net, model in (("G", build_generator(params.model, params.data)),
                       ("D", build_discriminator(params.model, params.data))):
        for layer in model.layers:
            if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
                continue
            kind = ("dense" if isinstance(layer, keras.layers.Dense) else
                    "convT" if isinstance(layer, keras.layers.Conv2DTranspose) else "conv")
            one = keras.Sequential([keras.Input(layer.input.shape[1:]), layer.__class__.from_config(layer.get_config())])
            found.append({"net": net, "kind": kind, "input": list(layer.input.shape[1:]),
                          "output": list(layer.output.shape[1:]), "kernel": list(layer.kernel.shape),
                          "strides": list(getattr(layer, "strides", (1, 1))), "macs": forward_macs(one)})
    return found


def _layer_fn(spec: dict, batch: int, dtype):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=[batch, *spec["input"]]).astype(np.float32), dtype)
    k = tf.constant(rng.normal(size=spec["kernel"]).astype(np.float32) * 0.05, dtype)
    if spec["kind"] == "dense":
        f = tf.function(lambda: tf.matmul(x, k))
    elif spec["kind"] == "conv":
        f = tf.function(lambda: tf.nn.conv2d(x, k, [1, *spec["strides"], 1], "SAME"))
    else:  # Keras keeps a transposed kernel as (h, w, out, in), as tf.nn.conv2d_transpose wants it
        out = [batch, *spec["output"]]
        f = tf.function(lambda: tf.nn.conv2d_transpose(x, k, out, [1, *spec["strides"], 1], "SAME"))
    return f


def part_peak(args) -> dict:
    import tensorflow as tf

    result = {"matmul": {}, "layers": []}
    n = args.matmul_size
    for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
        a = tf.constant(np.random.default_rng(1).normal(size=(n, n)).astype(np.float32), dtype)
        f = tf.function(lambda a=a: tf.matmul(a, a))
        seconds = best_time(f, args.repeats, min_seconds=0.0)
        result["matmul"][name] = 2 * n ** 3 / seconds / 1e9
        print(f"  matmul {n}x{n} {name}: {result['matmul'][name]:.1f} GFLOP/s", file=sys.stderr, flush=True)
    params = parse_params(load_preset(args.preset))
    batches = sorted({params.train.batch_size, args.big_batch})
    for spec in layer_shapes(params):
        row = dict(spec, gflops={})
        for batch in batches:
            for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
                try:
                    seconds = best_time(_layer_fn(spec, batch, dtype), args.repeats, min_seconds=0.1)
                    row["gflops"][f"{name}@{batch}"] = 2 * spec["macs"] * batch / seconds / 1e9
                except Exception as exc:  # a dtype/op pair this build of TensorFlow lacks
                    row["gflops"][f"{name}@{batch}"] = None
                    print(f"  {spec['net']} {spec['kind']} {name}@{batch}: {type(exc).__name__}", file=sys.stderr)
        result["layers"].append(row)
    result["batches"] = batches
    return result


# ---------------------------------------------------------------------------- part 2: step
def _scope_augmentation():
    """Put the augmentation's ops under a name scope 'augment' so the profile can find them."""
    import tensorflow as tf
    from src.augment import Augmenter

    call = Augmenter.__call__

    def scoped(self, images, p, seed):
        with tf.name_scope("augment"):
            return call(self, images, p, seed)

    Augmenter.__call__ = scoped


MATRIX = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMul", "Einsum")
ACTIVATIONS = ("re_lu", "activation", "Relu", "Tanh", "Sigmoid")


def op_kind(name: str, op_type: str) -> str:
    """The kind of one op of the step, from its name (Keras layer and our name scopes) and type.

    Gradient ops carry their forward op's scopes (``gradient_tape/.../batch_normalization/...``),
    so each kind counts its forward and backward work.
    """
    if "augment" in name:
        return "augmentation"
    if any(m in op_type for m in MATRIX):
        return "matrix (conv, matmul)"
    if "batch_normalization" in name:
        return "BatchNorm"
    if "/adam" in name:
        return "Adam updates"
    if any(a in name or a in op_type for a in ACTIVATIONS):
        return "activations"
    return "other element-wise (loss, EMA, bias grads, casts)"


def profile_ops(logdir: str) -> dict:
    """Op time (seconds, summed over threads) by kind, and the top op types, from a profiler trace."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:
        return {}
    files = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    if not files:
        return {}
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(sorted(files)[-1]).read_bytes())
    kinds, types, names = defaultdict(float), defaultdict(float), defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                label = meta[event.metadata_id].name
                if ":" not in label or "::" in label:
                    continue
                name, op_type = label.rsplit(":", 1)
                seconds = event.duration_ps / 1e12
                kinds[op_kind(name, op_type)] += seconds
                types[op_type] += seconds
                names[f"{name}:{op_type}"] += seconds
    if os.environ.get("ROOFLINE_NAMES"):
        for label, seconds in sorted(names.items(), key=lambda kv: -kv[1])[:60]:
            print(f"{seconds:8.4f} {label}", file=sys.stderr)
    top = dict(sorted(types.items(), key=lambda kv: -kv[1])[:12])
    return {"kinds": dict(kinds), "types": top}


def part_step(args) -> dict:
    import tensorflow as tf
    from bench_flops import forward_macs
    from src import runtime
    from src.networks import build_discriminator, build_generator

    raw = load_preset(args.preset)
    params = parse_params(raw)
    runtime.retain_freed_memory(params.train.malloc_top_pad_mb)
    runtime.set_cpu_threads(params.train.intra_op_threads, params.train.inter_op_threads)
    policy = runtime.configure(params.train, params.common.seed)
    _scope_augmentation()
    from src.training_loop import build_gan

    flops = 2 * (3 * forward_macs(build_generator(params.model, params.data))
                 + 6 * forward_macs(build_discriminator(params.model, params.data)))
    b, k = params.train.batch_size, params.train.steps_per_call
    size, channels = params.data.image_size, params.data.channels
    real = tf.constant(np.random.default_rng(0).uniform(0, 1, (k * b, size, size, channels)).astype(np.float32))
    out = {"policy": policy, "flops_per_image": flops, "batch": b, "steps_per_call": k,
           "threads": [params.train.intra_op_threads, params.train.inter_op_threads]}
    variants = {"step": raw}
    if params.train.augment.policy:
        no_aug = json.loads(json.dumps(raw))
        no_aug["train"]["augment"]["policy"] = []
        variants["step without augmentation"] = no_aug
    gans = {name: build_gan(parse_params(r), tf.distribute.get_strategy()) for name, r in variants.items()}
    for gan in gans.values():
        gan.train_chunk(real, 0)  # trace
    rates = {name: [] for name in gans}
    for _ in range(args.repeats):  # alternate the variants: a change of load hits both
        for name, gan in gans.items():
            start, steps = time.perf_counter(), 0
            while time.perf_counter() - start < args.step_seconds / args.repeats:
                gan.train_chunk(real, steps)
                steps += k
            rates[name].append(steps * b / (time.perf_counter() - start))
    for name, values in rates.items():
        out[name] = {"img_s": max(values), "all": values}
    with tempfile.TemporaryDirectory() as logdir:
        gan = gans["step"]
        chunks = max(2, args.profile_chunks)
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for i in range(chunks):
            gan.train_chunk(real, i * k)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        out["profile"] = dict(profile_ops(logdir), wall=wall, images=chunks * k * b)
    return out


# ---------------------------------------------------------------------------- part 3: loop
def loop_rates(raw: dict, epochs: int, images: int) -> list[float]:
    """img/s of each epoch of the training loop end to end (``train``, data feeding, Python
    and logging included) with params ``raw``, on ``images`` synthetic images per epoch."""
    from bench_train import synthetic_shards
    from src.train_log import read_rows
    from src.training_loop import TrainPaths, train

    raw["train"].update(epochs=epochs, checkpoint_every=1000, steps_per_epoch=0)
    raw["sample"]["every_epochs"] = 1000
    params = parse_params(raw)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_shards(Path(tmp) / "processed", images, params.data.image_size,
                                params.data.channels, params.data.value_range)
        out = Path(tmp) / "out"
        train(params, data, TrainPaths(out / "c", out / "s", out / "log", out / "g.keras", out / "e.json"))
        return [row["images_per_sec"] for _, row in sorted(read_rows(out / "log").items())]


def part_loop(args) -> dict:
    rates = loop_rates(load_preset(args.preset), args.loop_epochs, args.loop_images)
    return {"img_s": max(rates[1:] or rates), "epochs": rates}


# ---------------------------------------------------------------------------- report
def _child(part: str, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, *argv]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"error: part '{part}' failed (status {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"


def report(args, peak: dict, step: dict, loop: dict | None) -> None:
    import tensorflow as tf
    from src.runtime import native_bfloat16

    print(f"# roofline: preset {args.preset}, {_cpu_model()}, {os.cpu_count()} cores, "
          f"native bfloat16: {'yes' if native_bfloat16() else 'no'}, TensorFlow {tf.__version__}, "
          f"best of {args.repeats}")
    print("\n## matrix peak (TensorFlow's default threads)")
    for name, value in peak["matmul"].items():
        print(f"matmul {args.matmul_size}x{args.matmul_size} {name}: {value:8.1f} GFLOP/s")
    cols = [f"{d}@{b}" for b in peak["batches"] for d in ("float32", "bfloat16")]
    print("\n| net | layer | in -> out | MFLOP/img fwd | " + " | ".join(f"GFLOP/s {c}" for c in cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    for row in peak["layers"]:
        shape = f"{'x'.join(map(str, row['input']))} -> {'x'.join(map(str, row['output']))}"
        cells = " | ".join("n/a" if row["gflops"][c] is None else f"{row['gflops'][c]:.1f}" for c in cols)
        print(f"| {row['net']} | {row['kind']} | {shape} | {2 * row['macs'] / 1e6:.1f} | {cells} |")
    layer_peak = {}
    for c in cols:  # the forward passes of all layers at this batch: total FLOPs / total time
        if all(row["gflops"][c] for row in peak["layers"]):
            batch = int(c.split("@")[1])
            work = [2 * row["macs"] * batch for row in peak["layers"]]
            layer_peak[c] = sum(work) / sum(w / (row["gflops"][c] * 1e9) for w, row in zip(work, peak["layers"])) / 1e9
    print("all layers' forward passes, FLOP-weighted: " + ", ".join(f"{c} {v:.1f}" for c, v in layer_peak.items())
          + " GFLOP/s")

    flops = step["flops_per_image"]
    rate = step["step"]["img_s"]
    achieved = rate * flops / 1e9
    f32_batch = f"float32@{step['batch']}"
    print(f"\n## train step ({step['policy']}, batch {step['batch']}, {step['steps_per_call']} steps per call, "
          f"threads intra {step['threads'][0]} inter {step['threads'][1]}; images in memory)")
    print(f"FLOPs per training image: {flops / 1e9:.3f} GFLOP (bench_flops.py: 2 x MACs x (3 G + 6 D))")
    for name in ("step", "step without augmentation"):
        if name in step:
            values = ", ".join(f"{v:.0f}" for v in step[name]["all"])
            print(f"{name}: {step[name]['img_s']:.1f} img/s = {step[name]['img_s'] * flops / 1e9:.1f} GFLOP/s "
                  f"(windows: {values})")
    best_matmul = max(peak["matmul"].values())
    print(f"achieved / matmul peak ({best_matmul:.1f}): {achieved / best_matmul:.2f}")
    if f32_batch in layer_peak:
        print(f"achieved / the preset's layers at batch {step['batch']} float32 ({layer_peak[f32_batch]:.1f}): "
              f"{achieved / layer_peak[f32_batch]:.2f}")
    if "step without augmentation" in step:
        aug = 1 - step["step"]["img_s"] / step["step without augmentation"]["img_s"]
        print(f"augmentation's share of step time (ablation): {aug:.0%}")
    if loop is not None:
        outside = 1 - loop["img_s"] / rate
        print(f"\n## training loop end to end (synthetic shards, {args.loop_images} images per epoch)")
        print(f"{loop['img_s']:.1f} img/s (epochs: {', '.join(f'{v:.0f}' for v in loop['epochs'])}); "
              f"data feeding, Python and logging: {outside:.0%} of its time")

    prof = step.get("profile", {})
    if prof.get("kinds"):
        total = sum(prof["kinds"].values())
        print(f"\n## op profile of the step ({prof['images']} images, {prof['wall']:.2f} s wall under the profiler; "
              f"op time summed over threads: {total:.2f} s)")
        for kind, seconds in sorted(prof["kinds"].items(), key=lambda kv: -kv[1]):
            print(f"{kind:24} {seconds:7.3f} s  {seconds / total:5.1%}")
        print("top op types: " + ", ".join(f"{t} {s / total:.1%}" for t, s in prof["types"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="folder-fast", help="preset name under presets/")
    parser.add_argument("--repeats", type=int, default=5, help="timing windows per figure (the best is kept)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmul")
    parser.add_argument("--big-batch", type=int, default=256, help="the second batch of the layer timings")
    parser.add_argument("--step-seconds", type=float, default=40, help="seconds of train-step timing per variant")
    parser.add_argument("--profile-chunks", type=int, default=4, help="compiled calls under the profiler")
    parser.add_argument("--loop-epochs", type=int, default=4, help="epochs of the end-to-end loop (0: skip)")
    parser.add_argument("--loop-images", type=int, default=1432, help="images per epoch of the loop")
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer repeats, shorter windows")
    parser.add_argument("--part", choices=["peak", "step", "loop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.step_seconds, args.loop_epochs, args.loop_images = 2, 8, 2, 704
        args.matmul_size, args.profile_chunks = min(args.matmul_size, 1024), 2
    for key in ("repeats", "matmul_size", "big_batch", "profile_chunks", "loop_images"):
        if getattr(args, key) < 1:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be at least 1")
    if args.part:
        part = {"peak": part_peak, "step": part_step, "loop": part_loop}[args.part]
        print(json.dumps(part(args)))
        return
    argv = [a for a in sys.argv[1:] if a != "--quick"] + [
        "--repeats", str(args.repeats), "--step-seconds", str(args.step_seconds), "--loop-epochs",
        str(args.loop_epochs), "--loop-images", str(args.loop_images), "--matmul-size", str(args.matmul_size),
        "--profile-chunks", str(args.profile_chunks)]
    start = time.perf_counter()
    peak = _child("peak", argv)
    step = _child("step", argv)
    loop = _child("loop", argv) if args.loop_epochs > 0 else None
    report(args, peak, step, loop)
    print(f"\n({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
