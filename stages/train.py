"""Stage 2, train: the GAN trains on data/processed and writes checkpoints it resumes from.

Reads params sections common, data, model, train and sample.every_epochs; writes
outputs/checkpoints, outputs/snapshots, outputs/train_log (DVCLive, every epoch),
outputs/tensorboard (event files when train.tensorboard is on, else empty),
outputs/generator.keras and outputs/environment.json (the outs of this stage in dvc.yaml;
the paths come from src/paths.py).
"""
import _bootstrap  # noqa: F401  (repository root on sys.path)

from src.config import load_params
from src.errors import stage_main
from src.paths import PROCESSED, Outputs


@stage_main
def main() -> None:
    params = load_params()
    from src.training_loop import train  # TensorFlow loads only after params are valid

    paths = Outputs().train()
    summary = train(params, PROCESSED, paths)
    print(f"train: done at epoch {summary['epoch']} (step {summary['step']}); generator: {paths.generator}")


if __name__ == "__main__":
    main()
