"""Stage: train the MNIST digit classifier used as the feature network for evaluation.

Writes outputs/classifier/classifier.keras and outputs/classifier/metrics.json.
Run from the repository root: ``python stages/classifier.py``.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.atomic import write_json  # noqa: E402
from src.config import load_params  # noqa: E402
from src.errors import stage_main  # noqa: E402

OUT_DIR = Path("outputs/classifier")


@stage_main
def main() -> None:
    params = load_params()
    from src.metrics.classifier import train_classifier
    from src.mnist import load_mnist

    train_x, train_y = load_mnist(params.data.mnist_dir, "train")
    test_x, test_y = load_mnist(params.data.mnist_dir, "test")
    start = time.perf_counter()
    model, accuracy = train_classifier(train_x, train_y, test_x, test_y, params.evaluate.classifier,
                                       seed=params.common.seed, verbose=2)
    seconds = time.perf_counter() - start
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".classifier.", suffix=".keras", dir=OUT_DIR)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, OUT_DIR / "classifier.keras")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_json(OUT_DIR / "metrics.json", {"test_accuracy": round(accuracy, 6)})
    print(f"classifier: test accuracy {accuracy:.4f} ({seconds:.0f}s training)")


if __name__ == "__main__":
    main()
