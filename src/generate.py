"""Generate images from a trained generator: ``python -m src.generate --n 10000 --out samples.npy``.

The generator (``--generator``): ``final`` (default, ``outputs/generator.keras``: the last
epoch's EMA generator), ``best`` (``outputs/generator_best.keras``: the snapshot that scored
best on the evaluate stage's over-training curve), or the path of a ``.keras`` or snapshot ``.npz``.

Outputs (chosen by ``--out``):

- a path ending in ``.npy``: one uint8 array (n, H, W, C), filled batch by batch through a
  memory map on a temporary file in the same folder and renamed into place at the end
  (memory stays flat for any n; a killed run leaves no half file under the final name);
- anything else: a folder of ``image_000000.png`` ... (each written atomically);
- with ``--interpolate STEPS``: one PNG (or ``.npy``) with ``--rows`` rows of STEPS images
  each walking between two latent points (spherical interpolation) drawn from the seed.

A conditional generator (trained on labelled data) knows its class names (they travel
inside the ``.keras`` file). ``--class NAME|INDEX`` draws that class only; without it, a
balanced mix of every class (image k of class k mod classes). ``--interpolate`` walks
within one class per row: the ``--class`` given, or row r in class r mod classes.

Errors (missing or corrupt generator, wrong shape for params.yaml, unwritable output, bad
argument values) print one line ``error: ...`` on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

import numpy as np  # noqa: E402

from src.atomic import atomic_path, write_bytes  # noqa: E402
from src.errors import UserError, stage_main  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and status 2 instead of usage + message
        raise UserError(f"{message} (see --help)")


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


_positive_int, _steps, _seed = _int_at_least(1), _int_at_least(2), _int_at_least(0)


def _truncation(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m src.generate", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=_positive_int, help="number of images (required unless --interpolate)")
    p.add_argument("--out", required=True, help="file.npy (one uint8 array), a folder for PNGs, "
                                                "or with --interpolate the picture's path")
    p.add_argument("--generator", default="final",
                   help="'final' (outputs/generator.keras, the last epoch), 'best' (outputs/generator_best.keras, "
                        "the snapshot the evaluate stage scored best), or the path of a .keras or snapshot .npz")
    p.add_argument("--params", default="params.yaml", help="params file the generator was trained with")
    p.add_argument("--seed", type=_seed, help="latent seed (default: params common.seed)")
    p.add_argument("--truncation", type=_truncation, help="redraw latent values beyond +-T (T > 0)")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="images per forward pass")
    p.add_argument("--interpolate", type=_steps, metavar="STEPS",
                   help="write one picture: rows of STEPS images between two latent points")
    p.add_argument("--rows", type=_positive_int, default=1, help="rows of the --interpolate picture")
    p.add_argument("--class", dest="class_", metavar="NAME|INDEX",
                   help="conditional generator: draw this class only (its name, or its index); "
                        "default: a balanced mix of every class")
    return p


# ---------------------------------------------------------------------------- outputs
def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def write_npy(batches, path: Path, n: int, shape: tuple[int, int, int], value_range, quiet: bool = False) -> None:
    """Fill ``path`` (uint8 (n, *shape)) from float ``batches`` via a memory-mapped temporary file."""
    from src.sampling import to_uint8

    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *shape))
        done = 0
        with _progress(n, "generate") if not quiet else contextlib.nullcontext() as bar:
            for batch in batches:
                _check_shape(batch, shape)
                array[done:done + len(batch)] = to_uint8(batch, value_range)
                done += len(batch)
                if bar is not None:
                    bar.update(len(batch))
        if done != n:
            raise RuntimeError(f"generated {done} images, expected {n}")
        array.flush()
        del array  # unmapped before the rename


def write_png_folder(batches, folder: Path, n: int, shape: tuple[int, int, int], value_range,
                     quiet: bool = False) -> None:
    from src.pictures import encode_png
    from src.sampling import to_uint8

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder (use a name ending in .npy for one array file)")
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(n - 1)))
    done = 0
    with _progress(n, "generate") if not quiet else contextlib.nullcontext() as bar:
        for batch in batches:
            _check_shape(batch, shape)
            for image in to_uint8(batch, value_range):
                write_bytes(folder / f"image_{done:0{digits}d}.png", encode_png(image))
                done += 1
            if bar is not None:
                bar.update(len(batch))


def _check_shape(batch: np.ndarray, shape: tuple[int, int, int]) -> None:
    if tuple(batch.shape[1:]) != tuple(shape):
        raise UserError(f"the generator makes images of shape {tuple(batch.shape[1:])}, params.yaml expects {shape}")


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between vectors ``a`` and ``b`` at fractions ``t`` -> (len(t), dim)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.asarray(t, np.float64)[:, None]
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:  # (anti)parallel: fall back to a straight line
        return ((1 - t) * a + t * b).astype(np.float32)
    return ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)).astype(np.float32)


def interpolation_latents(rows: int, steps: int, latent_dim: int, seed: int, truncation: float | None) -> np.ndarray:
    """(rows * steps, latent_dim): row r walks from latent 2r to latent 2r + 1 of the seed."""
    from src.sampling import latents

    ends = latents(2 * rows, latent_dim, seed, truncation)
    t = np.linspace(0.0, 1.0, steps)
    return np.concatenate([slerp(ends[2 * r], ends[2 * r + 1], t) for r in range(rows)])


# ---------------------------------------------------------------------------- main
def class_index(requested: str, classes: list[str], source: Path) -> int:
    """The index of ``--class`` (a class name, or an index) among the generator's ``classes``."""
    if not classes:
        raise UserError(f"{source}: --class needs a conditional generator; this one was trained without "
                        "labels (set data.labels in params.yaml and train again)")
    if requested in classes:
        return classes.index(requested)
    if requested.isdigit() and int(requested) < len(classes):
        return int(requested)
    shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
    raise UserError(f"--class {requested!r}: not a class of {source} (classes: {shown}; "
                    f"or an index 0..{len(classes) - 1})")


