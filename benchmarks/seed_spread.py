"""Mean and spread of the quality numbers over training seeds, from DVC experiments.

Run a seed sweep first (each run is the whole default pipeline, measured with the shipped
ruler of data/rulers), then print the table docs/experiments.md's "How big a difference is
real" section shows:

    for s in 42 1 2; do dvc exp run -n seed-$s -S common.seed=$s; done
    python benchmarks/seed_spread.py            # every experiment with a common.seed, one per seed

It reads ``dvc exp show -A --json`` (params and ``outputs/metrics.json`` of every experiment).
"""
import argparse
import json
import subprocess
import sys

import numpy as np

KEYS = ("fid", "kid", "classifier_score", "swd")


def _rows(node, found):
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and node.get("rev") not in (None, "workspace"):  # the workspace may be mid-run
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            metrics = ((data.get("metrics") or {}).get("outputs/metrics.json") or {}).get("data") or {}
            seed = (params.get("common") or {}).get("seed")
            if seed is not None and all(k in metrics for k in KEYS):
                found.setdefault(seed, (node.get("name") or node["rev"][:7], metrics))
        for value in node.values():
            _rows(value, found)
    elif isinstance(node, list):
        for value in node:
            _rows(value, found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    out = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "-A", "--json"], capture_output=True,
                         text=True, check=True).stdout
    found: dict = {}
    _rows(json.loads(out), found)
    if not found:
        sys.exit("seed_spread: no experiment with outputs/metrics.json found")
    seeds = sorted(found)
    print("| common.seed | experiment | " + " | ".join(KEYS) + " | fid_ci95 |")
    print("|---|---|" + "---|" * (len(KEYS) + 1))
    for seed in seeds:
        name, m = found[seed]
        ci = m.get("fid_ci95") or {}
        print(f"| {seed} | {name} | " + " | ".join(f"{m[k]:.4g}" for k in KEYS)
              + f" | [{ci.get('lo', float('nan')):.4g}, {ci.get('hi', float('nan')):.4g}] |")
    if len(seeds) > 1:
        values = {k: np.array([found[s][1][k] for s in seeds], float) for k in KEYS}
        print("| mean | | " + " | ".join(f"{values[k].mean():.4g}" for k in KEYS) + " | |")
        print("| std (ddof=1) | | " + " | ".join(f"{values[k].std(ddof=1):.3g}" for k in KEYS) + " | |")
        print("| max - min | | " + " | ".join(f"{np.ptp(values[k]):.3g}" for k in KEYS) + " | |")


if __name__ == "__main__":
    main()
