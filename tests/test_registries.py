"""One registry per extension point; the names params.yaml accepts are exactly its keys.

``src/config.py`` keeps the accepted names without importing the registries (every stage
validates params before TensorFlow loads, and the scan and preprocess stages must not
depend on the losses or networks); these tests keep the two in step.
"""
from __future__ import annotations

from src import augment, config, features, losses, networks
from src.metrics import registry as metric_registry


def test_loss_names_are_the_loss_registry():
    assert set(config.LOSS_NAMES) == set(losses.LOSSES)


def test_arch_names_are_the_network_registry():
    assert set(config.ARCHS) == set(networks.NETWORKS)


def test_feature_backbones_are_the_backbone_registry():
    assert set(config.FEATURE_BACKBONES) == set(features.BACKBONES)


def test_augment_policies_are_the_augmentation_registry():
    assert set(config.AUGMENT_POLICIES) == set(augment.AUGMENT_OPS)


def test_every_metric_names_its_data_kinds_and_keys():
    assert metric_registry.METRICS
    for name, metric in metric_registry.METRICS.items():
        assert metric.name == name and metric.data and set(metric.data) <= {"mnist", "folder"}
    for kind in ("mnist", "folder"):
        assert sum(1 for m in metric_registry.METRICS.values() if kind in m.curve_data) == 1  # one curve per kind
