"""The stages' logs on a CPU machine: no CUDA errors, no TensorFlow start-up noise, real warnings kept."""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import warnings

import pytest

from conftest import REPO
from src import quiet

NOISE = re.compile(r"cuinit|cuda|E0000|I0000|W0000|absl::InitializeLog|oneDNN", re.IGNORECASE)


def _stage(project_dir, stage: str) -> subprocess.CompletedProcess:
    """Run a stage as `dvc repro` does: a plain environment, nothing set to quieten TensorFlow."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "TF_ENABLE_ONEDNN_OPTS")}
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=project_dir, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_cpu_build_of_tensorflow_is_installed():
    """`make` installs tensorflow-cpu: it loads no CUDA library, so no cuInit error can happen."""
    installed = {d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()}
    if os.path.exists(os.path.join(sys.prefix, ".gpu")):
        pytest.skip("this environment was switched to the CUDA build with `make gpu`")
    assert "tensorflow-cpu" in installed and "tensorflow" not in installed, (
        "the environment holds the CUDA build of TensorFlow; rebuild it with `make` (requirements.txt)")


def test_train_and_sample_stages_print_no_tensorflow_noise(project):
    root = project(model={"arch": "mlp"})
    for stage in ("train", "sample"):
        result = _stage(root, stage)
        assert result.returncode == 0, result.stderr[-3000:]
        noise = [line for line in result.stderr.splitlines() if NOISE.search(line)]
        assert noise == [], f"{stage} stage printed TensorFlow noise:\n" + "\n".join(noise)
    assert "train: done at epoch 2" in _stage(root, "train").stdout


def test_filter_drops_only_start_up_lines(capfd):
    """What TensorFlow prints while it loads is dropped; a warning or an error is kept, in order."""
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1795507789.459165    5200 port.cc:153] oneDNN custom operations are on.\n",
        "I0000 00:00:1795507789.459510    5200 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
        "W0000 00:00:1795507789.500000    5200 some_op.cc:12] a C++ warning that matters\n",
        "E0000 00:00:1795507789.600000    5200 other.cc:34] a C++ error that matters\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
        "appropriate compiler flags.\n",
        "E0000 00:00:1795510614.776481   21956 node_def_util.cc:682] NodeDef mentions attribute "
        "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; signature=...>\n",
        "E0000 00:00:1795510620.123456   21956 meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT: "
        "Mutation::Apply error: fanout 'gradient_tape/x' exist for missing node 'y'.\n",
        "E0000 00:00:1795510620.223456   21956 meta_optimizer.cc:967] layout failed: a Grappler error that matters\n",
    ]
    with quiet.filtered_stderr():
        for line in lines:
            os.write(2, line.encode())
        # As Python's warnings module prints one (pytest would otherwise collect a warnings.warn).
        sys.stderr.write(warnings.formatwarning("a Python warning that matters", UserWarning, __file__, 1))
    err = capfd.readouterr().err
    assert "a C++ warning that matters" in err and "a C++ error that matters" in err
    assert "a Python warning that matters" in err
    assert err.index("a C++ warning") < err.index("a C++ error")
    assert "absl::InitializeLog" not in err and "oneDNN" not in err and "cuda" not in err
    assert "To enable the following instructions" not in err and "use_unbounded_threadpool" not in err
    assert "remapper failed" not in err and "a Grappler error that matters" in err


def test_first_compiled_train_call_hides_only_grappler_remapper_line(capfd):
    """The compiled step's first call (tracing, Grappler) is filtered; later calls are not."""
    import tensorflow as tf

    from src.gan import GAN

    def compiled(*args):
        os.write(2, b"E0000 00:00:1795510620.1   21956 meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT\n")
        os.write(2, b"E0000 00:00:1795510620.2   21956 other.cc:1] a C++ error that matters\n")
        return tf.zeros(4), tf.constant(-1)

    gan = GAN.__new__(GAN)  # only the compiled-call bookkeeping is exercised
    gan._chunk_fn, gan._traced, gan.replicas = compiled, set(), 1
    gan.train_chunk(None, 0)
    err = capfd.readouterr().err
    assert "remapper failed" not in err and "a C++ error that matters" in err
    gan.train_chunk(None, 1)
    assert "remapper failed" in capfd.readouterr().err  # traced already: nothing is captured


def test_classifier_fit_prints_no_tensorflow_noise(tmp_path):
    """Keras' fit on arrays makes TensorFlow 2.21 print a NodeDef error line; the classifier hides it."""
    script = ("import sys; sys.path.insert(0, 'tests')\n"
              "from conftest import draw_digits\n"
              "from src.config import ClassifierParams\n"
              "from src.metrics.classifier import train_classifier\n"
              "(x, y), (xt, yt) = draw_digits(1000, seed=0), draw_digits(100, seed=1)\n"
              "model, accuracy = train_classifier(x, y, xt, yt, ClassifierParams(epochs=1, batch_size=128), seed=0)\n"
              "print('accuracy', accuracy)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "accuracy" in result.stdout, result.stderr[-3000:]
    noise = [line for line in result.stderr.splitlines() if NOISE.search(line) or "NodeDef" in line]
    assert noise == [], "\n".join(noise)


def test_hook_wraps_only_the_tensorflow_import():
    """`import src` installs the hook; it steps aside once TensorFlow is imported."""
    script = ("import sys, src\n"
              "from src import quiet\n"
              "assert quiet._FINDER in sys.meta_path\n"
              "import json\n"
              "assert quiet._FINDER in sys.meta_path\n"
              "import tensorflow as tf\n"
              "assert quiet._FINDER not in sys.meta_path\n"
              "assert tf.constant(2).numpy() == 2\n"
              "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert not [line for line in result.stderr.splitlines() if NOISE.search(line)], result.stderr
