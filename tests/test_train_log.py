"""The DVCLive train log: every column logged, exact cut-back on resume, the TensorBoard mirror."""
from __future__ import annotations

import json

import numpy as np

from src.train_log import TrainLog, image_files, read_rows


def _row(epoch: int) -> dict:
    return {"global_step": 10 * epoch, "d_loss": 1.0 / epoch, "g_loss": 0.5 + epoch, "augment_p": 0.01 * epoch}


def _grid(epoch: int) -> np.ndarray:
    return np.full((6, 10, 1), 20 * epoch, np.uint8)


def _run(folder, epochs, start=0, tensorboard=None):
    log = TrainLog(folder, start, tensorboard)
    for epoch in epochs:
        log.epoch(epoch, _row(epoch))
        if epoch % 2 == 0:
            log.image(epoch, _grid(epoch))
    log.close()


def test_every_column_is_logged_per_epoch(tmp_path):
    folder = tmp_path / "train_log"
    _run(folder, range(1, 5))
    rows = read_rows(folder)
    assert list(rows) == [1, 2, 3, 4]
    assert rows[3] == _row(3)  # a column the loop adds (augment_p) is there without a change in the log
    assert sorted(p.name for p in (folder / "plots" / "metrics").iterdir()) == [
        "augment_p.tsv", "d_loss.tsv", "g_loss.tsv", "global_step.tsv"]
    assert (folder / "plots" / "metrics" / "d_loss.tsv").read_text().splitlines()[:2] == ["step\td_loss", "1\t1.0"]
    assert json.loads((folder / "metrics.json").read_text()) == {**_row(4), "step": 4}
    assert [e for e, _ in image_files(folder)] == [2, 4]


def test_resume_cuts_back_to_the_checkpoint_and_logs_each_epoch_once(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(straight, range(1, 7))
    _run(resumed, range(1, 6))          # killed after epoch 5 was logged ...
    with open(resumed / "plots" / "metrics" / "d_loss.tsv", "a") as handle:
        handle.write("6\t0.1")          # ... in the middle of epoch 6's row
    _run(resumed, range(4, 7), start=3)  # the checkpoint was at epoch 3
    assert read_rows(resumed) == read_rows(straight)
    for name in ("d_loss", "global_step", "augment_p"):
        path = f"plots/metrics/{name}.tsv"
        assert (resumed / path).read_bytes() == (straight / path).read_bytes(), name
    assert [p.read_bytes() for _, p in image_files(resumed)] == [p.read_bytes() for _, p in image_files(straight)]
    assert (resumed / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()


def test_fresh_start_wipes_the_old_log(tmp_path):
    folder = tmp_path / "train_log"
    _run(folder, range(1, 5))
    _run(folder, range(1, 3))
    assert list(read_rows(folder)) == [1, 2] and [e for e, _ in image_files(folder)] == [2]


def read_event_scalars(folder) -> dict[str, dict[int, float]]:
    """Scalars and image tags from every TensorBoard event file in ``folder`` (no tensorboard package)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    scalars.setdefault(value.tag, {})[event.step] = float(tensor)
                else:  # images: [width, height, PNG bytes]
                    assert plugin == "images" and tensor[2].startswith(b"\x89PNG")
                    scalars.setdefault(value.tag + ":image", {})[event.step] = int(tensor[0])
    return scalars


def test_tensorboard_mirror_holds_the_scalars_and_grids_and_is_rebuilt_on_resume(tmp_path):
    folder, board = tmp_path / "train_log", tmp_path / "tensorboard"
    _run(folder, range(1, 6), tensorboard=board)
    _run(folder, range(4, 7), start=3, tensorboard=board)  # resumed at epoch 3 after epoch 5 was logged
    assert list(board.glob("events.out.tfevents.*"))
    scalars = read_event_scalars(board)
    assert scalars["d_loss"] == {e: np.float32(1.0 / e) for e in range(1, 7)}  # each epoch once
    assert set(scalars["augment_p"]) == {1, 2, 3, 4, 5, 6}
    assert set(scalars["grid:image"]) == {2, 4, 6}
