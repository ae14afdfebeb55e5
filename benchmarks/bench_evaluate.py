"""Time the evaluation of 10,000 samples end to end on this machine.

Feature extraction for generated + reference + real (+ noise) images, FID/KID/classifier
score/coverage, SWD, and their 95% intervals (bootstrap and folds) — everything ``stages/evaluate.py`` does except the over-training
curve. Features come from the shipped ruler (data/rulers, NumPy). Uses outputs/generator.keras
when it exists; otherwise an untrained generator of the configured architecture stands in
(the timing is the same, the metric values are then meaningless).

    python benchmarks/bench_evaluate.py [--samples 10000]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    args = parser.parse_args()

    import dataclasses

    from src.config import load_params, parse_params
    from src.evaluate import evaluate
    from src.networks import build_generator

    params = load_params() if Path("params.yaml").is_file() else parse_params({})
    ev = dataclasses.replace(params.evaluate, num_samples=args.samples,
                             kid_subset_size=min(params.evaluate.kid_subset_size, args.samples))
    params = dataclasses.replace(params, evaluate=ev)
    if params.data.source != "mnist":
        sys.exit("bench_evaluate: this benchmark is for data.source mnist")

    notes = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        out = Path(tmp)
        gen_file = Path("outputs/generator.keras")
        if gen_file.is_file():
            shutil.copy(gen_file, out / "generator.keras")
        else:
            build_generator(params.model, params.data).save(out / "generator.keras")
            notes.append("untrained stand-in generator")
        train_log = Path("outputs/train_log/metrics.json")  # DVCLive's summary: d_acc_real/fake
        if train_log.is_file():
            (out / "train_log").mkdir()
            shutil.copy(train_log, out / "train_log" / "metrics.json")

        start = time.perf_counter()
        metrics = evaluate(params, outputs_dir=out)
        seconds = time.perf_counter() - start

    for key in sorted(metrics):
        print(f"  {key}: {metrics[key]}")
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"bench_evaluate: {args.samples} samples evaluated in {seconds:.1f} s on {os.cpu_count()} CPU cores{extra}")


if __name__ == "__main__":
    main()
