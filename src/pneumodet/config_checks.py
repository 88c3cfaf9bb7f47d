"""The accepted range of every number and the choices of every named setting: :func:`validate`."""

from __future__ import annotations

import difflib
from pathlib import Path

from pneumodet.config import ConfigError, RunConfig

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
    "model.roi_positive_fraction": (0, 1, "open"), "model.box_context": (1, 3),
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
    "model.anchors": ("fixed", "data"),
    "model.box_loss": ("smooth_l1", "giou"),
    "train.optimizer": ("sgd", "adamw"),
    "train.checkpoint": ("last", "best"),
    "train.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "predict.engine": ("auto", "torch", "onnx"),  # ENGINES
    "train.precision": ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true"),
}
#: model.weights' names; any other value is a weights file
WEIGHTS = ("coco", "imagenet", "synth", "none")
#: where predict runs the convolutions (onnx_runtime.py): predict.engine, predict --engine, load_detector(engine=)
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


def check_range(key: str, value) -> None:
    """Raise a one-line ConfigError if ``value`` is outside the range of setting ``key`` (e.g. predict.box_refine)."""
    _check_range(key, value, RANGES[key])


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
    if weights not in WEIGHTS and not Path(weights).is_file():
        close = difflib.get_close_matches(weights, WEIGHTS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"model.weights must be coco, imagenet, synth, none or an existing weights file, got "
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
