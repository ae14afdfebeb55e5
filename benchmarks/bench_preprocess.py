"""Benchmark: folder preprocessing, the original one-at-a-time Pillow loop vs ``preprocess()``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_preprocess.py            # N=5000 JPEGs in a temp dir
    .venv/bin/python benchmarks/bench_preprocess.py --n 20000  # also shows memory staying flat
    .venv/bin/python benchmarks/bench_preprocess.py --dir /tmp/bench --keep

Generates N seeded JPEGs (256-1600 px, smooth photo-like content) in folders of 5000,
then runs each method in a fresh subprocess and reports images/s and peak RSS. The
plain loop keeps every image in RAM (float64), so by default it runs on the first 5000
only; ``--plain-all`` runs it on all N too.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PART = 5000  # images per generated sub-folder


# ---------------------------------------------------------------------------- data
def _make_jpeg(args: tuple[str, int]) -> None:
    """One photo-like JPEG: upscaled low-res noise (smooth regions) blended with fine grain."""
    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(256, 1601, size=2))
    small = rng.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
    base = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    # Seeded half-resolution grain: JPEG-encodes like sensor noise, cheap to make.
    grain = Image.fromarray(rng.integers(0, 256, (h // 2 + 1, w // 2 + 1), dtype=np.uint8))
    grain = grain.resize((w, h), Image.Resampling.NEAREST).convert("RGB")
    Image.blend(base, grain, 0.12).save(path, "JPEG", quality=85)


def generate(folder: Path, n: int, seed: int) -> None:
    """Write n JPEGs as folder/part_XX/img_XXXXXX.jpg (skips files that already exist)."""
    jobs = []
    for i in range(n):
        path = folder / f"part_{i // PART:02d}" / f"img_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            jobs.append((str(path), seed * 1_000_003 + i))
    if jobs:
        start = time.perf_counter()
        with multiprocessing.Pool() as pool:
            for _ in pool.imap_unordered(_make_jpeg, jobs, chunksize=16):
                pass
        print(f"generated {len(jobs)} JPEGs in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def image_folder(root: Path, n: int) -> Path:
    """The folder holding the first n images (n is PART or the whole set)."""
    return root / "part_00" if n <= PART else root


# ---------------------------------------------------------------------------- methods (run in a child)
def run_plain(folder: Path) -> int:
    """The original script: open, RGB, resize, /255, append; then one big array."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = []
    for path in files:
        img = Image.open(path).convert("RGB").resize((128, 128))
        images.append(np.array(img) / 255)
    data = np.array(images)
    return len(data)


def run_ours(folder: Path, shard_size: int, workers: int) -> int:
    sys.path.insert(0, str(REPO))
    from src.config import DataParams
    from src.preprocess import preprocess

    data = DataParams(source="folder", folder=str(folder), image_size=128, channels=3, range=[0, 1],
                      shard_size=shard_size, workers=workers)
    with tempfile.TemporaryDirectory(prefix="bench_out_") as out:
        return preprocess(data, 0, Path(out) / "processed")["count"]


def child(args: argparse.Namespace) -> None:
    """Run one method and print its timing and peak memory as one JSON line."""
    start = time.perf_counter()
    if args.child == "plain":
        count = run_plain(Path(args.folder))
    else:
        count = run_ours(Path(args.folder), args.shard_size, args.workers)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest worker
    print(json.dumps({"count": count, "seconds": seconds, "rss_main_mb": own / 1024, "rss_worker_mb": kids / 1024}))


def measure(method: str, folder: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--folder", str(folder),
           "--shard-size", str(args.shard_size), "--workers", str(args.workers)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"{method} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="number of JPEGs (default 5000)")
    parser.add_argument("--dir", help="where to generate the JPEGs (default: a temp dir, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the generated temp dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard for ours (default 1000)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes for ours (0 = one per core)")
    parser.add_argument("--plain-all", action="store_true", help="also run the plain loop on all N (needs ~0.8 GB per 1000)")
    parser.add_argument("--child", choices=("plain", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_jpegs_"))
    try:
        generate(root, args.n, args.seed)
        sizes = sorted({min(args.n, PART), args.n})
        rows = [("plain loop", n, measure("plain", image_folder(root, n), args))
                for n in sizes if n <= PART or args.plain_all]
        rows += [("preprocess()", n, measure("ours", image_folder(root, n), args)) for n in sizes]
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    base = {n: r["count"] / r["seconds"] for name, n, r in rows if name == "plain loop"}
    print(f"\n{os.cpu_count()} CPU cores; JPEGs 256-1600 px -> 128x128x3 in [0, 1]; "
          f"preprocess shard_size={args.shard_size}")
    print(f"{'method':<14}{'images':>8}{'images/s':>10}{'peak RSS MB':>13}{'worker RSS MB':>15}{'speed-up':>10}")
    for name, n, r in rows:
        rate = r["count"] / r["seconds"]
        ref = base.get(n) or base.get(min(base, default=0))
        speed = f"{rate / ref:.1f}x" if ref else "-"
        worker = f"{r['rss_worker_mb']:.0f}" if name != "plain loop" else "-"
        print(f"{name:<14}{n:>8}{rate:>10.1f}{r['rss_main_mb']:>13.0f}{worker:>15}{speed:>10}")


if __name__ == "__main__":
    main()
