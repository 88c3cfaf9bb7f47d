"""Typed, frozen run configuration: YAML in, ``--set a.b=value`` overrides, YAML out.

Every setting lives in one of five sections (data, augment, model, train, predict). An unknown
key or a value of the wrong type is a one-line :class:`ConfigError` with a suggestion.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pneumodet.errors import UserError
from pneumodet.files import write_text_atomic


class ConfigError(UserError):
    """A configuration key or value the user must fix."""


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 256  # equal to the cache size: the model never resizes again
    mask_shape: str = "rectangle"  # masks made from boxes: rectangle (seed) or ellipse
    max_boxes: int = 4  # boxes kept per training image (the seed's MAX_GT_INSTANCES)
    num_workers: int = 2  # data-loading processes
    train_limit: int = 0  # use only the first N training images (0: all); for quick runs
    val_limit: int = 0
    # > 0: training draws images with replacement so that this share of them holds an opacity (0: each image
    # once per epoch, the data set's own share). Faint opacities are what a small model misses most
    positive_share: float = 0.0


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    scale: tuple[float, float] = (0.98, 1.04)  # the seed's ranges
    translate_x: float = 0.02  # fraction of the width, +-
    translate_y: float = 0.04
    rotate_deg: float = 2.0
    shear_deg: float = 1.0
    brightness: tuple[float, float] = (0.9, 1.1)
    contrast: tuple[float, float] = (0.9, 1.1)
    # pixel ** gamma after brightness and contrast, drawn from this range: (1, 1) is off. Unlike brightness and
    # contrast, a gamma survives model.normalize: image, and films differ in it (each scanner's look-up table)
    gamma: tuple[float, float] = (1.0, 1.0)
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    sharpen: tuple[float, float] = (1.2, 2.0)
    blur_or_sharpen_p: float = 0.5  # probability of one of the two
    hflip_p: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet50_fpn"  # resnet50_fpn, resnet50_fpn_v2, resnet18_fpn, mobilenet_v3_fpn, tiny_fpn
    weights: str = "coco"  # coco, imagenet, none, or a file path
    trainable_layers: int = 5  # ResNet stages trained (0-5) once past the heads-only stage
    tiny_depth: int = 1  # tiny_fpn: stride-1 convs in each of its four stages (1: 9 convs in all, 2: 13)
    frozen_bn: bool = True  # FrozenBatchNorm2d (batch statistics are poor at small batch sizes)
    # the finest FPN level: 2 (P2, stride 4: COCO's small objects) or 3 (P3, stride 8: drops the costliest level;
    # the RPN and RoI heads then see P3-P6, and anchor_sizes has one size fewer). ResNet and tiny_fpn backbones
    fpn_min_level: int = 2
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level (P2-P6; P3-P6 with fpn_min_level 3)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 500
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 300
    rpn_batch_size_per_image: int = 256
    rois_per_image: int = 32  # RoIs sampled per image for the box/mask heads (torchvision: 512)
    roi_positive_fraction: float = 0.33
    min_score: float = 0.05  # candidates below are never returned; post-processing picks the real threshold
    masks: bool = True  # Mask R-CNN; False gives Faster R-CNN (boxes only)
    mask_head_channels: int = 256  # torchvision: 4 convs of 256; fewer and narrower is far cheaper on a CPU
    mask_head_convs: int = 4
    # image-level gate: a classification head on the shared backbone, trained on every image (the winners'
    # most useful addition); predict.gate_threshold decides what it does at inference
    gate: bool = False
    gate_loss_weight: float = 1.0
    # true: the shared gate learns from the detector's features without changing them (its loss stops at the
    # FPN); false: its loss trains the backbone too (multi-task), which can help or cost the boxes
    gate_detach: bool = True
    gate_backbone: str = "shared"  # shared: a head on the detector's FPN; densenet121: a separate classifier
    gate_weights: str = "none"  # densenet121's start: none, imagenet, or xrv (torchxrayvision's chest X-ray weights)
    # how pixels are scaled before the backbone: fixed (ImageNet's mean and std, what pretrained weights expect) or
    # image (each image to zero mean and unit spread: an exposure or contrast the training set never showed looks
    # like one it did)
    normalize: str = "fixed"


@dataclass(frozen=True)
class Stage:
    """Train until ``until_epoch`` (exclusive) at ``lr_scale`` x train.lr, the heads only or all layers."""

    until_epoch: int
    lr_scale: float = 1.0
    layers: str = "all"  # heads (FPN, RPN, RoI heads) or all


@dataclass(frozen=True)
class TrainConfig:
    # steps > 0: the run lasts that many optimizer steps whatever the data set's size; epochs and each
    # stage's until_epoch then only give the schedule's shape, and are scaled to the epochs it takes
    steps: int = 0
    epochs: int = 16
    batch_size: int = 8
    optimizer: str = "sgd"  # sgd or adamw
    lr: float = 0.012  # base learning rate; each stage scales it
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    stages: tuple[Stage, ...] = (Stage(2, 1.0, "heads"), Stage(6, 0.5, "all"), Stage(16, 0.1, "all"))
    warmup_steps: int = 0
    # validate (val losses, val RSNA mAP, checkpoints) every this many optimizer steps, rounded to whole epochs,
    # and after the last epoch; 0: after every epoch. Small sets run 100+ short epochs, and validating each
    # one costs as much as a fifth of the training time
    val_every_steps: int = 0
    # > 0: evaluate, predict, export and serve use an exponential moving average of the weights, updated after
    # every optimizer step with this decay (its memory is about 1 / (1 - decay) steps); validation scores the
    # average too, and the checkpoints keep the trained weights beside it (current_model_state) for --resume.
    # Off in demo.yaml: 0.99-0.995 gained 0.01 on one set and lost 0.004 on another (BENCHMARKS.md)
    ema_decay: float = 0.0
    precision: str = "32-true"  # 32-true, bf16-mixed, 16-mixed
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp, ddp_spawn, ...
    seed: int = 0
    max_nonfinite: int = 5  # consecutive non-finite losses that stop the run
    limit_train_batches: int = 0  # 0: all
    limit_val_batches: int = 0
    threads: int = 0  # torch CPU threads per process (0: leave as is)
    # experiment logs: csv (metrics.csv, always written), tensorboard (RUN/tensorboard), mlflow (MLFLOW_TRACKING_URI
    # or RUN/mlruns); the last two are extras: pip install 'pneumodet[tensorboard]' / 'pneumodet[mlflow]'
    loggers: tuple[str, ...] = ("csv",)
    # the weights evaluate, predict, export and serve use: last (the end of the schedule) or best (the epoch
    # with the highest val RSNA mAP, which is noise when val holds a few dozen positives)
    checkpoint: str = "last"


@dataclass(frozen=True)
class PredictConfig:
    """Post-processing of the model's candidates, applied the same way in per-epoch validation, evaluate,
    predict and serve (evaluate tunes the first four and saves them in metrics.json)."""

    score_threshold: float = 0.78  # the seed's DETECTION_MIN_CONFIDENCE
    nms_iou: float = 0.01  # NMS IoU between kept boxes (the seed's DETECTION_NMS_THRESHOLD: boxes barely overlap)
    max_boxes: int = 3  # the seed's DETECTION_MAX_INSTANCES
    shrink: float = 1.0  # scale boxes about their centres (the winners used ~0.875)
    gate_threshold: float = 0.0  # with model.gate: images whose gate probability is below keep no box (0: off)
    hflip_tta: bool = False
    # with TTA on (hflip_tta, --tta), each image is also predicted at these multiples of data.image_size (the
    # model resizes it; boxes come back in the image's pixels) and every pass is fused box by box: [1.0] is
    # one size. Each size costs a pass (and a flipped one), a size s about s^2 times the pixels
    tta_scales: tuple[float, ...] = (1.0,)
    # passes of the box head over its own detections (each moves a box halfway to where the head's regression
    # from it points, and averages its score with the head's new one); 0: torchvision's single pass. Like TTA it
    # changes the scores thresholds are tuned on: evaluate records it (--box-refine) and predict follows
    box_refine: int = 0
    # box voting: each box the model keeps becomes the score-weighted mean of the boxes its NMS (IoU 0.5) merged
    # into it, its score unchanged. Without it, which of two near-equal boxes survives is a coin toss that a
    # change in the last digits turns: make demo's int8 engine kept PyTorch's boxes on 97.3 % of its test images
    # without it, 99.7 % with it. Test RSNA mAP on the same weights: make demo 0.711 -> 0.754; five folds on
    # `shifted` -0.037 to +0.023 (mean -0.002), their ensemble 0.679 -> 0.680, `wide` 0.517 -> 0.518 (BENCHMARKS.md)
    box_vote: bool = True
    batch_size: int = 8
    bf16: bool = False  # bf16 autocast at inference (CPU with AVX-512 BF16, or GPU): check boxes on val first
    channels_last: bool = True  # NHWC convolutions: faster on this CPU, identical results
    # auto: the ONNX Runtime engine when `pneumodet export RUN` made one for the current weights and the onnx
    # extra is installed (CPU only), else PyTorch; torch: always PyTorch; onnx: the engine or an error
    engine: str = "auto"


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict:
        """Return the configuration as plain dicts, lists and scalars (YAML- and checkpoint-safe)."""
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def all_keys(cls=RunConfig, prefix: str = "") -> list[str]:
    """Return every dotted key of the configuration, e.g. ``train.lr``."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], key + ".")
    return keys


