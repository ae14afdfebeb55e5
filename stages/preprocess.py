"""Stage: build data/processed/ (shards, manifest.json, report.json) from params.yaml's data section.

Run from the repository root: ``python stages/preprocess.py``. Exits 2 with one line on a
user error (bad params, missing source, no usable image, an image without a label, a label
without an image, an empty class); a class below data.min_class_size gets a warning line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# stages/ is not a package: make ``src`` importable when run as a script from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.config import load_params  # noqa: E402
from src.errors import stage_main  # noqa: E402
from src.paths import FOLDER_INDEX, PROCESSED  # noqa: E402
from src.preprocess import preprocess  # noqa: E402


@stage_main
def main() -> None:
    params = load_params()
    # The scan stage's index: exactly the bytes DVC saw change. Run by hand without it, the
    # stage scans the folder itself.
    index = json.loads(FOLDER_INDEX.read_text()) if params.data.source == "folder" and FOLDER_INDEX.is_file() else None
    preprocess(params.data, params.common.seed, PROCESSED, index)


if __name__ == "__main__":
    main()
