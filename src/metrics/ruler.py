"""The rulers: the fixed feature networks of the metrics, shipped as bytes with the repository.

``data/rulers/`` holds, in git:

- ``mnist_cnn.npz``: the digit CNN of FID/KID, the classifier score and the class coverage on
  MNIST-like data (trained once on MNIST; its test accuracy is printed by ``make ruler``);
- ``random_conv.npz``: the fixed random convolutional network of the folder metrics
  (weights drawn with NumPy from seed 0, no training);
- ``SHA256SUMS``: the sha256 of each, in ``sha256sum`` format.

The metrics stage never trains or draws a ruler: it checks the file's bytes against
``SHA256SUMS`` (a mismatch stops it with one line naming the file and both hashes) and runs
the network's forward pass **in NumPy, in float64**. No TensorFlow kernel is involved, so
oneDNN on or off, another TensorFlow version or build, or a GPU give the same features,
and every machine measures with the same ruler. ``make ruler`` (``python -m
src.metrics.ruler``) retrains the digit CNN and redraws the random net from the
``evaluate.classifier`` params, rewrites ``SHA256SUMS`` and says that numbers measured
before are no longer comparable.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from src.errors import UserError

RULERS = Path("data/rulers")
SUMS = "SHA256SUMS"
DIGITS = "mnist_cnn.npz"
RANDOM = "random_conv.npz"
BN_EPSILON = 1e-3           # Keras BatchNormalization's default, as trained
RANDOM_WIDTHS = (32, 64, 128, 256)
RANDOM_SLOPE = 0.2


# ---------------------------------------------------------------- checked loading
def recorded_sums(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` from ``folder/SHA256SUMS``."""
    path = Path(folder) / SUMS
    if not path.is_file():
        raise UserError(f"{path}: ruler checksums not found (restore data/rulers from git, or run `make ruler`)")
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def load_arrays_checked(folder: Path, name: str) -> dict[str, np.ndarray]:
    """The arrays of ruler ``name`` after checking its bytes against ``SHA256SUMS``."""
    path = Path(folder) / name
    want = recorded_sums(folder).get(name)
    if want is None:
        raise UserError(f"{path}: no checksum recorded in {Path(folder) / SUMS} (run `make ruler`)")
    if not path.is_file():
        raise UserError(f"{path}: ruler not found (restore it with `git checkout -- {path}`)")
    raw = path.read_bytes()
    got = hashlib.sha256(raw).hexdigest()
    if got != want:
        raise UserError(f"{path}: sha256 {got} but {Path(folder) / SUMS} records {want}; this is not the "
                        f"shipped ruler (restore it with `git checkout -- {path}`, or run `make ruler`)")
    import io
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        return {key: np.asarray(archive[key], np.float64) for key in archive.files}


# ---------------------------------------------------------------- NumPy layers (NHWC, float64)
def _conv(x: np.ndarray, kernel: np.ndarray, stride: int = 1, same: bool = False) -> np.ndarray:
    """2-D convolution as Keras computes it: ``kernel`` (k, k, in, out); 'valid' or 'same' padding."""
    k = kernel.shape[0]
    if same:
        out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
        pad_h = max((out_h - 1) * stride + k - x.shape[1], 0)
        pad_w = max((out_w - 1) * stride + k - x.shape[2], 0)
        x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    n, h, w, c = windows.shape[:4]
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, k * k * c)
    return (patches @ kernel.reshape(k * k * c, -1)).reshape(n, h, w, -1)


