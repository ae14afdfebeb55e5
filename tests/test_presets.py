"""Presets are overlays: valid on params.yaml, switch and back byte for byte, unrelated edits kept."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from src import presets
from src.config import parse_params
from src.errors import UserError

NAMES = presets.names()
PARAMS_TEXT = (REPO / "params.yaml").read_text()


def _apply(text: str, name: str) -> str:
    shown, preset_text = presets.read(name)
    return presets.apply(text, preset_text, shown)


def _default() -> str:
    """params.yaml with the default preset applied: the shipped file (whichever preset is active here)."""
    return _apply(PARAMS_TEXT, presets.DEFAULT)


def _keys(name: str) -> set[tuple[str, ...]]:
    shown, preset_text = presets.read(name)
    return set(presets.overlay(preset_text, shown))


def test_the_eight_presets_exist():
    assert NAMES == ["folder-128", "folder-bf16", "folder-cond", "folder-fast", "mnist-cond", "mnist-dcgan", "mnist-default",
                     "mnist-original"]


@pytest.mark.parametrize("name", NAMES)
def test_preset_is_valid_on_params_yaml(name, tmp_path):
    raw = yaml.safe_load(_apply(_default(), name))
    raw["data"]["folder"] = str(tmp_path)  # the folder must exist; its contents do not matter here
    params = parse_params(raw)
    if params.data.source == "folder":
        assert params.data.range == [0, 1] and params.data.channels == 3
        assert params.model.arch == "dcgan" and params.train.augment.policy  # small folders want augmentation


@pytest.mark.parametrize("name", NAMES)
def test_switch_and_back_gives_params_yaml_byte_for_byte(name):
    default = _default()
    switched = _apply(default, name)
    assert _apply(switched, presets.DEFAULT) == default
    assert [line for line in switched.splitlines() if line.lstrip().startswith("#")] == \
        [line for line in default.splitlines() if line.lstrip().startswith("#")]  # every comment line kept


def test_the_default_preset_sets_back_exactly_the_keys_the_others_set():
    assert _keys(presets.DEFAULT) == set().union(*(_keys(n) for n in NAMES if n != presets.DEFAULT))


def test_params_yaml_as_shipped_is_the_default_preset():
    """The repository's params.yaml is mnist-default (after `make preset PRESET=x` this fails until you switch back)."""
    assert _default() == PARAMS_TEXT


def test_a_key_the_preset_does_not_set_keeps_the_users_value_and_comment():
    edited = _default().replace("  seed: 42   ", "  seed: 7    ").replace("  count: 32 ", "  count: 64 ")
    switched = _apply(edited, "folder-fast")
    raw = yaml.safe_load(switched)
    assert raw["common"]["seed"] == 7 and raw["sample"]["count"] == 64 and raw["data"]["source"] == "folder"
    assert [line.index("# seeds training") for line in switched.splitlines() if line.startswith("  seed: 7 ")] == [30]
    back = yaml.safe_load(_apply(switched, presets.DEFAULT))
    assert back["common"]["seed"] == 7 and back["sample"]["count"] == 64 and back["data"]["source"] == "mnist"


def test_a_longer_value_pushes_its_comment_and_a_shorter_one_brings_it_back():
    text = f"model:\n{'  latent_dim: 100':30}# noise\n  dcgan:\n{'    g_filters: [64, 32]':30}# filters\n"
    longer = presets.apply(text, "model:\n  dcgan:\n    g_filters: [256, 128, 64, 32]\n", "p")
    assert longer.endswith("  dcgan:\n    g_filters: [256, 128, 64, 32] # filters\n")
    assert presets.apply(longer, "model:\n  dcgan:\n    g_filters: [64, 32]\n", "p") == text


def test_preset_params_do_not_depend_on_the_active_preset():
    folder = presets.preset_params("folder-fast")
    assert folder == yaml.safe_load(_apply(_default(), "folder-fast"))
    assert folder["evaluate"]["inception_weights"] == "off" and folder["train"]["loss"] == "hinge"


@pytest.mark.parametrize("preset_text,message", [
    ("train:\n  epochz: 3\n", "p.yaml: unknown params key 'train.epochz'"),
    ("trian:\n  epochs: 3\n", "p.yaml: unknown params key 'trian.epochs'"),
    ("train:\n  g_optimizer: 0.1\n", "p.yaml: params key 'train.g_optimizer' is a section"),
    ("train:\n  augment:\n    policy:\n      - color\n", "p.yaml: write one 'key: value' per line"),
    ("train: [1\n", "p.yaml: not valid YAML"),
])
def test_a_bad_preset_fails_with_one_line_naming_the_key(preset_text, message):
    with pytest.raises(UserError) as info:
        presets.apply(PARAMS_TEXT, preset_text, "p.yaml")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_key_missing_from_params_yaml_is_named():
    text = PARAMS_TEXT.replace("  d_steps: 1 ", "  # d_steps: 1 ")
    with pytest.raises(UserError, match=r"params.yaml: has no line for params key 'train.d_steps'"):
        presets.apply(text, "train:\n  d_steps: 2\n", "p.yaml")


def test_a_hash_inside_quotes_is_not_a_comment():
    text = 'data:\n  folder: "a # b"       # where\n  workers: 0\n'
    assert presets.apply(text, "data:\n  workers: 2\n", "p") == 'data:\n  folder: "a # b"       # where\n  workers: 2\n'


def test_make_style_command_line_switches_and_reports(tmp_path):
    (tmp_path / "params.yaml").write_text(_default())
    run = lambda *args: subprocess.run([sys.executable, "-m", "src.presets", *args, "--params",  # noqa: E731
                                        str(tmp_path / "params.yaml")], capture_output=True, text=True, cwd=REPO)
    result = run("mnist-dcgan")
    assert result.returncode == 0, result.stderr
    assert "7 of the 7 keys presets/mnist-dcgan.yaml sets changed" in result.stdout
    result = run("folder-fast")  # straight from one preset to another: the first one's batch_size stays
    assert result.returncode == 0 and "note: train.batch_size (set by other presets" in result.stdout
    assert run("mnist-default").returncode == 0
    assert (tmp_path / "params.yaml").read_text() == _default()
    result = run("nope")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: no preset 'nope' (presets/: folder-128")


def test_make_preset_builds_the_environment_unless_every_module_it_needs_is_there():
    """`make preset` on a fresh clone runs before `make repro`: when the Python on PATH lacks a
    module that `python -m src.presets` imports (ruamel.yaml, on a system Python that has NumPy
    and PyYAML), it must build .venv first instead of failing with a traceback."""
    import re
    rule = next(line for line in (REPO / "Makefile").read_text().splitlines()
                if "$(VENV)/.installed" in line and 'python -c "import' in line)
    checked = {m.strip().split(".")[0] for m in re.search(r'import ([^"]+)"', rule).group(1).split(",")}
    probe = ("import sys, src.presets; print(' '.join(sorted({m.split('.')[0] for m in sys.modules} "
             "- set(sys.stdlib_module_names))))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    third_party = {m for m in loaded if not m.startswith("_") and m not in ("src", "cython_runtime")}
    assert "ruamel" in third_party and third_party <= checked, (third_party, checked)
