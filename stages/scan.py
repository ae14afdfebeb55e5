"""Stage: the content index of the image folder (data/scan.json), see src/folder_index.py.

Runs on every `dvc repro` (``always_changed`` in dvc.yaml) and takes about a second per
10,000 small images; preprocess, which depends on the index, reruns only when it changed.
Run from the repository root: ``python stages/scan.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.atomic import write_json  # noqa: E402
from src.config import load_params  # noqa: E402
from src.errors import stage_main  # noqa: E402
from src.folder_index import build_index, summary  # noqa: E402
from src.paths import FOLDER_INDEX  # noqa: E402


@stage_main
def main() -> None:
    params = load_params()
    index = build_index(params.data.source, params.data.folder, params.data.labels)
    write_json(FOLDER_INDEX, index)
    print(summary(index))


if __name__ == "__main__":
    main()
