"""``params.yaml``: the schema, its validation, and typed, frozen views of each section.

Every stage loads the whole file through :func:`load_params` before doing any work. An
unknown key, a wrong type or an out-of-range value raises :class:`UserError` with one
line naming the key and what is allowed (the stage then exits with status 2).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from src.errors import UserError

PARAMS_FILE = "params.yaml"


def _spec(default: Any = dataclasses.MISSING, *, check: Callable[[Any], str | None] | None = None,
          choices: tuple | None = None, factory: Callable[[], Any] | None = None):
    """A schema field: its default, and either allowed ``choices`` or a ``check``.

    ``check`` returns ``None`` when the value is fine, else what is allowed.
    """
    meta = {"check": check, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"a number >= {low}"


def between(low: float, high: float, *, open_high: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = low <= v < high if open_high else low <= v <= high
        return None if ok else f"a number in [{low}, {high}{')' if open_high else ']'}"
    return check


def _positive_list(v: list) -> str | None:
    return None if v and all(x >= 1 for x in v) else "a non-empty list of integers >= 1"


def _range_check(v: list) -> str | None:
    return None if v in ([0, 1], [-1, 1]) else "[0, 1] or [-1, 1]"


def _rgb_check(v: list) -> str | None:
    return None if len(v) == 3 and all(0 <= x <= 255 for x in v) else "three integers in [0, 255]"


LABEL_KEYWORDS = ("none", "mnist", "subfolders", "clusters")  # data.labels: these, or a label file (src/labels.py)
UNREAD_LABELS = ("none", "clusters")  # data.labels that read no labels from the source: none, or made by preprocess


def _labels_check(v: str) -> str | None:
    is_file = v.lower().endswith(".csv") and not os.path.isabs(v) and ".." not in Path(v).parts
    return None if v in LABEL_KEYWORDS or is_file else (
        f"{', '.join(LABEL_KEYWORDS)} or a .csv label file inside data.folder (e.g. labels.csv)")


# ---------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class CommonParams:
    seed: int = _spec(42, check=at_least(0))


# The names of the registries: src/losses.py LOSSES, src/networks.py NETWORKS and src/augment.py
# AUGMENT_OPS (tests/test_registries.py checks each list equals its registry's keys). This module
# imports none of them: every stage checks all of params.yaml before TensorFlow loads, and importing
# the implementations would make every stage (preprocess and classifier too) rerun when a loss,
# a network or an augmentation op changes.
LOSS_NAMES = ("nsgan", "hinge", "wgan-gp")
ARCHS = ("dcgan", "mlp")
AUGMENT_POLICIES = ("color", "translation", "cutout")
FEATURE_BACKBONES = ("mobilenet_v2", "mobilenet_v2_035", "efficientnet_b0")  # src/features.py BACKBONES


@dataclass(frozen=True)
class DataParams:
    source: str = _spec("mnist", choices=("mnist", "folder"))
    mnist_dir: str = "data/raw/mnist"
    folder: str = "data/raw/images"
    image_size: int = _spec(28, check=between(8, 1024))
    channels: int = _spec(1, choices=(1, 3))
    range: list[int] = _spec(check=_range_check, factory=lambda: [-1, 1])
    resize: str = _spec("center_crop", choices=("center_crop", "pad", "stretch"))
    background: list[int] = _spec(check=_rgb_check, factory=lambda: [255, 255, 255])
    shard_size: int = _spec(10000, check=at_least(1))
    workers: int = _spec(0, check=at_least(0))
    labels: str = _spec("none", check=_labels_check)
    clusters: int = _spec(8, check=between(2, 1000))
    min_class_size: int = _spec(10, check=at_least(0))

    @property
    def value_range(self) -> tuple[float, float]:
        return float(self.range[0]), float(self.range[1])


@dataclass(frozen=True)
class MLPParams:
    g_units: list[int] = _spec(check=_positive_list, factory=lambda: [256, 512, 1024])
    d_units: list[int] = _spec(check=_positive_list, factory=lambda: [512, 256])
    leaky_slope: float = _spec(0.2, check=between(0.0, 1.0))
    bn_momentum: float = _spec(0.8, check=between(0.0, 1.0, open_high=True))


@dataclass(frozen=True)
class DCGANParams:
    g_filters: list[int] = _spec(check=_positive_list, factory=lambda: [128, 64])
    d_filters: list[int] = _spec(check=_positive_list, factory=lambda: [64, 128])
    kernel_size: int = _spec(4, check=between(1, 9))
    g_activation: str = _spec("relu", choices=("relu", "leaky_relu"))
    leaky_slope: float = _spec(0.2, check=between(0.0, 1.0))
    bn_momentum: float = _spec(0.9, check=between(0.0, 1.0, open_high=True))
    dropout: float = _spec(0.3, check=between(0.0, 1.0, open_high=True))
    upsample: str = _spec("transpose", choices=("transpose", "nearest", "bilinear"))
    upsample_image: str = _spec("same", choices=("same", "transpose", "nearest", "bilinear"))
    spectral_norm: bool = False
    minibatch_std: bool = False
    d_residual: bool = False
    g_block_convs: int = _spec(0, check=between(0, 4))
    attention: int = _spec(0, check=at_least(0))


def _weights_file_check(v: str) -> str | None:
    """model.features.weights: "" or a .h5 file inside data/weights/ (the train stage's dep, so
    dvc.yaml lists every file training reads)."""
    path = Path(v)
    inside = not path.is_absolute() and ".." not in path.parts and path.parts[:2] == ("data", "weights")
    return None if v == "" or (inside and len(path.parts) > 2 and v.endswith(".h5")) else (
        '"" (the Keras download) or a .h5 file under data/weights/ (a relative path: the train stage\'s dependency)')


@dataclass(frozen=True)
class FeaturesParams:
    backbone: str = _spec("none", choices=("none",) + FEATURE_BACKBONES)
    weights: str = _spec("", check=_weights_file_check)  # "" = the Keras download; else a local no-top file
    input_size: int = _spec(64, check=between(32, 1024))
    channels: int = _spec(64, check=at_least(1))
    spectral_norm: bool = True


@dataclass(frozen=True)
class ModelParams:
    arch: str = _spec("dcgan", choices=ARCHS)
    latent_dim: int = _spec(100, check=at_least(1))
    class_embedding: int = _spec(50, check=at_least(1))
    mlp: MLPParams = field(default_factory=MLPParams)
    dcgan: DCGANParams = field(default_factory=DCGANParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)


@dataclass(frozen=True)
class AdamParams:
    learning_rate: float = _spec(2e-4, check=between(1e-8, 1.0))
    beta_1: float = _spec(0.5, check=between(0.0, 1.0, open_high=True))
    beta_2: float = _spec(0.999, check=between(0.0, 1.0, open_high=True))


@dataclass(frozen=True)
class EMAParams:
    enabled: bool = True
    decay: float = _spec(0.999, check=between(0.0, 1.0, open_high=True))




def _policy_check(v: list) -> str | None:
    ok = all(x in AUGMENT_POLICIES for x in v) and len(set(v)) == len(v)
    return None if ok else f"a list of distinct names from {', '.join(AUGMENT_POLICIES)} (may be empty)"


@dataclass(frozen=True)
class AugmentParams:
    policy: list[str] = _spec(check=_policy_check, factory=list)
    probability: float = _spec(1.0, check=between(0.0, 1.0))
    adaptive: bool = False
    target: float = _spec(0.6, check=between(-1.0, 1.0))
    speed_kimg: float = _spec(100.0, check=at_least(0.001))
    translation_ratio: float = _spec(0.125, check=between(0.0, 0.5))
    cutout_ratio: float = _spec(0.5, check=between(0.0, 1.0))


@dataclass(frozen=True)
class TrainParams:
    epochs: int = _spec(100, check=at_least(1))
    steps_per_epoch: int = _spec(0, check=at_least(0))
    batch_size: int = _spec(32, check=at_least(1))
    loss: str = _spec("nsgan", choices=LOSS_NAMES)
    gp_weight: float = _spec(10.0, check=at_least(0.0))
    label_smoothing: float = _spec(0.0, check=between(0.0, 0.5))
    r1_gamma: float = _spec(0.0, check=at_least(0.0))
    r1_every: int = _spec(16, check=at_least(1))
    reconstruction: float = _spec(0.0, check=at_least(0.0))
    lecam: float = _spec(0.0, check=at_least(0.0))
    lecam_decay: float = _spec(0.99, check=between(0.0, 0.9999))
    d_steps: int = _spec(1, check=at_least(1))
    mirror: bool = False
    lr_rampdown: float = _spec(0.0, check=between(0.0, 1.0))
    g_optimizer: AdamParams = field(default_factory=AdamParams)
    d_optimizer: AdamParams = field(default_factory=AdamParams)
    ema: EMAParams = field(default_factory=EMAParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    checkpoint_every: int = _spec(10, check=at_least(1))
    keep_checkpoints: int = _spec(3, check=at_least(1))
    steps_per_call: int = _spec(1, check=at_least(1))
    jit_compile: bool = False
    mixed_precision: str = _spec("none", choices=("none", "auto", "mixed_float16", "mixed_bfloat16"))
    strategy: str = _spec("auto", choices=("auto", "default", "one_device", "mirrored", "multi_worker"))
    worker_timeout: float = _spec(300.0, check=at_least(0.0))
    deterministic: bool = True
    tensorboard: bool = False
    intra_op_threads: int = _spec(0, check=at_least(0))
    inter_op_threads: int = _spec(0, check=at_least(0))
    malloc_top_pad_mb: int = _spec(64, check=at_least(0))


@dataclass(frozen=True)
class SampleParams:
    every_epochs: int = _spec(100, check=at_least(1))
    count: int = _spec(32, check=between(1, 4096))
    grid_columns: int = _spec(8, check=at_least(1))
    progress_columns: int = _spec(8, check=at_least(1))
    display_pixels: int = _spec(112, check=between(0, 4096))


@dataclass(frozen=True)
class ClassifierParams:
    epochs: int = _spec(3, check=at_least(1))
    batch_size: int = _spec(128, check=at_least(1))
    learning_rate: float = _spec(3e-3, check=between(1e-8, 1.0))
    seed: int = _spec(0, check=at_least(0))  # the feature network's own seed: never common.seed


@dataclass(frozen=True)
class EvaluateParams:
    num_samples: int = _spec(10000, check=at_least(2))
    batch_size: int = _spec(500, check=at_least(1))
    kid_subsets: int = _spec(100, check=at_least(1))
    kid_subset_size: int = _spec(1000, check=at_least(2))
    coverage_threshold: float = _spec(0.02, check=between(0.0, 1.0))
    swd_patches_per_image: int = _spec(64, check=at_least(1))
    swd_projections: int = _spec(512, check=at_least(1))
    inception_weights: str = ""
    curve_samples: int = _spec(2000, check=at_least(2))
    seed: int = _spec(0, check=at_least(0))  # every random draw of evaluate: never common.seed
    bootstrap: int = _spec(100, check=at_least(2))
    draws: int = _spec(1, check=at_least(1))  # splits x latents averaged (1 = the one draw of evaluate.seed)
    score_best: bool = True     # the best snapshot scored on every metric too (metrics.json "best")
    classifier: ClassifierParams = field(default_factory=ClassifierParams)


@dataclass(frozen=True)
class Params:
    common: CommonParams = field(default_factory=CommonParams)
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    sample: SampleParams = field(default_factory=SampleParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


# ---------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}s"
    return {int: "integer", float: "number", bool: "boolean (true/false)", str: "string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a one-line UserError naming ``key``."""
    wrong = UserError(f"params key '{key}' must be {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise wrong
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise wrong
        try:
            return [_coerce(key, v, inner) for v in value]
        except UserError:
            raise wrong from None
    raise TypeError(f"unsupported schema type {tp}")  # a bug in the schema, not user input


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"params key '{where}' must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise UserError(f"unknown params key '{prefix + '.' if prefix else ''}{key}' (allowed here: {allowed})")
    values = {}
    for name, fld in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw.get(name), key)
            continue
        if name not in raw:
            continue  # the schema default applies
        value = _coerce(key, raw[name], tp)
        choices = fld.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"params key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        check = fld.metadata.get("check")
        if check is not None:
            allowed = check(value)
            if allowed is not None:
                raise UserError(f"params key '{key}' must be {allowed}; got {value!r}")
        values[name] = value
    return cls(**values)


