"""dvc.yaml and the Python source name the same files: every stage path comes from src/paths.py."""
from __future__ import annotations

import yaml

from conftest import REPO
from src import train_log
from src.metrics.ruler import RULERS
from src.paths import FOLDER_INDEX, PROCESSED, Outputs

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
OUT = Outputs()


def _declared(stage: str, *kinds: str) -> set[str]:
    """The paths of a stage's ``outs``/``metrics`` entries (plain strings or one-key dicts)."""
    found = set()
    for kind in kinds:
        for entry in STAGES[stage].get(kind, []):
            found |= set(entry) if isinstance(entry, dict) else {entry}
    return found


def _names(*paths) -> set[str]:
    return {p.as_posix() for p in paths}


def test_preprocess_writes_the_processed_folder():
    assert _declared("preprocess", "outs", "metrics") == _names(PROCESSED)


def test_train_outs_are_the_train_paths():
    paths = OUT.train()
    want = _names(paths.checkpoints, paths.snapshots, paths.generator, paths.environment, paths.tensorboard,
                  paths.log / train_log.PLOTS, paths.log / train_log.SUMMARY)
    assert _declared("train", "outs", "metrics") == want
    assert PROCESSED.as_posix() in STAGES["train"]["deps"]


def test_sample_reads_snapshots_and_writes_samples():
    assert _declared("sample", "outs", "metrics") == _names(OUT.samples)
    assert OUT.snapshots.as_posix() in STAGES["sample"]["deps"]


def test_scan_writes_the_index_and_preprocess_reads_it_not_the_folder():
    assert _declared("scan", "outs", "metrics") == _names(FOLDER_INDEX)
    assert STAGES["scan"].get("always_changed") is True
    deps = STAGES["preprocess"]["deps"]
    assert FOLDER_INDEX.as_posix() in deps
    assert not any("data.folder" in d for d in deps)  # DVC must never hash the user's folder


def test_no_stage_trains_a_ruler():
    assert "classifier" not in STAGES
    assert not any("classifier" in str(out) for stage in STAGES.values() for out in stage.get("outs", []))


def test_evaluate_reads_what_the_other_stages_write():
    assert _declared("evaluate", "outs", "metrics") == _names(OUT.metrics, OUT.eval_curve, OUT.generator_best)
    deps = set(STAGES["evaluate"]["deps"])
    assert _names(PROCESSED, OUT.generator, OUT.snapshots, RULERS,
                  OUT.train_log / train_log.SUMMARY) <= deps
