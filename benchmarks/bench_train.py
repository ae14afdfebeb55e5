"""Training throughput: our train loop beside the original scripts' ways, in one run.

For each model at its default size and batch, prints images/second of:
- the original way, written here as the original scripts did it:
  * mlp: a Python loop of ``train_on_batch`` on the discriminator and on a combined
    model with the discriminator frozen (the original MNIST MLP script);
  * dcgan: a plain ``tf.function`` step with two gradient tapes, no XLA (the original
    conv script and the TensorFlow DCGAN tutorial);
- ours: ``src.training_loop.train`` end to end (data feeding from memory-mapped shards,
  EMA, logging, checkpoint at the end) with the switches the presets use.
Both run the same architecture at the same batch size on the same synthetic shards.

    python benchmarks/bench_train.py [--only mlp|dcgan28|dcgan128] [--seconds 30]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from src.atomic import save_npy, sha256_file, write_json  # noqa: E402
from src.config import parse_params  # noqa: E402
from src.presets import preset_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def synthetic_shards(folder: Path, n: int, size: int, channels: int, value_range) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lo, hi = value_range
    shards, shard = [], 5000
    for i, start in enumerate(range(0, n, shard)):
        count = min(shard, n - start)
        images = rng.uniform(lo, hi, (count, size, size, channels)).astype(np.float32)
        save_npy(folder / f"shard_{i:05d}.npy", images)
        shards.append({"file": f"shard_{i:05d}.npy", "count": count, "sha256": sha256_file(folder / f"shard_{i:05d}.npy")})
    write_json(folder / "manifest.json", {"count": n, "shape": [size, size, channels], "dtype": "float32",
                                          "range": list(value_range), "source": "synthetic", "params": {},
                                          "shards": shards})
    return folder


def original_mlp(params, seconds: float, direct: bool = False) -> float:
    """The original MNIST MLP GAN loop: train_on_batch on D, then on the combined model.

    The original makes fakes with ``generator.predict``; ``direct`` calls the generator
    instead (cheaper under Keras 3), the fairer baseline for the step itself.
    """
    import keras
    from src.networks import build_discriminator, build_generator
    b, latent = params.train.batch_size, params.model.latent_dim
    generator = build_generator(params.model, params.data)
    discriminator = build_discriminator(params.model, params.data)
    discriminator.compile(optimizer=keras.optimizers.Adam(2e-4, 0.5),
                          loss=keras.losses.BinaryCrossentropy(from_logits=True), metrics=["accuracy"])
    # Under Keras 3 the discriminator must trace its train step while still trainable, or
    # `trainable = False` below freezes it for good (the original script's silent bug).
    discriminator.train_on_batch(np.zeros((params.train.batch_size, 28, 28, 1), np.float32),
                                 np.ones((params.train.batch_size, 1), np.float32))
    discriminator.trainable = False
    z = keras.Input((latent,))
    combined = keras.Model(z, discriminator(generator(z)))
    combined.compile(optimizer=keras.optimizers.Adam(2e-4, 0.5), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (60000, 28, 28, 1)).astype(np.float32)
    ones, zeros = np.ones((b, 1), np.float32), np.zeros((b, 1), np.float32)

    def iteration():
        noise = rng.standard_normal((b, latent)).astype(np.float32)
        fake = np.asarray(generator(noise, training=False)) if direct else generator.predict(noise, verbose=0)
        batch = real[rng.integers(0, len(real), b)]
        discriminator.train_on_batch(batch, ones)
        discriminator.train_on_batch(fake, zeros)
        combined.train_on_batch(rng.standard_normal((b, latent)).astype(np.float32), ones)

    for _ in range(20):
        iteration()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        iteration()
        steps += 1
    return steps * b / (time.perf_counter() - start)


def original_conv(params, seconds: float) -> float:
    """The original conv GAN / TF DCGAN tutorial step: tf.function, two tapes, no XLA."""
    import keras
    import tensorflow as tf
    from src.networks import build_discriminator, build_generator
    b, latent = params.train.batch_size, params.model.latent_dim
    generator = build_generator(params.model, params.data)
    discriminator = build_discriminator(params.model, params.data)
    cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True)
    g_opt, d_opt = keras.optimizers.Adam(2e-4, 0.5), keras.optimizers.Adam(2e-4, 0.5)

    @tf.function
    def train_step(images):
        noise = tf.random.normal([b, latent])
        with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
            generated = generator(noise, training=True)
            real_output = discriminator(images, training=True)
            fake_output = discriminator(generated, training=True)
            gen_loss = cross_entropy(tf.ones_like(fake_output), fake_output)
            disc_loss = (cross_entropy(tf.ones_like(real_output), real_output)
                         + cross_entropy(tf.zeros_like(fake_output), fake_output))
        g_opt.apply_gradients(zip(gen_tape.gradient(gen_loss, generator.trainable_variables),
                                  generator.trainable_variables))
        d_opt.apply_gradients(zip(disc_tape.gradient(disc_loss, discriminator.trainable_variables),
                                  discriminator.trainable_variables))

    s, c = params.data.image_size, params.data.channels
    dataset = tf.data.Dataset.from_tensor_slices(
        np.random.default_rng(0).uniform(0, 1, (8 * b, s, s, c)).astype(np.float32)).repeat().batch(b)
    iterator = iter(dataset)
    for _ in range(3):
        train_step(next(iterator))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step(next(iterator))
        steps += 1
    return steps * b / (time.perf_counter() - start)


def ours(params, seconds: float, workdir: Path) -> float:
    """Our train() end to end; images/s over the epochs after the first (compile) one."""
    from src.training_loop import TrainPaths, train
    data = synthetic_shards(workdir / "processed", max(20000, params.train.batch_size * 8),
                            params.data.image_size, params.data.channels, params.data.value_range)
    out = workdir / "out"
    from src.train_log import read_rows
    train(params, data, TrainPaths(out / "c", out / "s", out / "log", out / "g.keras", out / "e.json"))
    rates = [row["images_per_sec"] for _, row in sorted(read_rows(out / "log").items())]
    return float(np.median(rates[1:] or rates))


def case(name: str, seconds: float):
    if name.startswith("mlp"):
        raw = preset_params("mnist-default", REPO / "params.yaml")
    elif name == "dcgan28":
        raw = preset_params("mnist-dcgan", REPO / "params.yaml")
    else:
        raw = preset_params("folder-128", REPO / "params.yaml")
    raw["data"]["source"] = "folder"
    raw["data"]["folder"] = str(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        probe = parse_params(raw)
        # Enough epochs of a few chunks to measure for about `seconds` after the first compile.
        raw["train"].update(epochs=4, checkpoint_every=1000)
        raw["sample"]["every_epochs"] = 1000
        steps = raw["train"].get("steps_per_call", 1) * (10 if name.startswith("mlp") else 3)
        raw["train"]["steps_per_epoch"] = steps
        params = parse_params(raw)
        if name.startswith("mlp"):
            base = original_mlp(probe, seconds, direct=name == "mlp-direct")
        else:
            base = original_conv(probe, seconds)
        mine = ours(params, seconds, Path(tmp))
    return probe, base, mine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mlp", "mlp-direct", "dcgan28", "dcgan128"])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    names = [args.only] if args.only else ["mlp", "mlp-direct", "dcgan28", "dcgan128"]
    print(f"{'model':10} {'size':>10} {'batch':>5} {'original img/s':>15} {'ours img/s':>11} {'speed-up':>8}")
    for name in names:
        params, base, mine = case(name, args.seconds)
        size = f"{params.data.image_size}x{params.data.image_size}x{params.data.channels}"
        print(f"{name:10} {size:>10} {params.train.batch_size:5d} {base:15.1f} {mine:11.1f} {mine / base:7.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
