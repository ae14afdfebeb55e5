"""Score training snapshots on the evaluate stage's full ruler, as if each were the final generator.

The over-training curve (``outputs/eval_curve.tsv``) scores every snapshot with
``evaluate.curve_samples`` images on one metric; single snapshots swing (docs/roofline.md).
This prints, for the snapshots asked for, every headline metric the evaluate stage would
write to ``metrics.json`` had training stopped there: ``num_samples`` images from the same
latents against the same reference, with the same seeds (``src.evaluate.score_generator``),
then their mean. The last snapshot's row equals the final generator's ``metrics.json``.
``--draws K`` measures each snapshot K times, each time against another split of the real
images (a folder's halves; MNIST's shuffled test digits) with other latents, the first
being ``metrics.json``'s own, and prints each figure's mean and standard deviation over the
draws, the real floor's (``<key>_real``, the same draws) and their ratio, draw by draw:
how far one draw of ``num_samples`` images moves a figure, which a single run cannot show.
(On MNIST at ``num_samples`` 10,000 the reference is the whole test set in another order,
so only the generated images move: 2 draws of the default run, fid 4.33 ± 0.15.)
Run it in a finished run (after ``dvc repro``), from the repository root:

    python benchmarks/score_snapshots.py --last 4                  # the last four snapshots
    python benchmarks/score_snapshots.py --epochs 480 540 600 620  # these epochs
    python benchmarks/score_snapshots.py --last 1 --draws 6        # the final generator, 6 draws

It writes nothing.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import load_params  # noqa: E402
from src.errors import UserError, stage_main  # noqa: E402


def table(params, epochs=None, last=None, outputs="outputs", processed="data/processed", rulers=None, draws=1):
    """``[(epoch, {metric: [value of each draw]})]`` for the chosen snapshots (``epochs``, or
    the ``last`` few), each scored by :func:`src.evaluate.score_generator` on the evaluate
    stage's own data, then on ``draws - 1`` other splits with other latents
    (``measured_data(draw=k)``). Each dict also holds ``<metric>_real``: the real floor of
    the same draws."""
    from src import evaluate as ev
    from src.metrics import ruler
    from src.metrics.registry import METRICS
    from src.paths import Outputs
    from src.snapshots import list_snapshots

    out = Outputs(Path(outputs))
    found = dict(list_snapshots(out.snapshots))
    if not found:
        raise UserError(f"{out.snapshots}: no generator snapshots (run the train stage first)")
    chosen = sorted(found)[-last:] if last else sorted(epochs or found)
    missing = [e for e in chosen if e not in found]
    if missing:
        raise UserError(f"{out.snapshots}: no snapshot of epoch {missing[0]} (there are: "
                        f"{', '.join(str(e) for e in sorted(found))})")
    if draws < 1:
        raise UserError(f"--draws must be at least 1, not {draws}")
    scores = {epoch: [] for epoch in chosen}
    floors = []
    for draw in range(draws):
        data, _ = ev.measured_data(params, outputs, processed, lambda message: None, rulers or ruler.RULERS, draw)
        floors.append(ev.score_floor(data))
        for epoch in chosen:
            scores[epoch].append(ev.score_generator(params, data, found[epoch], draw))
    names = [name for name in METRICS if name in floors[0]]
    return [(epoch, {**{name: [each[name] for each in scores[epoch]] for name in names},
                     **{name + "_real": [floor[name] for floor in floors] for name in names}})
            for epoch in chosen]


def _cell(values) -> str:
    """One figure, or the mean and standard deviation of several."""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}"


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--epochs", type=int, nargs="+", help="the snapshots' epochs (default: every snapshot)")
    which.add_argument("--last", type=int, help="the last this many snapshots")
    parser.add_argument("--draws", type=int, default=1,
                        help="splits of the real images, each with its own latents (default 1: metrics.json's); "
                             "prints mean ± sd")
    args = parser.parse_args()
    from src.determinism import make_deterministic

    make_deterministic()
    rows = table(load_params(), args.epochs, args.last, draws=args.draws)
    names = [name for name in rows[0][1] if not name.endswith("_real")]
    print("epoch\t" + "\t".join(f"{n}\t{n} / real" for n in names))
    for epoch, scores in rows:
        ratios = {n: np.asarray(scores[n]) / np.asarray(scores[n + "_real"]) for n in names}
        print(f"{epoch}\t" + "\t".join(f"{_cell(scores[n])}\t{_cell(ratios[n])}" for n in names))
    print("real\t" + "\t".join(f"{_cell(rows[0][1][n + '_real'])}\t" for n in names))
    if len(rows) > 1:
        print("mean\t" + "\t".join(f"{np.mean([s[n] for _, s in rows]):.4g}\t" for n in names))


if __name__ == "__main__":
    main()
