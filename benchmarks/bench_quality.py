"""Quality for the time: the original MLP script's way, trained for the same wall-clock
time as our default run's train stage, judged by the same evaluate stage.

Needs a finished default run (`make repro`: outputs/metrics.json, outputs/train_log,
data/rulers). Trains the original way (train_on_batch on the discriminator, then
on the combined model with the discriminator frozen; batch 32, Adam 2e-4/0.5) for the
seconds our train stage took (or --seconds), then prints both FIDs.

    python benchmarks/bench_quality.py [--seconds 540]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from src.config import parse_params  # noqa: E402


def our_train_seconds(log: Path, batch_size: int, steps_per_epoch: int) -> float:
    from src.train_log import read_rows
    return sum(steps_per_epoch * batch_size / row["images_per_sec"] for row in read_rows(log).values())


def train_original(params, seconds: float, images: np.ndarray):
    import keras
    from src.networks import build_discriminator, build_generator
    keras.utils.set_random_seed(params.common.seed)
    b, latent = 32, params.model.latent_dim
    generator = build_generator(params.model, params.data)
    discriminator = build_discriminator(params.model, params.data)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    discriminator.compile(optimizer=keras.optimizers.Adam(2e-4, 0.5), loss=bce)
    rng = np.random.default_rng(params.common.seed)
    ones, zeros = np.ones((b, 1), np.float32), np.zeros((b, 1), np.float32)
    discriminator.train_on_batch(images[:b], ones)  # trace while trainable (see bench_train.py)
    discriminator.trainable = False
    z = keras.Input((latent,))
    combined = keras.Model(z, discriminator(generator(z)))
    combined.compile(optimizer=keras.optimizers.Adam(2e-4, 0.5), loss=bce)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fake = generator.predict(rng.standard_normal((b, latent)).astype(np.float32), verbose=0)
        discriminator.train_on_batch(images[rng.integers(0, len(images), b)], ones)
        discriminator.train_on_batch(fake, zeros)
        combined.train_on_batch(rng.standard_normal((b, latent)).astype(np.float32), ones)
        steps += 1
    return generator, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="training time (default: what our train stage took)")
    args = parser.parse_args()
    ours = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    seconds = args.seconds or our_train_seconds(REPO / "outputs/train_log",
                                                ours.train.batch_size, ours.train.steps_per_epoch)
    our_metrics = json.loads((REPO / "outputs/metrics.json").read_text())

    raw = yaml.safe_load((REPO / "params.yaml").read_text())  # the same MLP GAN architecture
    raw["train"]["ema"]["enabled"] = False
    params = parse_params(raw)
    from src.mnist import load_mnist
    from src.evaluate import evaluate
    images, _ = load_mnist(params.data.mnist_dir, "train")
    images = (images[..., None].astype(np.float32) / 127.5 - 1.0)
    generator, steps = train_original(params, seconds, images)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generator.save(out / "generator.keras")
        theirs = evaluate(params, outputs_dir=out, processed_dir=REPO / "data/processed")
    print(f"training time: {seconds:.0f} s each; original MLP way: {steps} steps of batch 32")
    print(f"{'run':34} {'FID':>8} {'KID':>8} {'score':>6} {'coverage':>8}")
    for name, m in (("original MLP script (same time)", theirs), ("our default (same MLP, fast path, EMA)", our_metrics)):
        print(f"{name:34} {m['fid']:8.2f} {m['kid']:8.4f} {m['classifier_score']:6.2f} {m['coverage']:8d}")
    print(f"real-data floor: FID {our_metrics['fid_real']:.2f}; FID ratio original/ours: "
          f"{theirs['fid'] / our_metrics['fid']:.1f}x")


if __name__ == "__main__":
    main()
