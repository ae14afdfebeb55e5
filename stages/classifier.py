"""Stage: the feature network of the metrics, with its own seed (never ``common.seed``).

MNIST (``data.source: mnist``): trains the digit CNN whose features give FID/KID and
whose softmax gives the classifier score; about 2 minutes on 2 CPU cores. Folder data:
builds the fixed random convolutional network of the folder metrics from
``evaluate.classifier.seed`` (no training, under a second; MNIST is not read).

Reads params data.source, data.mnist_dir and evaluate.classifier only, so a seed sweep or
any model/train change leaves this stage and its bytes alone. Writes
outputs/classifier/classifier.keras (fixed bytes, see src/keras_file.py) and
outputs/classifier/metrics.json. Run from the repository root: ``python stages/classifier.py``.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.atomic import write_json  # noqa: E402
from src.config import load_params  # noqa: E402
from src.errors import stage_main  # noqa: E402
from src.paths import Outputs  # noqa: E402


@stage_main
def main() -> None:
    params = load_params()
    from src.keras_file import save_model

    cp = params.evaluate.classifier
    start = time.perf_counter()
    if params.data.source == "mnist":
        from src.metrics.classifier import train_classifier
        from src.mnist import load_mnist

        train_x, train_y = load_mnist(params.data.mnist_dir, "train")
        test_x, test_y = load_mnist(params.data.mnist_dir, "test")
        model, accuracy = train_classifier(train_x, train_y, test_x, test_y, cp, seed=cp.seed, verbose=2)
        summary = {"feature_net": "mnist-cnn", "test_accuracy": round(accuracy, 6)}
        said = f"test accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f}s training)"
    else:
        from src.metrics.randnet import build_random_net

        model = build_random_net(cp.seed)
        summary = {"feature_net": "random-conv"}
        said = f"data.source is folder: the random conv net of seed {cp.seed}, no training"
    out = Outputs()
    save_model(model, out.classifier)
    write_json(out.classifier_metrics, summary)
    print(f"classifier: {said}")


if __name__ == "__main__":
    main()