def dcgan_sides(image_size: int, dcgan: DCGANParams) -> tuple[list[int], list[int]]:
    """Feature-map sides after each inner generator block (the last upsampling makes the image)
    and after each discriminator block (stride 2, padding same): where attention can go."""
    start = image_size // 2 ** len(dcgan.g_filters)
    generator = [start * 2 ** k for k in range(1, len(dcgan.g_filters))]
    discriminator, side = [], image_size
    for _ in dcgan.d_filters:
        side = -(-side // 2)
        discriminator.append(side)
    return generator, discriminator


def _listed(sides: list[int]) -> str:
    return ", ".join(map(str, sides)) or "none"


def _cross_checks(p: Params) -> None:
    """Rules that involve more than one key."""
    d, m = p.data, p.model
    if d.source == "mnist":
        if d.image_size != 28 or d.channels != 1:
            raise UserError("params key 'data.image_size'/'data.channels' must be 28 and 1 for data.source mnist "
                            f"(got {d.image_size} and {d.channels})")
    elif not Path(d.folder).is_dir():
        raise UserError(f"params key 'data.folder' must be an existing folder of images; '{d.folder}' does not exist")
    if d.labels not in UNREAD_LABELS and (d.labels == "mnist") != (d.source == "mnist"):  # MNIST's digits or a folder's labels
        choices = UNREAD_LABELS + (("mnist",) if d.source == "mnist" else ("subfolders", "a .csv label file"))
        allowed = f"{', '.join(choices[:-1])} or {choices[-1]}"
        raise UserError(f"params key 'data.labels' must be {allowed} for data.source {d.source}; got {d.labels!r}")
    if d.source == "folder" and d.labels not in LABEL_KEYWORDS and not (Path(d.folder) / d.labels).is_file():
        raise UserError(f"params key 'data.labels' must name a label file in data.folder; "
                        f"'{Path(d.folder) / d.labels}' does not exist")
    if m.arch == "dcgan":
        blocks = len(m.dcgan.g_filters)
        if d.image_size % (2 ** blocks):
            raise UserError(f"params key 'data.image_size' must be a multiple of {2 ** blocks} for model.dcgan.g_filters "
                            f"with {blocks} upsampling blocks; got {d.image_size}")
        g_sides, d_sides = dcgan_sides(d.image_size, m.dcgan)
        if m.dcgan.attention and not (m.dcgan.attention in g_sides and m.dcgan.attention in d_sides):
            raise UserError(f"params key 'model.dcgan.attention' must be 0 or a feature-map side both networks have "
                            f"(generator blocks: {_listed(g_sides)}; discriminator blocks: {_listed(d_sides)}); "
                            f"got {m.dcgan.attention}")
    if p.train.reconstruction > 0 and m.arch != "dcgan":
        raise UserError("params key 'train.reconstruction' must be 0 for model.arch mlp (the decoder reads the "
                        f"convolutional discriminator's feature maps); got {p.train.reconstruction}")
    if p.train.loss == "wgan-gp" and p.train.mixed_precision == "mixed_float16":
        raise UserError("params key 'train.mixed_precision' must be none or mixed_bfloat16 with train.loss wgan-gp "
                        "(the float16 gradient penalty overflows)")
    if p.evaluate.kid_subset_size > p.evaluate.num_samples:
        raise UserError(f"params key 'evaluate.kid_subset_size' must be <= evaluate.num_samples "
                        f"({p.evaluate.num_samples}); got {p.evaluate.kid_subset_size}")


def parse_params(raw: Any) -> Params:
    """Validate a parsed ``params.yaml`` mapping and return the typed view."""
    params = _build(Params, raw, "")
    _cross_checks(params)
    return params


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` (raises UserError with one line on any problem)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{line}") from None
    return parse_params(raw)


def to_dict(obj: Any) -> Any:
    """The plain-dict form of a params section (for manifests and saved configs)."""
    return dataclasses.asdict(obj)
