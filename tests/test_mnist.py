"""Tests for src/mnist.py: IDX parsing, checksum verification and the npz fallback."""
from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest

from conftest import write_mnist, write_mnist_sums
from src.errors import UserError
from src.mnist import SPLITS, load_mnist, read_idx, write_idx


def make_mnist(folder, n_train=12, n_test=5, seed=0):
    """A tiny MNIST-format folder (four gzipped IDX files + SHA256SUMS); returns the arrays."""
    rng = np.random.default_rng(seed)
    data = {split: (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8))
            for split, n in (("train", n_train), ("test", n_test))}
    write_mnist(folder, data["train"], data["test"])
    return data


def test_round_trip_both_splits(tmp_path):
    data = make_mnist(tmp_path)
    for split in ("train", "test"):
        images, labels = load_mnist(str(tmp_path), split)
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        np.testing.assert_array_equal(images, data[split][0])
        np.testing.assert_array_equal(labels, data[split][1])


def test_write_idx_header_and_determinism(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b.gz", arr)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert int.from_bytes(raw[4:8], "big") == 2
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_sha_mismatch_names_file(tmp_path):
    make_mnist(tmp_path)
    name = SPLITS["train"][0]
    write_idx(tmp_path / name, np.zeros((12, 28, 28), np.uint8))  # replaced after SHA256SUMS
    with pytest.raises(UserError, match=name):
        load_mnist(str(tmp_path), "train")
    load_mnist(str(tmp_path), "test")  # the other split is untouched


def test_bad_header_names_file(tmp_path):
    make_mnist(tmp_path)
    name = SPLITS["train"][1]
    with gzip.open(tmp_path / name, "wb") as handle:
        handle.write(b"\x12\x34\x56\x78garbage")
    write_mnist_sums(tmp_path)  # checksum matches: the header check must catch it
    with pytest.raises(UserError, match=f"{name}.*header"):
        load_mnist(str(tmp_path), "train")


def test_dims_disagree_with_data(tmp_path):
    make_mnist(tmp_path)
    name = SPLITS["test"][0]
    raw = gzip.decompress((tmp_path / name).read_bytes())
    with gzip.open(tmp_path / name, "wb") as handle:
        handle.write(raw[:-10])  # truncated body
    write_mnist_sums(tmp_path)
    with pytest.raises(UserError, match=name):
        load_mnist(str(tmp_path), "test")


def test_missing_sums_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "SHA256SUMS").unlink()
    with pytest.raises(UserError, match="SHA256SUMS"):
        load_mnist(str(tmp_path), "train")


def test_npz_fallback(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    y = np.arange(4, dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    images, labels = load_mnist(str(tmp_path), "train")
    np.testing.assert_array_equal(images, x)
    images, labels = load_mnist(str(tmp_path), "test")
    assert images.shape == (2, 28, 28) and labels.tolist() == [0, 1]


def test_nothing_found_is_one_line_user_error(tmp_path, monkeypatch):
    # Stand in for keras so the test never imports TensorFlow or touches the network.
    import types

    def fail():
        raise OSError("no network")

    fake = types.ModuleType("keras.datasets.mnist")
    fake.load_data = fail
    datasets = types.ModuleType("keras.datasets")
    datasets.mnist = fake
    keras = types.ModuleType("keras")
    keras.datasets = datasets
    monkeypatch.setitem(sys.modules, "keras", keras)
    monkeypatch.setitem(sys.modules, "keras.datasets", datasets)
    monkeypatch.setitem(sys.modules, "keras.datasets.mnist", fake)
    with pytest.raises(UserError) as info:
        load_mnist(str(tmp_path), "train")
    message = str(info.value)
    assert "\n" not in message and "mnist.npz" in message and "train-images-idx3-ubyte.gz" in message


def test_bad_split(tmp_path):
    with pytest.raises(UserError, match="split"):
        load_mnist(str(tmp_path), "validation")
