"""Every preset is a valid params file with the same keys as params.yaml."""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO
from src.config import parse_params

PRESETS = sorted((REPO / "presets").glob("*.yaml"))


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_is_valid_and_complete(preset, tmp_path):
    raw = yaml.safe_load(preset.read_text())
    assert _keys(raw) == _keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["data"]["folder"] = str(tmp_path)  # the folder must exist; its contents do not matter here
    params = parse_params(raw)
    if params.data.source == "folder":
        assert params.data.range == [0, 1] and params.data.channels == 3
        assert params.model.arch == "dcgan" and params.train.augment.policy  # small folders want augmentation
