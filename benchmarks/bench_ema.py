"""The generator's moving average at other decays, from one finished run, without retraining.

The EMA never feeds back into training, so every ``train.ema.decay`` sees the same trained
weights; only the average differs. Train once with a checkpoint every epoch
(``dvc exp run -S train.checkpoint_every=1 -S train.keep_checkpoints=100000``, or the same in
params.yaml), then this script rebuilds, from the trained generator weights in those
checkpoints, the average for each ``--decays`` value: per epoch, with the decay raised to
the epoch's step count (exact up to the within-epoch weighting, which is negligible when
the half-life is many epochs; ``ckpt`` rows are the run's own per-step average, ``raw`` the
trained weights). BatchNorm statistics come from the trained generator, as in training.
The checkpoint holds everything needed; nothing is trained again.

At each ``--epochs`` it scores every average with the evaluate stage's folder metrics:

- ``stage``: as the evaluate stage does (its seeded half A as the reference, as many samples,
  its latent seed): the figures ``metrics.json`` would hold for that generator;
- ``whole``: 2,000 samples against the whole folder (less noisy).

    python benchmarks/bench_ema.py --decays 0.999,0.9995,0.9998 --epochs 300,400

A start from the first checkpoint (not from the initial weights, as training does) weighs
the early epochs differently; by a few half-lives later it no longer matters.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

WHOLE_SAMPLES, WHOLE_SEED = 2000, 20240101  # bench_folder.py's yardstick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decays", required=True, type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--epochs", required=True, type=lambda s: {int(x) for x in s.split(",")})
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--processed", default="data/processed")
    parser.add_argument("--checkpoints", default="outputs/checkpoints")
    parser.add_argument("--rulers", default="data/rulers")
    args = parser.parse_args()

    from src.atomic import load_arrays
    from src.checkpoint import epoch_and_step, list_checkpoints
    from src.config import load_params
    from src.dataset import ShardReader, open_shards
    from src.evaluate import generate_unit, folder_metrics
    from src.metrics import classifier as cls
    from src.metrics import ruler
    from src.metrics.registry import GEN, SPLIT, stream_seed
    from src.networks import build_generator
    from src.weights import network_variables

    params = load_params(args.params)
    ev = params.evaluate
    if params.data.source != "folder" or params.data.labels != "none":
        sys.exit("error: bench_ema.py scores unlabelled folder runs (data.source folder, data.labels none)")
    manifest, shards = open_shards(args.processed)
    total = sum(len(s) for s in shards)
    value_range = tuple(float(v) for v in manifest["range"])
    reader = ShardReader(shards, None)
    half = min(ev.num_samples, total // 2)
    order = np.random.default_rng(stream_seed(ev, SPLIT)).permutation(total)
    references = {"stage": (cls.to_unit_range(reader.gather(order[:half]), value_range), half, stream_seed(ev, GEN)),
                  "whole": (cls.to_unit_range(reader.gather(np.arange(total)), value_range), WHOLE_SAMPLES, WHOLE_SEED)}
    net = ruler.random_ruler(Path(args.rulers))
    generator = build_generator(params.model, params.data, ())
    variables = network_variables(generator, "generator")

    checkpoints = list_checkpoints(Path(args.checkpoints))
    if not checkpoints:
        sys.exit(f"error: {args.checkpoints}: no checkpoints (train with train.checkpoint_every: 1 first)")
    averages: dict[float, dict[str, np.ndarray]] = {}
    last_step, trained = 0, None
    print("epoch\tweights\t" + "\t".join(f"{r}_{m}" for r in references for m in ("swd", "fd_random")))
    for path in checkpoints:
        epoch, step = epoch_and_step(path)
        arrays = load_arrays(path)
        trained = trained or [key[len("ema/"):] for key in arrays if key.startswith("ema/")]
        for decay in args.decays:
            beta = decay ** (step - last_step)
            if decay not in averages:
                averages[decay] = {k: arrays[k].astype(np.float64) for k in trained}
            else:
                for k in trained:
                    averages[decay][k] = beta * averages[decay][k] + (1 - beta) * arrays[k]
        last_step = step
        if epoch not in args.epochs:
            continue
        sets = {"ckpt": {k: arrays["ema/" + k] for k in trained}, "raw": {k: arrays[k] for k in trained},
                **{f"ema{d:g}": averages[d] for d in args.decays}}
        for name, weights in sets.items():
            for key, var in variables.items():  # averaged weights; BatchNorm statistics as trained
                var.assign(np.asarray(weights.get(key, arrays[key]), np.float32))
            cells = []
            for reference, n, seed in references.values():
                fake = generate_unit(params, generator, n, seed)
                m = folder_metrics(ev, reference, fake, net=net, log=lambda msg: None)
                cells += [f"{m['swd']:.1f}", f"{m['fd_random']:.3f}"]
            print(f"{epoch}\t{name}\t" + "\t".join(cells), flush=True)


if __name__ == "__main__":
    main()
