"""The precision policy that train.mixed_precision names, on this machine and on others."""
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
