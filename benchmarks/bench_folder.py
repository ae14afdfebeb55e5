"""Recipes on a small folder: quality against training images (and minutes), side by side.

For the full folder and for a seeded subset of it (``--subsets``), trains the folder-fast
preset in several variants (``--variants``; each a set of params changes, :data:`VARIANTS`):

- ``off``: no augmentation;
- ``fixed``: DiffAugment (colour, translation, cutout on every image D sees, p = 1): the preset;
- ``adaptive``: the same ops with ADA's probability, starting at 0, steered to r_t = 0.6;
- ``half``: the preset with half the channels in both networks (about 2x the img/s);
- ``r1``: the preset plus a lazy R1 penalty on real images (``train.r1_gamma``);
- ``residual``: the preset with a residual discriminator (``model.dcgan.d_residual``);
- ``recon``, ``recon1``: the preset plus FastGAN's self-supervised decoder in D (``train.reconstruction`` 10, 1);
- ``lr2x``, ``lr4x``: both learning rates doubled, or four times the preset's;
- ``beta0``: Adam's beta1 0 and beta2 0.99 for both networks (StyleGAN2's);
- ``bs16``: half the batch at the same learning rates: twice the steps per image;
- ``mbstd``: the discriminator also sees its features' spread over the batch (``model.dcgan.minibatch_std``);
- ``bilinear``: the generator upsamples by bilinear resizing and a 3x3 conv (``model.dcgan.upsample``);
- ``bilinear_image``: bilinear resizing and a 3x3 conv for the last upsampling only, into the image (``model.dcgan.upsample_image``);
- ``mirror``: each real image x-flipped with probability 1/2 (``train.mirror``);
- ``rampdown``: both learning rates fall linearly to 0 over the second half (``train.lr_rampdown`` 0.5);
- ``gwide``: the generator 1.5x as wide (``model.dcgan.g_filters``; the discriminator, which costs twice
  the generator per image, as it is);
- ``ttur``: the generator's learning rate a quarter of the discriminator's (SAGAN's two time-scale rule).

Every run trains ``--kimg`` thousand images, times its own factor from ``--scale``
(``half=2.1``: the images that variant trains in the preset's minutes, by the img/s ratio
``bench_levers.py`` measured), so the runs can be compared at equal images and, through the
scale, at equal minutes, whatever else the machine is doing.

Every ``--every`` epochs a generator snapshot is scored against the *whole* folder (not
the training subset: a generator that only copies its 300 images should not score well),
with the evaluate stage's folder metrics (Frechet distance on the fixed random conv net,
SWD; each with its 95% interval) on fixed seeds. Prints one row per snapshot and a
summary table in Markdown; writes the rows as TSV to ``--out``.

    python benchmarks/bench_folder.py --folder ../shared/data/emoji128 [--kimg 100] [--subsets 0,300]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from conftest import merge  # noqa: E402
from src.config import parse_params  # noqa: E402
from src.presets import preset_params  # noqa: E402

_AUG = ["color", "translation", "cutout"]


def _half(raw: dict) -> dict:
    d = raw["model"]["dcgan"]
    return {"model": {"dcgan": {"g_filters": [f // 2 for f in d["g_filters"]],
                                "d_filters": [f // 2 for f in d["d_filters"]]}}}


def _scaled_learning_rates(raw: dict, factor: float) -> dict:
    return {"train": {opt: {"learning_rate": factor * raw["train"][opt]["learning_rate"]}
                      for opt in ("g_optimizer", "d_optimizer")}}


# Each variant: the params changes it makes to the preset (a function of the preset's params).
VARIANTS = {
    "off": lambda raw: {"train": {"augment": {"policy": []}}},
    "fixed": lambda raw: {"train": {"augment": {"policy": _AUG, "probability": 1.0, "adaptive": False}}},
    "adaptive": lambda raw: {"train": {"augment": {"policy": _AUG, "probability": 0.0, "adaptive": True}}},
    "half": _half,
    "r1": lambda raw: {"train": {"r1_gamma": 0.01}},  # StyleGAN2-ADA's value for 32-pixel CIFAR-10
    "residual": lambda raw: {"model": {"dcgan": {"d_residual": True}}},
    "recon": lambda raw: {"train": {"reconstruction": 10.0}},  # the error's start (~0.1) near the hinge loss's (~1)
    "recon1": lambda raw: {"train": {"reconstruction": 1.0}},  # a tenth of that weight
    "lr2x": lambda raw: _scaled_learning_rates(raw, 2),
    "lr4x": lambda raw: _scaled_learning_rates(raw, 4),
    "beta0": lambda raw: {"train": {"g_optimizer": {"beta_1": 0.0, "beta_2": 0.99},
                                    "d_optimizer": {"beta_1": 0.0, "beta_2": 0.99}}},
    "bs16": lambda raw: {"train": {"batch_size": raw["train"]["batch_size"] // 2}},  # twice the steps per image
    "mbstd": lambda raw: {"model": {"dcgan": {"minibatch_std": True}}},
    "bilinear": lambda raw: {"model": {"dcgan": {"upsample": "bilinear"}}},
    "bilinear_image": lambda raw: {"model": {"dcgan": {"upsample_image": "bilinear"}}},
    "mirror": lambda raw: {"train": {"mirror": True}},
    "rampdown": lambda raw: {"train": {"lr_rampdown": 0.5}},
    "gwide": lambda raw: {"model": {"dcgan": {"g_filters": [f * 3 // 2 for f in raw["model"]["dcgan"]["g_filters"]]}}},
    "ttur": lambda raw: {"train": {"g_optimizer": {"learning_rate": raw["train"]["g_optimizer"]["learning_rate"] / 4}}},
}
METRIC_SEED = 20240101  # the yardstick: fixed, whatever the run's seed


def _subset_folder(folder: Path, n: int, seed: int, into: Path) -> Path:
    """A folder of symlinks to ``n`` seeded picks from ``folder`` (``n`` = 0: the folder itself)."""
    if n == 0:
        return folder
    from src.images import list_images
    files = list_images(folder)
    picks = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
    into.mkdir(parents=True, exist_ok=True)  # a kept folder (--keep) is reused: the picks are seeded
    for i in sorted(picks):
        link = into / f"{i:05d}_{Path(files[i]).name}"
        if not link.is_symlink():
            link.symlink_to((folder / files[i]).resolve())
    return into


def _score(params, snapshot: Path, reference: np.ndarray, samples: int, net) -> dict:
    """The evaluate stage's folder metrics of ``snapshot`` against ``reference``, on fixed seeds."""
    from src.evaluate import folder_metrics, generate_unit
    from src.networks import load_generator
    fake = generate_unit(params, load_generator(params, snapshot), samples, METRIC_SEED)
    m = folder_metrics(params.evaluate, reference, fake, net=net, log=lambda msg: None)
    return {k: m[k] for k in ("fd_random", "fd_random_ci95", "swd", "swd_ci95")}


