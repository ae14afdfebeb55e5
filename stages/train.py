"""Stage 2, train: the GAN trains on data/processed and writes checkpoints it resumes from.

Reads params sections common, data, model, train and sample.every_epochs; writes
outputs/checkpoints, outputs/snapshots, outputs/train_log (DVCLive, every epoch),
outputs/tensorboard (event files when train.tensorboard is on, else empty),
outputs/generator.keras and outputs/environment.json (the outs of this stage in dvc.yaml).
"""
from pathlib import Path

import _bootstrap  # noqa: F401  (repository root on sys.path)

from src.config import load_params
from src.errors import stage_main

PATHS = dict(
    checkpoints=Path("outputs/checkpoints"),
    snapshots=Path("outputs/snapshots"),
    log=Path("outputs/train_log"),
    generator=Path("outputs/generator.keras"),
    environment=Path("outputs/environment.json"),
    tensorboard=Path("outputs/tensorboard"),
)


@stage_main
def main() -> None:
    params = load_params()
    from src.training_loop import TrainPaths, train  # TensorFlow loads only after params are valid

    summary = train(params, Path("data/processed"), TrainPaths(**PATHS))
    print(f"train: done at epoch {summary['epoch']} (step {summary['step']}); generator: {PATHS['generator']}")


if __name__ == "__main__":
    main()
