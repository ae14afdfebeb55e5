"""``data.labels: clusters``: k-means labels for an unlabelled folder (src/clusters.py), through preprocess."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src.preprocess as prep
from src import clusters
from src.config import DataParams, parse_params
from src.dataset import ShardReader, open_shards, read_manifest
from src.errors import UserError
from test_labels import files_of, folder_params, refused

# Three colour groups of different sizes; within a group the pictures differ by noise and by
# where a small dark square sits, so k-means has to find the colours, not the identical pixels.
GROUPS = {"red": ((220, 30, 30), 9), "blue": ((30, 40, 220), 6), "green": ((30, 200, 40), 4)}


def coloured(rng: np.random.Generator, rgb, size: int = 16) -> np.ndarray:
    image = np.clip(np.array(rgb, np.float32) + rng.normal(0, 12, (size, size, 3)), 0, 255)
    y, x = rng.integers(0, size - 4, 2)
    image[y:y + 4, x:x + 4] = 20
    return image.astype(np.uint8)


def make_groups(root: Path) -> tuple[Path, dict[str, str]]:
    """A flat folder of the three groups' PNGs, names shuffled across groups; file -> group."""
    rng = np.random.default_rng(4)
    folder, group_of = root / "colours", {}
    folder.mkdir(parents=True)
    names = [(group, i) for group, (_, n) in GROUPS.items() for i in range(n)]
    for j in rng.permutation(len(names)):
        group, i = names[j]
        name = f"img{len(group_of):02d}.png"
        Image.fromarray(coloured(rng, GROUPS[group][0])).save(folder / name)
        group_of[name] = group
    return folder, group_of


def test_features_average_pool_to_at_most_16_pixels_a_side():
    images = np.arange(2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
    x = clusters.features(images)
    assert x.shape == (2, 16 * 16 * 3)
    assert x[1, 0] == images[1, :2, :2, 0].mean()  # the top-left 2x2 block, channel 0
    assert clusters.features(np.zeros((1, 28, 28, 1))).shape == (1, 14 * 14)  # MNIST: factor 2
    assert clusters.features(np.zeros((1, 8, 8, 3))).shape == (1, 8 * 8 * 3)  # small images: not pooled
    assert clusters.features(np.zeros((1, 40, 40, 3))).shape == (1, 13 * 13 * 3)  # factor 3, edge row dropped


def test_kmeans_finds_the_colour_groups_largest_first():
    rng = np.random.default_rng(0)
    truth = np.repeat([1, 0, 2], [6, 9, 4])  # blue, red, green: red is the largest group
    rgb = [GROUPS["red"][0], GROUPS["blue"][0], GROUPS["green"][0]]
    images = np.stack([coloured(rng, rgb[t]) for t in truth]).astype(np.float32) / 255
    order = rng.permutation(len(images))
    labels = clusters.cluster_labels(images[order], 3, seed=5)
    assert labels.dtype == np.int32
    assert labels.tolist() == truth[order].tolist()  # 0 = the 9 red, 1 = the 6 blue, 2 = the 4 green
    assert np.array_equal(clusters.cluster_labels(images[order], 3, seed=5), labels)  # same seed, same labels


def test_class_names_sort_in_index_order():
    assert clusters.class_names(3) == ["cluster-0", "cluster-1", "cluster-2"]
    names = clusters.class_names(12)
    assert names[0] == "cluster-00" and names == sorted(names)


def test_preprocess_clusters_label_an_unlabelled_folder_across_shards(tmp_path):
    folder, group_of = make_groups(tmp_path)
    out = tmp_path / "processed"
    manifest = prep.preprocess(folder_params(folder, labels="clusters", clusters=3, shard_size=4), 42, out)
    assert manifest["classes"] == ["cluster-0", "cluster-1", "cluster-2"]
    assert manifest["params"]["data"]["clusters"] == 3 and manifest["params"]["data"]["labels"] == "clusters"
    assert len(manifest["shards"]) == 5 and all("labels_sha256" in entry for entry in manifest["shards"])
    _, shards, labels = open_shards(out, verify=True, with_labels=True)
    got = ShardReader(shards, labels).gather_labels(np.arange(len(group_of)))
    # Each group is exactly one cluster, numbered by size: red 9, blue 6, green 4.
    expected = {"red": 0, "blue": 1, "green": 2}
    assert got.tolist() == [expected[group_of[name]] for name in sorted(group_of)]
    report = (out / "report.json").read_text()
    assert '"cluster-0": 9' in report and '"cluster-2": 4' in report
    # The same labels as clustering the written images in one go, and the same bytes again.
    images = np.concatenate([np.asarray(s) for s in shards])
    assert np.array_equal(got, clusters.cluster_labels(images, 3, 42))
    before = files_of(out)
    prep.preprocess(folder_params(folder, labels="clusters", clusters=3, shard_size=4), 42, out)
    assert files_of(out) == before


def test_unclustered_manifests_do_not_record_clusters(tmp_path):
    folder, _ = make_groups(tmp_path)
    prep.preprocess(folder_params(folder), 0, tmp_path / "none")
    assert "clusters" not in read_manifest(tmp_path / "none")["params"]["data"]


def test_too_few_images_for_the_clusters(tmp_path):
    folder, _ = make_groups(tmp_path)
    message = refused(folder_params(folder, labels="clusters", clusters=20), tmp_path / "processed",
                      "params key 'data.clusters': 20 clusters need at least 20 usable images")
    assert str(folder) in message


def test_too_few_distinct_pictures_for_the_clusters(tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 90 if i % 2 else 200, np.uint8)).save(folder / f"s{i}.png")
    refused(folder_params(folder, labels="clusters", clusters=3), tmp_path / "processed",
            "holds fewer than 3 distinct pictures")


def test_clusters_params_are_checked(tmp_path):
    folder, _ = make_groups(tmp_path)
    base = {"data": {"source": "folder", "folder": str(folder), "image_size": 16, "channels": 3, "labels": "clusters"}}
    with pytest.raises(UserError, match="data.clusters"):
        parse_params({**base, "data": {**base["data"], "clusters": 1}})
    assert parse_params(base).data.clusters == 8
    # MNIST may be clustered too (its digits are the other choice).
    assert parse_params({"data": {"source": "mnist", "labels": "clusters"}}).data.labels == "clusters"