def _processed(args, subset: int, keep: Path) -> tuple[dict, Path]:
    """The preset's params on ``subset`` images of ``--folder`` (0: all) and its shards in
    ``keep``/processed<subset>, preprocessed once."""
    from src.preprocess import preprocess

    folder = _subset_folder(Path(args.folder), subset, 0, keep / f"subset{subset}")
    raw = merge(preset_params(args.preset, REPO / "params.yaml"), {"data": {"folder": str(folder)}})
    processed = keep / f"processed{subset}"
    if not (processed / "manifest.json").exists():
        preprocess(parse_params(raw).data, 0, processed)
    return raw, processed


def train_runs(args, keep: Path) -> None:
    """Train every (subset, mode) into ``keep``/run-<subset>-<mode>; snapshot times in times.tsv."""
    from src.training_loop import TrainPaths, train

    for subset in args.subsets:
        raw, processed = _processed(args, subset, keep)
        for mode in args.variants:
            t = raw["train"]
            images_per_epoch = args.steps * t["batch_size"]  # the same epoch length for every subset
            kimg = args.kimg * args.scale.get(mode, 1.0)
            epochs = max(args.every, round(kimg * 1000 / images_per_epoch / args.every) * args.every)
            over = merge(VARIANTS[mode](raw), {"train": {"epochs": epochs, "checkpoint_every": epochs,
                                                         "steps_per_epoch": args.steps},
                                               "sample": {"every_epochs": args.every}})
            out = keep / f"run-{subset}-{mode}"
            (out).mkdir(parents=True, exist_ok=True)
            (out / "params.yaml").write_text(yaml.safe_dump(merge(raw, over)))
            paths = TrainPaths(out / "c", out / "s", out / "log", out / "g.keras", out / "env.json")
            started = time.time()
            train(parse_params(merge(raw, over)), processed, paths)
            times = [(int(p.stem.rsplit("_", 1)[1]), (p.stat().st_mtime - started) / 60)
                     for p in sorted(paths.snapshots.glob("generator_epoch_*.npz"))]
            (out / "times.tsv").write_text("".join(f"{e}\t{m:.2f}\n" for e, m in times))


