"""FLOPs per training image of a preset, its measured speed here, and what to expect on a GPU.

Counts the multiply-adds of every Dense, Conv2D and Conv2DTranspose layer of the generator
and the discriminator that the preset builds (the rest, BatchNorm, activations and
augmentation, is a few percent). One training image costs about 3 generator passes
(forward, then the backward pass at twice the forward) and 6 discriminator passes (a real
and a fake image, each forward and backward): FLOPs = 2 x MACs x (3 G + 6 D). Then trains
the preset's step on random data for ``--seconds`` to measure images/s on this machine,
and divides the FLOPs per image into a GPU's sustained FLOP/s (``--gpu-tflops`` at
``--utilization``) for the estimate.

    python benchmarks/bench_flops.py --preset folder-128 [--preset folder-fast] [--seconds 30]
        [--set model.features.backbone=mobilenet_v2_035 --set model.features.weights=data/weights/FILE]

With ``model.features`` set the frozen pretrained network's multiply-adds (depthwise ones
included) count as D's, at the same 6 passes: a slight overcount, since its weights get no
gradient.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from src.config import parse_params  # noqa: E402
from src.presets import _merged, preset_params  # noqa: E402


def forward_macs(model) -> int:
    """Multiply-adds of one image through ``model``'s Dense and convolution layers."""
    import keras
    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a network inside (model.features' pretrained one)
            total += forward_macs(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, _ = layer.output.shape
            total += h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Conv2DTranspose):  # MACs counted at the input resolution
            _, h, w, _ = layer.input.shape
            total += h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            total += h * w * int(np.prod(layer.kernel.shape))
    return total


def measure(params, seconds: float) -> float:
    import tensorflow as tf
    from src import runtime
    from src.training_loop import build_gan
    runtime.configure(params.train, params.common.seed)
    gan = build_gan(params, tf.distribute.get_strategy())
    size, channels, b = params.data.image_size, params.data.channels, params.train.batch_size
    k = params.train.steps_per_call
    real = tf.constant(np.random.default_rng(0).uniform(0, 1, (k * b, size, size, channels)).astype(np.float32))
    gan.train_chunk(real, 0)  # trace
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        gan.train_chunk(real, steps)
        steps += k
    return steps * b / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="preset name under presets/ (repeatable)")
    parser.add_argument("--seconds", type=float, default=30, help="CPU timing per preset (0 = skip)")
    parser.add_argument("--gpu-tflops", type=float, default=19.5,
                        help="the GPU's dense FP32 TFLOP/s (default 19.5: an A100 without its TF32 tensor "
                             "cores, which TensorFlow uses by default; a conservative floor)")
    parser.add_argument("--utilization", type=float, default=0.3,
                        help="share of that peak small-batch GAN convolutions sustain (default 0.3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params key over the preset's, e.g. model.features.backbone=mobilenet_v2_035 (repeatable)")
    args = parser.parse_args()
    from src.networks import build_discriminator, build_generator
    print("| preset | G MMAC/img | D MMAC/img | GFLOP per training image | CPU img/s here | CPU GFLOP/s "
          "| GPU img/s (est.) | GPU s/epoch of 1,432 (est.) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.preset or ["folder-128"]:
        raw = preset_params(name, REPO / "params.yaml")
        raw["data"]["folder"] = str(REPO)  # the networks need no images; any existing folder validates
        raw = _merged(raw, {tuple(key.split(".")): yaml.safe_load(value)
                            for key, _, value in (item.partition("=") for item in args.set)})
        params = parse_params(raw)
        g = forward_macs(build_generator(params.model, params.data))
        d = forward_macs(build_discriminator(params.model, params.data))
        flops = 2 * (3 * g + 6 * d)
        cpu = measure(params, args.seconds) if args.seconds > 0 else float("nan")
        gpu = args.gpu_tflops * 1e12 * args.utilization / flops
        label = " ".join([name, *args.set])
        print(f"| {label} | {g / 1e6:.0f} | {d / 1e6:.0f} | {flops / 1e9:.2f} | {cpu:.1f} | "
              f"{cpu * flops / 1e9:.0f} | {gpu:.0f} | {1432 / gpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
