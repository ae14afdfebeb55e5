"""Augmentation on a small folder: quality against training minutes, off / fixed / adaptive.

For the full folder and for a seeded subset of it (``--subsets``), trains the folder-fast
preset three ways, at the same number of training images each:

- ``off``: no augmentation;
- ``fixed``: DiffAugment (colour, translation, cutout on every image D sees, p = 1);
- ``adaptive``: the same ops with ADA's probability, starting at 0, steered to r_t = 0.6.

Every ``--every`` epochs a generator snapshot is scored against the *whole* folder (not
the training subset: a generator that only copies its 300 images should not score well),
with the folder metrics of the evaluate stage on a fixed seed. Prints one table row per
snapshot and a summary table in Markdown; writes both as TSV to ``--out``.

    python benchmarks/bench_folder.py --folder ../shared/data/emoji128 [--kimg 150] [--subsets 0,300]
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

MODES = {
    "off": {"policy": []},
    "fixed": {"policy": ["color", "translation", "cutout"], "probability": 1.0, "adaptive": False},
    "adaptive": {"policy": ["color", "translation", "cutout"], "probability": 0.0, "adaptive": True},
}
METRIC_SEED = 20240101  # the yardstick: fixed, whatever the run's seed


def _subset_folder(folder: Path, n: int, seed: int, into: Path) -> Path:
    """A folder of symlinks to ``n`` seeded picks from ``folder`` (``n`` = 0: the folder itself)."""
    if n == 0:
        return folder
    from src.images import list_images
    files = list_images(folder)
    picks = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
    into.mkdir(parents=True)
    for i in sorted(picks):
        (into / f"{i:05d}_{Path(files[i]).name}").symlink_to((folder / files[i]).resolve())
    return into


def _score(params, snapshot: Path, reference: np.ndarray, samples: int) -> dict:
    from src.evaluate import _generate_unit, _load_generator
    from src.metrics import swd
    fake = _generate_unit(params, _load_generator(params, snapshot), samples, METRIC_SEED)
    ev = params.evaluate
    (res,) = swd.swd(reference, [fake], ev.swd_patches_per_image, ev.swd_projections, METRIC_SEED)
    return {"swd": res["mean"]}


def run(args) -> list[dict]:
    from src.dataset import open_shards
    from src.metrics.classifier import to_unit_range
    from src.preprocess import preprocess
    from src.training_loop import TrainPaths, train

    base = yaml.safe_load((REPO / "presets" / f"{args.preset}.yaml").read_text())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-folder-") as tmp:
        tmp = Path(tmp)
        reference = None
        for subset in args.subsets:
            folder = _subset_folder(Path(args.folder), subset, 0, tmp / f"subset{subset}")
            raw = merge(base, {"data": {"folder": str(folder)}})
            processed = tmp / f"processed{subset}"
            preprocess(parse_params(raw).data, 0, processed)
            if reference is None:  # the first subset is the whole folder (or the largest asked)
                _, shards = open_shards(processed)
                reference = to_unit_range(np.concatenate([np.asarray(s) for s in shards]),
                                          parse_params(raw).data.value_range)
            for mode in args.modes:
                t = raw["train"]
                images_per_epoch = args.steps * t["batch_size"]  # the same epoch length for every subset
                epochs = max(args.every, round(args.kimg * 1000 / images_per_epoch / args.every) * args.every)
                over = {"train": {"epochs": epochs, "checkpoint_every": epochs, "steps_per_epoch": args.steps,
                                  "augment": merge(t["augment"], MODES[mode])},
                        "sample": {"every_epochs": args.every}}
                params = parse_params(merge(raw, over))
                out = tmp / f"run-{subset}-{mode}"
                paths = TrainPaths(out / "c", out / "s", out / "log", out / "g.keras", out / "env.json")
                started = time.time()
                train(params, processed, paths)
                for snap in sorted(paths.snapshots.glob("generator_epoch_*.npz")):
                    epoch = int(snap.stem.rsplit("_", 1)[1])
                    row = {"images": subset or len(reference), "mode": mode, "epoch": epoch,
                           "kimg": round(epoch * images_per_epoch / 1000, 1),
                           "minutes": round((snap.stat().st_mtime - started) / 60, 2),
                           **_score(params, snap, reference, args.samples)}
                    rows.append(row)
                    print("\t".join(str(v) for v in row.values()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, help="the image folder (e.g. ../shared/data/emoji128)")
    parser.add_argument("--preset", default="folder-fast", help="preset under presets/ (default folder-fast)")
    parser.add_argument("--subsets", type=lambda s: [int(x) for x in s.split(",")], default=[0, 300],
                        help="training set sizes; 0 = the whole folder (default 0,300)")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument("--kimg", type=float, default=150, help="thousands of training images per run")
    parser.add_argument("--steps", type=int, default=44, help="steps per epoch, for every subset (default 44: "
                                                                  "one pass over 1,432 images at batch 32)")
    parser.add_argument("--every", type=int, default=10, help="epochs between scored snapshots")
    parser.add_argument("--samples", type=int, default=1000, help="generated images per score")
    parser.add_argument("--out", default="bench_folder.tsv", help="TSV of every scored snapshot")
    args = parser.parse_args()
    rows = run(args)
    header = list(rows[0])
    Path(args.out).write_text("\n".join(["\t".join(header)] + ["\t".join(str(r[k]) for k in header)
                                                                for r in rows]) + "\n")
    print("\n| images | augmentation | kimg | minutes | SWD (x1e3, lower is better) final | best |")
    print("|---|---|---|---|---|---|")
    for subset in args.subsets:
        for mode in args.modes:
            mine = [r for r in rows if r["mode"] == mode and r["images"] == (subset or rows[0]["images"])]
            if mine:
                last = mine[-1]
                print(f"| {last['images']} | {mode} | {last['kimg']} | {last['minutes']} | {last['swd']:.1f} | "
                      f"{min(r['swd'] for r in mine):.1f} |")


if __name__ == "__main__":
    main()
