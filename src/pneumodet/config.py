"""Typed, frozen run configuration: the settings, their types and defaults, built from nested dicts.

Every setting lives in one of five sections (data, augment, model, train, predict). An unknown
key or a value of the wrong type is a one-line :class:`ConfigError` with a suggestion. Ranges and choices:
:mod:`pneumodet.config_checks`; YAML in and out, ``--set a.b=value``, the packaged recipes:
:mod:`pneumodet.config_files`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field

from pneumodet.errors import UserError


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
    weights: str = "coco"  # coco, imagenet, synth (tiny_fpn: pretrained on synthetic films, packaged), none, or a file
    trainable_layers: int = 5  # ResNet stages trained (0-5) once past the heads-only stage
    tiny_depth: int = 1  # tiny_fpn: stride-1 convs in each of its four stages (1: 9 convs in all, 2: 13)
    frozen_bn: bool = True  # FrozenBatchNorm2d (batch statistics are poor at small batch sizes)
    # the finest FPN level: 2 (P2, stride 4: COCO's small objects) or 3 (P3, stride 8: drops the costliest level;
    # the RPN and RoI heads then see P3-P6, and anchor_sizes has one size fewer). ResNet and tiny_fpn backbones
    fpn_min_level: int = 2
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level (P2-P6; P3-P6 with fpn_min_level 3)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # fixed: anchor_sizes and anchor_ratios as given; data: fitted to the run's training boxes when it starts
    # (pneumodet.anchors: the sizes scaled together, the ratios by k-means), these as the fallback, and the
    # run's config.yaml then holds the fitted ones
    anchors: str = "fixed"
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 500
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 300
    rpn_batch_size_per_image: int = 256
    rois_per_image: int = 32  # RoIs sampled per image for the box/mask heads (torchvision: 512)
    # the box head's regression loss: smooth_l1 (torchvision's, on the encoded deltas) or giou (GIoU on the decoded
    # boxes: pneumodet.box_loss)
    box_loss: str = "smooth_l1"
    # the box head pools each RoI enlarged this many times about its centre (1: the RoI alone), so it sees the
    # context around it; its boxes stay relative to the RoI (pneumodet.roi_ops.ContextRoIAlign)
    box_context: float = 1.0
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
    # Off in demo.yaml: it did not measure better on the unseen variants (docs/benchmarks-history.md: EMA)
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
    # change in the last digits turns (int8 against fp32, one CPU against another); what it costs and gives in
    # accuracy: docs/benchmarks-history.md, "Box voting"
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


#: keys that moved: a config that still uses one is told where it went
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


def from_dict(values: dict) -> RunConfig:
    """Return a RunConfig from nested dicts (missing keys keep their defaults)."""
    return _build(RunConfig, values or {})