#: keys that moved: a config that still uses one is told where it went; a checkpoint's is dropped
MOVED = {"model.box_nms": "predict.nms_iou", "model.detections_per_image": "predict.max_boxes"}


def _unknown(key: str) -> ConfigError:
    if key in MOVED:
        return ConfigError(f"{key} is now {MOVED[key]}: post-processing applies it everywhere "
                           "(validation, evaluate, predict, serve)")
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not close:  # a right leaf in the wrong section: "lr" -> "train.stages"...
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in all_keys() if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"unknown configuration key {key!r}{hint}")


def _convert(value, hint, key: str):
    """Return ``value`` as type ``hint`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(hint, value, key + ".")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise _unknown(prefix + str(key))
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def from_dict(values: dict, legacy: bool = False) -> RunConfig:
    """Return a RunConfig from nested dicts (missing keys keep their defaults).

    ``legacy``: drop the keys in MOVED (a checkpoint written before they moved) instead of refusing them.
    """
    values = values or {}
    if legacy:
        values = {section: ({k: v for k, v in body.items() if f"{section}.{k}" not in MOVED}
                            if isinstance(body, dict) else body) for section, body in values.items()}
    return _build(RunConfig, values)


def parse_override(text: str) -> tuple[list[str], object]:
    """Return (key path, value) from ``a.b=value``; the value is a Python/YAML literal or a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = yaml.safe_load(raw) if raw.strip() else ""
    if key not in all_keys():
        raise _unknown(key)
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Return a copy of nested ``values`` with each ``key=value`` override applied."""
    import copy

    values = copy.deepcopy(values or {})
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Return the RunConfig in YAML file ``path`` (None: defaults) with ``overrides`` applied."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        values = _read_yaml(path)
    try:
        return validate(from_dict(apply_overrides(values, list(overrides))))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path and "--set" not in str(exc) else str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'configuration'}: {exc}") from None


def _read_yaml(path: Path) -> dict:
    """Return the mapping in a YAML file; a one-line ConfigError if it is not text, not YAML or not a mapping."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, ...)")
    return values


