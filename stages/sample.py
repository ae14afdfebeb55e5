"""Stage 3, sample: render every generator snapshot as PNGs, grids and a progress picture.

Reads params sections common, data, model and sample; reads outputs/snapshots and writes
outputs/samples (see src/render.py for the files and the incremental index).
"""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from src.config import load_params
from src.errors import stage_main
from src.paths import Outputs


@stage_main
def main() -> None:
    params = load_params()
    from src.render import render_samples  # TensorFlow loads only after params are valid

    outputs = Outputs()
    s = render_samples(params, outputs.snapshots, outputs.samples)
    rows = f"; one grid row per class ({s['classes']}, named in classes.json)" if s["classes"] else ""
    print(f"sample: {s['snapshots']} snapshots, {s['rendered']} rendered, {s['skipped']} unchanged, "
          f"{s['removed']} stale files removed; progress {'rebuilt' if s['progress'] else 'unchanged'}{rows}; "
          f"images in {outputs.samples}")


if __name__ == "__main__":
    main()
