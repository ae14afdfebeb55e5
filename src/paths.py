"""Where the stages read and write: the one source of the paths that ``dvc.yaml`` names.

``dvc.yaml`` lists each stage's ``deps`` and ``outs`` by hand; the stage scripts and the
libraries take every path from here, and ``tests/test_paths.py`` checks that the two agree.
Paths are relative to the repository root (stages run there). :class:`Outputs` takes
another root, so tests and benchmarks can point a whole run at a scratch folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FOLDER_INDEX = Path("data/scan.json")  # the scan stage's content index of data.folder (src/folder_index.py)
PROCESSED = Path("data/processed")  # the preprocess stage's shards (src/dataset.py)
OUTPUTS = Path("outputs")


@dataclass(frozen=True)
class TrainPaths:
    """Everything the train stage writes (the ``outs`` of the stage in ``dvc.yaml``)."""
    checkpoints: Path
    snapshots: Path
    log: Path            # the DVCLive folder: metrics.json, plots/metrics/<column>.tsv, plots/images/grid/
    generator: Path      # the exported EMA generator (.keras, same weights -> same bytes)
    environment: Path    # JSON: versions, devices, switches
    tensorboard: Path | None = None  # TensorBoard event files (train.tensorboard); None: next to ``log``


@dataclass(frozen=True)
class Outputs:
    """The files under ``outputs/`` (or under ``root``), by the stage that writes them."""
    root: Path = OUTPUTS

    # train
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log"

    @property
    def train_log_summary(self) -> Path:
        """DVCLive's summary: the last epoch's values (the evaluate stage copies D's accuracies)."""
        return self.train_log / "metrics.json"

    @property
    def generator(self) -> Path:
        return self.root / "generator.keras"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def train(self) -> TrainPaths:
        return TrainPaths(checkpoints=self.checkpoints, snapshots=self.snapshots, log=self.train_log,
                          generator=self.generator, environment=self.environment, tensorboard=self.tensorboard)

    # sample
    @property
    def samples(self) -> Path:
        return self.root / "samples"

    # evaluate
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def eval_curve(self) -> Path:
        return self.root / "eval_curve.tsv"

    @property
    def generator_best(self) -> Path:
        """The snapshot that scores best on ``eval_curve`` (src/best_snapshot.py), as ``.keras``."""
        return self.root / "generator_best.keras"