def _max_pool(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _batches(images: np.ndarray, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield np.asarray(images[start:start + batch_size], np.float64)


class DigitRuler:
    """The digit CNN: (N, 28, 28, 1) images in [0, 1] -> features (N, 128), probabilities (N, 10)."""

    name = "mnist-cnn"

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.w = arrays

    def _bn(self, x: np.ndarray, i: int) -> np.ndarray:
        w = self.w
        scale = w[f"bn{i}/gamma"] / np.sqrt(w[f"bn{i}/moving_variance"] + BN_EPSILON)
        return (x - w[f"bn{i}/moving_mean"]) * scale + w[f"bn{i}/beta"]

    def features_and_probs(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        w = self.w
        feats, probs = [], []
        for x in _batches(images, batch_size):
            if x.ndim == 3:
                x = x[..., None]
            x = _max_pool(np.maximum(self._bn(_conv(x, w["conv1/kernel"]), 1), 0.0))
            x = _max_pool(np.maximum(self._bn(_conv(x, w["conv2/kernel"]), 2), 0.0))
            f = np.maximum(x.reshape(len(x), -1) @ w["features/kernel"] + w["features/bias"], 0.0)
            logits = f @ w["probs/kernel"] + w["probs/bias"]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            feats.append(f.astype(np.float32))
            probs.append((e / e.sum(axis=1, keepdims=True)).astype(np.float32))
        if not feats:
            return np.zeros((0, 128), np.float32), np.zeros((0, 10), np.float32)
        return np.concatenate(feats), np.concatenate(probs)


class RandomConvRuler:
    """The random conv net: (N, H, W, 1 or 3) images in [0, 1] -> features (N, 256).

    Four 3x3 convolutions ('same', strides 1, 2, 2, 2, LeakyReLU 0.2) on images mapped to
    [-1, 1] (grey repeated to RGB), then the global average.
    """

    name = "random-conv"

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.w = arrays

    def features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        out = []
        for x in _batches(images, batch_size):
            if x.ndim == 3:
                x = x[..., None]
            if x.shape[-1] == 1:
                x = np.repeat(x, 3, axis=-1)
            x = x * 2.0 - 1.0
            for i in range(len(RANDOM_WIDTHS)):
                x = _conv(x, self.w[f"conv{i}/kernel"], stride=1 if i == 0 else 2, same=True) + self.w[f"conv{i}/bias"]
                x = np.where(x > 0, x, RANDOM_SLOPE * x)
            out.append(x.mean(axis=(1, 2)).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, RANDOM_WIDTHS[-1]), np.float32)


def digit_ruler(folder: Path = RULERS) -> DigitRuler:
    return DigitRuler(load_arrays_checked(folder, DIGITS))


def random_ruler(folder: Path = RULERS) -> RandomConvRuler:
    return RandomConvRuler(load_arrays_checked(folder, RANDOM))


# ---------------------------------------------------------------- making rulers (make ruler)
def digit_arrays(model) -> dict[str, np.ndarray]:
    """The arrays of a trained :func:`src.metrics.classifier.build_classifier` model, by ruler key."""
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    out = {}
    for i, conv in enumerate(convs, 1):
        out[f"conv{i}/kernel"] = conv.get_weights()[0]
    for i, bn in enumerate(norms, 1):
        gamma, beta, mean, var = bn.get_weights()
        out.update({f"bn{i}/gamma": gamma, f"bn{i}/beta": beta, f"bn{i}/moving_mean": mean,
                    f"bn{i}/moving_variance": var})
    for name in ("features", "probs"):
        kernel, bias = model.get_layer(name).get_weights()
        out[f"{name}/kernel"], out[f"{name}/bias"] = kernel, bias
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def random_arrays(seed: int) -> dict[str, np.ndarray]:
    """The random net's weights drawn from ``seed`` with NumPy (He-normal scale for LeakyReLU 0.2)."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    out, fan_in = {}, 3
    for i, width in enumerate(RANDOM_WIDTHS):
        std = np.sqrt(2.0 / (1.0 + RANDOM_SLOPE ** 2) / (9 * fan_in))
        out[f"conv{i}/kernel"] = (rng.standard_normal((3, 3, fan_in, width)) * std).astype(np.float32)
        out[f"conv{i}/bias"] = (rng.standard_normal(width) * 0.1).astype(np.float32)
        fan_in = width
    return out


def write_rulers(folder: Path, rulers: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """Write each ruler (file name -> arrays) and record every file's sha256 in ``SHA256SUMS``."""
    from src.atomic import save_arrays, sha256_file, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arrays in rulers.items():
        save_arrays(folder / name, arrays)
    sums = {name: sha256_file(folder / name) for name in sorted(p.name for p in folder.glob("*.npz"))}
    write_text(folder / SUMS, "".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return sums


def retrain(params, folder: Path = RULERS, log=print) -> dict[str, str]:
    """Train the digit CNN on ``data.mnist_dir`` and draw the random net, from ``evaluate.classifier``."""
    from src.metrics.classifier import train_classifier
    from src.mnist import load_mnist

    cp = params.evaluate.classifier
    before = recorded_sums(folder) if (Path(folder) / SUMS).is_file() else {}
    train_x, train_y = load_mnist(params.data.mnist_dir, "train")
    test_x, test_y = load_mnist(params.data.mnist_dir, "test")
    model, accuracy = train_classifier(train_x, train_y, test_x, test_y, cp, seed=cp.seed, verbose=2)
    arrays = digit_arrays(model)
    check = DigitRuler({k: v.astype(np.float64) for k, v in arrays.items()})
    _, probs = check.features_and_probs(test_x.astype(np.float32)[..., None] / 255.0)
    numpy_accuracy = float(np.mean(np.argmax(probs, axis=1) == test_y))
    log(f"ruler: digit CNN test accuracy {accuracy:.4f} (Keras), {numpy_accuracy:.4f} (the NumPy ruler)")
    sums = write_rulers(folder, {DIGITS: arrays, RANDOM: random_arrays(cp.seed)})
    for name, digest in sums.items():
        was = before.get(name)
        log(f"ruler: {Path(folder) / name} sha256 {digest}" + ("" if was in (None, digest) else f" (was {was})"))
    if any(before.get(name) not in (None, digest) for name, digest in sums.items()):
        log("ruler: the ruler changed: metrics measured before this are NOT comparable with metrics measured "
            "after it; commit data/rulers/ and rerun evaluate for every run you compare")
    return sums


def main(argv=None) -> None:
    from src.config import load_params
    from src.determinism import make_deterministic
    from src.errors import stage_main

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RULERS, help="folder of the rulers (default data/rulers)")
    args = parser.parse_args(argv)

    @stage_main
    def run() -> None:
        params = load_params()
        make_deterministic(params.evaluate.classifier.seed)
        retrain(params, args.out)

    run()


if __name__ == "__main__":
    main()