def generator_file(choice: str) -> Path:
    """The file of ``--generator``: 'final' and 'best' name the pipeline's two exports, anything else is a path."""
    from src.paths import Outputs

    named = {"final": Outputs().generator, "best": Outputs().generator_best}
    return named.get(choice, Path(choice))


def run(argv: list[str] | None = None) -> str:
    """Parse ``argv``, generate, write; return the one-line summary."""
    args = build_parser().parse_args(argv)
    if args.interpolate is None and args.n is None:
        raise UserError("--n is required (or use --interpolate STEPS)")
    if args.interpolate is not None and args.n is not None:
        raise UserError("--n and --interpolate cannot be used together")

    from src.config import load_params

    params = load_params(args.params)
    seed = params.common.seed if args.seed is None else args.seed
    generator_path = generator_file(args.generator)
    if not generator_path.is_file():
        stage = "evaluate" if args.generator == "best" else "train"
        raise UserError(f"{generator_path}: generator file not found (run the {stage} stage first, or pass --generator)")
    out = Path(args.out)
    as_npy = out.suffix.lower() == ".npy"
    _check_writable(out if (as_npy or args.interpolate is not None) else out / "x")

    from src.networks import generator_classes, load_generator  # TensorFlow loads only after the arguments are valid

    generator = load_generator(params, generator_path)
    classes = generator_classes(generator)
    chosen = None if args.class_ is None else class_index(args.class_, classes, generator_path)
    shape = (params.data.image_size, params.data.image_size, params.data.channels)
    value_range = params.data.value_range
    start = time.perf_counter()

    if args.interpolate is not None:
        from src.pictures import encode_png, make_grid
        from src.sampling import to_uint8

        from src.sampling import run_generator

        z = interpolation_latents(args.rows, args.interpolate, params.model.latent_dim, seed, args.truncation)
        labels = None
        if classes:  # each row walks within one class
            row_class = np.full(args.rows, chosen) if chosen is not None else np.arange(args.rows) % len(classes)
            labels = np.repeat(row_class, args.interpolate).astype(np.int32)
        images = np.concatenate([np.asarray(run_generator(generator, z[i:i + args.batch_size],
                                                          None if labels is None else labels[i:i + args.batch_size]))
                                 for i in range(0, len(z), args.batch_size)])
        _check_shape(images, shape)
        images = to_uint8(images, value_range)
        if as_npy:
            from src.atomic import save_npy

            save_npy(out, images.reshape(args.rows, args.interpolate, *shape))
        else:
            if out.is_dir() or str(args.out).endswith(("/", os.sep)):
                out = out / "interpolation.png"
            write_bytes(out, encode_png(make_grid(images, args.interpolate)))
        return (f"generate: {args.rows} x {args.interpolate} interpolation ({shape[0]}x{shape[1]}x{shape[2]}) "
                f"{_which(classes, chosen, per_row=True)}written to {out} in {time.perf_counter() - start:.1f} s")

    from src.sampling import generate_batches

    labels = None if chosen is None else np.full(args.n, chosen, np.int32)
    batches = generate_batches(generator, args.n, params.model.latent_dim, seed, args.batch_size, args.truncation,
                               labels)
    if as_npy:
        write_npy(batches, out, args.n, shape, value_range)
        what = f"uint8 array {(args.n, *shape)}"
    else:
        write_png_folder(batches, out, args.n, shape, value_range)
        what = "PNGs"
    elapsed = time.perf_counter() - start
    return (f"generate: {args.n} images as {what} {_which(classes, chosen)}written to {out} in {elapsed:.1f} s "
            f"({args.n / elapsed:.0f} img/s)")


def _which(classes: list[str], chosen: int | None, per_row: bool = False) -> str:
    """What the summary line says about classes ('' for an unconditional generator)."""
    if not classes:
        return ""
    if chosen is None:
        return f"(row r in class r mod {len(classes)}) " if per_row else f"(a balanced mix of {len(classes)} classes) "
    return f"(class {classes[chosen]!r}) "


def _check_writable(target: Path) -> None:
    """Fail early (before loading TensorFlow) when ``target``'s folder cannot be written."""
    folder = target.parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{probe}: is not a folder, cannot write {target.parent}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{probe}: folder is not writable")


@stage_main
def main() -> None:
    print(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
