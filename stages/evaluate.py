"""Stage: evaluate the trained generator.

Writes outputs/metrics.json (flat metrics) and outputs/eval_curve.tsv (metric per snapshot).
Run from the repository root: ``python stages/evaluate.py``.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import load_params  # noqa: E402
from src.errors import stage_main  # noqa: E402


@stage_main
def main() -> None:
    params = load_params()
    from src.determinism import make_deterministic
    from src.evaluate import evaluate
    from src.metrics.registry import METRICS

    make_deterministic()  # op determinism; evaluate seeds its own draws from evaluate.seed
    start = time.perf_counter()
    metrics = evaluate(params)
    shown = [key for name in METRICS for key in (name, name + "_real") if key in metrics]  # each metric's headline
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
    print(f"evaluate: {summary} ({time.perf_counter() - start:.0f}s)")
    if "best_epoch" in metrics:
        print(f"evaluate: best snapshot epoch {metrics['best_epoch']} ({metrics['curve_metric']} "
              f"{metrics['best_curve_score']:.4g}; final epoch {metrics['final_epoch']}: "
              f"{metrics['final_curve_score']:.4g}) kept as outputs/generator_best.keras")
    if "best_" + shown[0] in metrics:
        best = ", ".join(f"{k} {metrics['best_' + k]:.4g}" for k in METRICS if "best_" + k in metrics)
        print(f"evaluate: the best snapshot on every metric: {best}")
    if "note" in metrics:
        print(f"evaluate: note: {metrics['note']}")
    if "per_class_note" in metrics:
        print(f"evaluate: note: {metrics['per_class_note']}")


if __name__ == "__main__":
    main()
