"""The precision policy that train.mixed_precision names, on this machine and on others; the CPU thread pools."""
import keras
import pytest

from src import runtime
from src.errors import UserError
from conftest import tiny_params


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(runtime.tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else ["/physical_device:CPU:0"])


@pytest.fixture(autouse=True)
def float32_after():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("native, expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_auto_is_bfloat16_only_on_a_cpu_that_has_it(cpu_only, monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "native_bfloat16", lambda: native)
    params = tiny_params(train={"mixed_precision": "auto"})
    assert runtime.configure(params.train, 0) == expected
    assert keras.mixed_precision.global_policy().name == expected


def test_auto_is_float32_on_a_gpu(monkeypatch):
    monkeypatch.setattr(runtime.tf.config, "list_physical_devices", lambda kind=None: ["/physical_device:GPU:0"])
    monkeypatch.setattr(runtime, "native_bfloat16", lambda: True)
    assert runtime.precision_policy("auto") == "float32"


def test_bfloat16_without_native_support_stops_with_one_line(cpu_only, monkeypatch):
    monkeypatch.setattr(runtime, "native_bfloat16", lambda: False)
    with pytest.raises(UserError, match=r"^params key 'train.mixed_precision' is mixed_bfloat16") as err:
        runtime.precision_policy("mixed_bfloat16")
    assert "\n" not in str(err.value)
    assert runtime.precision_policy("none") == "float32"
    assert runtime.precision_policy("mixed_float16") == "mixed_float16"


def test_native_bfloat16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins
    real_open = builtins.open
    for flags, expected in [("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                            ("fpu avx2 avx512f", False)]:
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(tmp_path / "cpuinfo" if p == "/proc/cpuinfo" else p, *a, **k))
        assert runtime.native_bfloat16() is expected


def test_cpu_info_names_the_model_and_the_matrix_flags(monkeypatch, tmp_path):
    import builtins
    real_open = builtins.open
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                                      "flags\t\t: fpu avx2 fma avx512f amx_bf16 amx_tile sse4_2\n"
                                      "processor\t: 1\nmodel name\t: other\n")
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(tmp_path / "cpuinfo" if p == "/proc/cpuinfo" else p, *a, **k))
    info = runtime.cpu_info()
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["matrix_flags"] == ["avx2", "fma", "avx512f", "amx_tile", "amx_bf16"]


def test_cpu_threads_are_set_before_tensorflow_starts(tmp_path):
    """A fresh process (as the train stage is) gets the pools params ask for."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("from src import runtime; import tensorflow as tf; runtime.set_cpu_threads(1, 3); "
            "tf.constant(1.0) + 1; t = tf.config.threading; "
            "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "3"]


def test_cpu_threads_after_start_stop_with_the_key_or_pass_when_unchanged():
    import tensorflow as tf
    tf.constant(1.0) + 1  # TensorFlow has started in this process
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    runtime.set_cpu_threads(0, 0)  # TensorFlow's choice: nothing to change
    if intra:
        runtime.set_cpu_threads(intra, 0)  # what is already in place
    other = 7 if intra != 7 else 5
    with pytest.raises(UserError, match=rf"^params key 'train.intra_op_threads' is {other}, but TensorFlow already"
                       ) as err:
        runtime.set_cpu_threads(other, 0)
    assert "\n" not in str(err.value)


def test_malloc_top_pad_is_set_only_when_asked():
    """``train.malloc_top_pad_mb: 0`` leaves glibc alone (calling mallopt at all would turn off
    its adaptive thresholds); a positive value takes on Linux with glibc."""
    import platform
    assert runtime.retain_freed_memory(0) is False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runtime.retain_freed_memory(64) is True


def test_malloc_top_pad_does_not_shape_the_weights_so_a_resume_survives_it():
    """Where memory comes from changes no computed value: a checkpoint made with one padding
    resumes with another. The thread pools, by contrast, are part of the fingerprint."""
    from src.checkpoint import fingerprint
    manifest = {"shards": [{"sha256": "0" * 64}]}
    base = fingerprint(tiny_params(train={"malloc_top_pad_mb": 0}), manifest)
    assert fingerprint(tiny_params(train={"malloc_top_pad_mb": 256}), manifest) == base
    assert fingerprint(tiny_params(train={"intra_op_threads": 1}), manifest) != base



_TRAIN_IN_A_FRESH_PROCESS = """
import hashlib, json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import blob_images, tiny_params, write_processed
from src.training_loop import TrainPaths, train
root = Path(sys.argv[1])
data = write_processed(root / "processed", blob_images(24, size=8))
params = tiny_params(train={"augment": {"policy": ["color", "translation"]}, "malloc_top_pad_mb": int(sys.argv[2])})
out = root / "out"
train(params, data, TrainPaths(out / "c", out / "s", out / "log", out / "g.keras", out / "e.json"))
snapshots = b"".join(p.read_bytes() for p in sorted((out / "s").glob("*.npz")))
env = json.loads((out / "e.json").read_text())
print(json.dumps({"sha": hashlib.sha256(snapshots).hexdigest(), "pad": env["malloc_top_pad_mb"]}))
"""


def test_malloc_top_pad_gives_the_same_bytes(tmp_path):
    """Two fresh processes (the setting is process-wide), glibc's defaults and a 64 MB pad:
    the same snapshots byte for byte, and environment.json says which one ran."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    runs = {}
    for pad in (0, 64):
        done = subprocess.run([sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS, str(tmp_path / str(pad)), str(pad)],
                              cwd=root, capture_output=True, text=True, check=True)
        runs[pad] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs[0]["sha"] == runs[64]["sha"]
    assert runs[0]["pad"] == 0
    assert runs[64]["pad"] == (64 if runtime.retain_freed_memory(64) else 0)