def _leaves(values: dict, prefix: str = "") -> set[str]:
    """Return the dotted keys of the settings (not the sections) in nested ``values``."""
    keys = set()
    for key, value in values.items():
        keys |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def load_run_config(path: str | Path, like: dict | None = None) -> RunConfig:
    """Return the configuration a run recorded in its config.yaml, which :func:`dump_config` writes whole: a
    ConfigError, never defaults, if the file does not parse or lacks a setting it should hold (``like``: the
    configuration the run's checkpoint holds, as a dict; without one, every setting there is)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: the run's configuration is missing")
    missing = sorted(_leaves(RunConfig().to_dict() if like is None else like) - _leaves(_read_yaml(path)))
    if missing:
        raise ConfigError(f"{path}: {len(missing)} setting(s) missing ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): the file was cut short or edited; restore it "
                          "(the run's checkpoint holds the settings it trained with) or train a new run")
    return load_config(path)


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Return the optimizer steps one epoch over ``n_train`` images takes (every process its share of a batch)."""
    per_epoch = max(1, -(-n_train // (cfg.batch_size * cfg.devices * cfg.num_nodes)))
    return min(per_epoch, cfg.limit_train_batches) if cfg.limit_train_batches else per_epoch


def val_every_epochs(cfg: TrainConfig, n_train: int) -> int:
    """Return how many epochs ``train.val_every_steps`` puts between two validations (at least 1)."""
    return max(1, round(cfg.val_every_steps / steps_per_epoch(cfg, n_train)))


def schedule_for(config: RunConfig, n_train: int) -> RunConfig:
    """Return ``config`` with epochs and stages that give ``train.steps`` optimizer steps over ``n_train`` images.

    With ``train.steps`` = 0 the config is returned as it is (a schedule in epochs). Otherwise the epochs
    become ceil(steps / steps per epoch) and each stage keeps its share of the run: 240 images train as
    long as 800 do. Applying it twice gives the same schedule (a resumed run recomputes it).
    """
    cfg = config.train
    if not cfg.steps:
        return config
    per_epoch = steps_per_epoch(cfg, n_train)
    epochs = max(1, -(-cfg.steps // per_epoch))
    bounds, previous = [], 0
    for stage in cfg.stages:
        until = max(previous + 1, round(stage.until_epoch / cfg.epochs * epochs))
        bounds.append(until)
        previous = until
    bounds[-1] = max(bounds[-1], epochs)
    stages = tuple(dataclasses.replace(s, until_epoch=b) for s, b in zip(cfg.stages, bounds, strict=True))
    return dataclasses.replace(config, train=dataclasses.replace(cfg, epochs=epochs, stages=stages))


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


INF = float("inf")
#: accepted ranges, inclusive, by key; a tuple value is checked element by element; "open" excludes the low end
RANGES: dict[str, tuple[float, float] | tuple[float, float, str]] = {
    "data.image_size": (32, 4096), "data.max_boxes": (1, 100), "data.num_workers": (0, 256),
    "data.train_limit": (0, INF), "data.val_limit": (0, INF),
    "data.positive_share": (0, 1),
    "augment.scale": (0, 10, "open"), "augment.translate_x": (0, 0.5), "augment.translate_y": (0, 0.5),
    "augment.rotate_deg": (0, 180), "augment.shear_deg": (0, 60), "augment.brightness": (0, 10, "open"),
    "augment.contrast": (0, 10, "open"), "augment.gamma": (0, 10, "open"),
    "augment.blur_sigma": (0, 50, "open"), "augment.sharpen": (0, 50),
    "augment.blur_or_sharpen_p": (0, 1), "augment.hflip_p": (0, 1),
    "model.trainable_layers": (0, 5), "model.fpn_min_level": (2, 3), "model.anchor_sizes": (1, 4096), "model.anchor_ratios": (0, 100, "open"),
    "model.rpn_pre_nms_train": (1, 100000), "model.rpn_post_nms_train": (1, 100000),
    "model.rpn_pre_nms_test": (1, 100000), "model.rpn_post_nms_test": (1, 100000),
    "model.rpn_batch_size_per_image": (1, 100000), "model.rois_per_image": (1, 100000),
    "model.roi_positive_fraction": (0, 1, "open"),
    "model.min_score": (0, 1), "model.mask_head_channels": (1, 4096),
    "model.mask_head_convs": (1, 16), "model.tiny_depth": (1, 8), "model.gate_loss_weight": (0, 100),
    "predict.box_refine": (0, 8),
    "train.steps": (0, 10_000_000), "train.epochs": (1, 100000), "train.batch_size": (1, 4096), "train.lr": (0, 10, "open"),
    "train.momentum": (0, 0.999), "train.weight_decay": (0, 1), "train.grad_clip": (0, INF),
    "train.warmup_steps": (0, INF), "train.val_every_steps": (0, INF),
    "train.ema_decay": (0, 0.99999), "train.devices": (1, 4096), "train.num_nodes": (1, 4096),
    "train.max_nonfinite": (1, INF), "train.limit_train_batches": (0, INF), "train.limit_val_batches": (0, INF),
    "train.threads": (0, 4096), "train.seed": (0, 2**32 - 1),
    "predict.score_threshold": (0, 1), "predict.nms_iou": (0, 1), "predict.max_boxes": (1, 100),
    "predict.shrink": (0, 1.5, "open"), "predict.batch_size": (1, 4096), "predict.gate_threshold": (0, 1),
    "predict.tta_scales": (0.25, 4),
}
#: the values a setting may take, by key
CHOICES = {
    "data.mask_shape": ("rectangle", "ellipse"),
    "model.gate_backbone": ("shared", "densenet121"),
    "model.gate_weights": ("none", "imagenet", "xrv"),
    "model.normalize": ("fixed", "image"),
    "train.optimizer": ("sgd", "adamw"),
    "train.checkpoint": ("last", "best"),
    "train.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "predict.engine": ("auto", "torch", "onnx"),  # ENGINES
    "train.precision": ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true"),
}
#: where predict runs the convolutions (onnx_engine.py): predict.engine, predict --engine, load_detector(engine=)
ENGINES = CHOICES["predict.engine"]
#: train.loggers may name these (engine/loggers.py)
LOGGERS = ("csv", "tensorboard", "mlflow")
#: (low, high) pairs whose low must not exceed high
PAIRS = ("augment.scale", "augment.brightness", "augment.contrast", "augment.gamma", "augment.blur_sigma", "augment.sharpen")


def _value(config: RunConfig, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_range(key: str, value, bounds) -> None:
    low, high, *mode = bounds
    values = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and not values:
        raise ConfigError(f"{key} needs at least one value")
    for v in values:
        above = v > low if mode else v >= low
        if not (above and v <= high):
            bracket = "(" if mode else "["
            shown = "inf" if high == INF else f"{high:g}"
            raise ConfigError(f"{key} must be in {bracket}{low:g}, {shown}], got {_show(value)}")


def _show(value) -> str:
    return f"[{', '.join(f'{v:g}' for v in value)}]" if isinstance(value, tuple) else f"{value:g}"


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}{hint}")


def validate(config: RunConfig) -> RunConfig:
    """Return ``config`` after checking ranges and choices that types alone cannot (one-line errors)."""
    for key, bounds in RANGES.items():
        _check_range(key, _value(config, key), bounds)
    for key, choices in {**CHOICES, "model.backbone": BACKBONES}.items():
        _check_choice(key, _value(config, key), choices)
    for logger in config.train.loggers:
        _check_choice("train.loggers[]", logger, LOGGERS)
    for key in PAIRS:
        low, high = _value(config, key)
        if low > high:
            raise ConfigError(f"{key} is a (low, high) range, got {_show((low, high))}; write [{high:g}, {low:g}]")
    _check_name(config.name)
    weights = config.model.weights
    if weights not in ("coco", "imagenet", "none") and not Path(weights).is_file():
        close = difflib.get_close_matches(weights, ("coco", "imagenet", "none"), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"model.weights must be coco, imagenet, none or an existing weights file, got "
                          f"{weights[:80]!r} (no such file){hint}")
    stages = config.train.stages
    checks = [
        (len(config.model.anchor_sizes) == 7 - config.model.fpn_min_level,
         f"model.anchor_sizes needs {7 - config.model.fpn_min_level} sizes, one per FPN level "
         f"(P{config.model.fpn_min_level}-P6), got {len(config.model.anchor_sizes)}"),
        (config.model.fpn_min_level == 2 or config.model.backbone != "mobilenet_v3_fpn",
         "model.fpn_min_level 3 applies to ResNet and tiny_fpn backbones, not mobilenet_v3_fpn (its FPN starts "
         "at stride 16)"),
        (config.model.tiny_depth == 1 or config.model.backbone == "tiny_fpn",
         f"model.tiny_depth applies to model.backbone tiny_fpn only, not {config.model.backbone}"),
        (len(stages) >= 1, "train.stages needs at least one stage"),
        (all(s.layers in ("heads", "all") for s in stages), "train.stages[].layers: heads or all"),
        (all(s.lr_scale > 0 for s in stages), "train.stages[].lr_scale must be > 0"),
        (all(a.until_epoch < b.until_epoch for a, b in zip(stages, stages[1:], strict=False)) and
         all(s.until_epoch >= 1 for s in stages), "train.stages[].until_epoch must be >= 1 and increasing"),
        (stages[-1].until_epoch >= config.train.epochs if stages else False,
         "the last of train.stages must reach train.epochs (until_epoch >= epochs)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return config


def _check_name(name: str) -> None:
    """A run's name becomes a folder under --runs: one plain, visible folder name."""
    if not name.strip() or name != name.strip() or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in '/\\\0') or len(name) > 100:
        raise ConfigError(f"name must be a plain folder name (not empty, no / or \\, not starting with '.', at "
                          f"most 100 characters), got {name[:40]!r}")


BACKBONES = ("resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn", "mobilenet_v3_fpn", "tiny_fpn")