def score_runs(args, keep: Path) -> list[dict]:
    """Score every snapshot of every run in ``keep`` against the whole folder (processed0)."""
    from src.dataset import open_shards
    from src.metrics import ruler
    from src.metrics.classifier import to_unit_range

    _, whole = _processed(args, 0, keep)  # the whole folder is the reference, also when only subsets trained
    _, shards = open_shards(whole)
    reference = to_unit_range(np.concatenate([np.asarray(s) for s in shards]), (0.0, 1.0))
    rows = []
    for subset in args.subsets:
        for mode in args.variants:
            out = keep / f"run-{subset}-{mode}"
            params = parse_params(yaml.safe_load((out / "params.yaml").read_text()))
            net = ruler.random_ruler()
            images_per_epoch = params.train.steps_per_epoch * params.train.batch_size
            for line in (out / "times.tsv").read_text().splitlines():
                epoch, minutes = int(line.split("\t")[0]), float(line.split("\t")[1])
                row = {"images": subset or len(reference), "mode": mode, "epoch": epoch,
                       "kimg": round(epoch * images_per_epoch / 1000, 1), "minutes": minutes,
                       **_score(params, out / "s" / f"generator_epoch_{epoch:04d}.npz", reference, args.samples, net)}
                rows.append(row)
                print("\t".join(str(v) for v in row.values()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, help="the image folder (e.g. ../shared/data/emoji128)")
    parser.add_argument("--preset", default="folder-fast", help="preset under presets/ (default folder-fast)")
    parser.add_argument("--subsets", type=lambda s: [int(x) for x in s.split(",")], default=[0, 300],
                        help="training set sizes; 0 = the whole folder (default 0,300)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["off", "fixed", "adaptive"],
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default off,fixed,adaptive)")
    parser.add_argument("--scale", type=lambda s: {k: float(v) for k, v in (p.split("=") for p in s.split(","))},
                        default={}, help="per-variant factor on --kimg, e.g. half=2.1 (equal minutes)")
    parser.add_argument("--kimg", type=float, default=100, help="thousands of training images per run")
    parser.add_argument("--steps", type=int, default=44, help="steps per epoch, for every subset (default 44: "
                                                                  "one pass over 1,432 images at batch 32)")
    parser.add_argument("--every", type=int, default=10, help="epochs between scored snapshots")
    parser.add_argument("--samples", type=int, default=1000, help="generated images per score")
    parser.add_argument("--out", default="bench_folder.tsv", help="TSV of every scored snapshot")
    parser.add_argument("--keep", help="keep the runs (snapshots, times) in this folder; default: a temp folder")
    parser.add_argument("--rescore", action="store_true", help="only score the runs already in --keep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-folder-") as tmp:
        keep = Path(args.keep or tmp)
        if not args.rescore:
            train_runs(args, keep)
        rows = score_runs(args, keep)
    header = list(rows[0])
    Path(args.out).write_text("\n".join(["\t".join(header)] + ["\t".join(str(r[k]) for k in header)
                                                                for r in rows]) + "\n")
    print("\n| training images | variant | kimg | minutes | FD (random conv) | SWD x1e3 | best FD on the way |")
    print("|---|---|---|---|---|---|---|")
    for subset in args.subsets:
        for mode in args.variants:
            mine = [r for r in rows if r["mode"] == mode and r["images"] == (subset or rows[0]["images"])]
            if mine:
                last = mine[-1]
                lo, hi = last["fd_random_ci95"]["lo"], last["fd_random_ci95"]["hi"]
                slo, shi = last["swd_ci95"]["lo"], last["swd_ci95"]["hi"]
                print(f"| {last['images']} | {mode} | {last['kimg']} | {last['minutes']:.1f} | "
                      f"{last['fd_random']:.2f} [{lo:.2f}, {hi:.2f}] | {last['swd']:.1f} [{slo:.1f}, {shi:.1f}] | "
                      f"{min(r['fd_random'] for r in mine):.2f} |")


if __name__ == "__main__":
    main()
