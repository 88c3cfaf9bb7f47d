"""``InferenceSettings``: how a model is run over an image, as one frozen value.

Resolved once, in one order: the run's config (``predict``), then what ``evaluate`` tuned under and recorded in
metrics.json (TTA, scales, refinement and voting change the scores its thresholds were tuned on), then the caller.
The Detector holds the result and passes it down the chain; a caller may pass other settings for one call.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pneumodet.config import PredictConfig, from_dict
from pneumodet.config_checks import check_range, validate
from pneumodet.errors import UserError
from pneumodet.postprocess import PostProcess


@dataclass(frozen=True)
class InferenceSettings:
    """``hflip_tta``: test-time augmentation on or off (each image also flipped, and run at each of ``tta_scales``,
    multiples of the input size; every pass fused box by box); ``box_refine``: passes of the box head over its own
    detections; ``box_vote``: box voting in the RoI heads' NMS; ``bf16``: bf16 autocast."""

    hflip_tta: bool = False
    tta_scales: tuple[float, ...] = (1.0,)
    box_refine: int = 0
    box_vote: bool = True
    bf16: bool = False

    def __post_init__(self):  # a caller's settings are checked as the config's are
        check_range("predict.tta_scales", tuple(self.tta_scales))
        check_range("predict.box_refine", self.box_refine)

    @classmethod
    def from_config(cls, cfg: PredictConfig) -> InferenceSettings:
        return cls(cfg.hflip_tta, tuple(cfg.tta_scales), cfg.box_refine, cfg.box_vote, cfg.bf16)

    @property
    def scales(self) -> tuple[float, ...]:
        """Return the input sizes the model runs at, as multiples of the run's: TTA's scales, else one."""
        return tuple(self.tta_scales) if self.hflip_tta else (1.0,)

    def sizes_px(self, image_size: int) -> set[int]:
        """Return the input sizes in pixels the model runs at for a run of ``image_size`` pixels."""
        return {round(image_size * s) for s in self.scales}

    def but(self, **changes) -> InferenceSettings:
        """Return these settings with the changes that are not None (a caller's choices)."""
        given = {k: (tuple(v) if k == "tta_scales" else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given)


#: what metrics.json records of the inference settings its thresholds were tuned under
TUNED_KEYS = ("hflip_tta", "tta_scales", "box_refine", "box_vote")


def read_tuning(metrics_json: Path, run: Path) -> dict:
    """Return what ``evaluate`` saved in ``metrics_json`` (empty when it has not run); a one-line UserError if the
    file is not a metrics file."""
    if not metrics_json.is_file():
        return {}
    try:
        saved = json.loads(metrics_json.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{metrics_json}: not valid JSON; run pneumodet evaluate {run} again") from None
    if not isinstance(saved, dict):
        raise UserError(f"{metrics_json}: not a metrics file; run pneumodet evaluate {run} again")
    return saved


def _checked(values: dict, where: Path) -> PredictConfig:
    """Return ``values`` (predict settings read from metrics.json) as a checked PredictConfig; a one-line UserError
    naming the file otherwise (evaluate writes it whole)."""
    try:
        return validate(from_dict({"predict": values})).predict
    except UserError as exc:
        raise UserError(f"{where}: {exc}; run pneumodet evaluate {where.parent} again") from None


def tuned_postprocess(saved: dict, fallback: PostProcess, where: Path = Path("metrics.json")) -> PostProcess:
    """Return the post-processing evaluate saved in metrics.json (``saved``, as read from ``where``), else
    ``fallback``; a one-line UserError if it is there but incomplete or out of range."""
    values = saved.get("postprocess")
    if not values:
        return fallback
    needed = {f.name for f in dataclasses.fields(PostProcess)}
    if not isinstance(values, dict) or not needed <= set(values):
        missing = sorted(needed - set(values)) if isinstance(values, dict) else ["all"]
        raise UserError(f"{where}: postprocess lacks {', '.join(missing)}; run pneumodet evaluate {where.parent} "
                        "again")
    return PostProcess.from_config(_checked(values, where))


def tuned_settings(saved: dict, base: InferenceSettings, where: Path = Path("metrics.json")) -> InferenceSettings:
    """Return ``base`` with the inference settings evaluate recorded in metrics.json (``saved``, read from
    ``where``); a one-line UserError if they are out of range."""
    recorded = {k: saved[k] for k in TUNED_KEYS if saved.get(k) is not None}
    if not recorded:
        return base
    checked = _checked(recorded, where)
    return base.but(**{k: getattr(checked, k) for k in recorded})


def resolve(config: PredictConfig, saved: dict, where: Path, *, overrides: dict | None = None,
            **caller) -> tuple[InferenceSettings, PostProcess]:
    """Return (inference settings, post-processing) resolved in order: ``config``, then evaluate's tuning
    (``saved``: metrics.json read from ``where``; empty: none), then the caller's (``caller``: InferenceSettings
    fields, ``overrides``: PostProcess fields; None leaves a setting as it was)."""
    settings = tuned_settings(saved, InferenceSettings.from_config(config), where).but(**caller)
    pp = tuned_postprocess(saved, PostProcess.from_config(config), where)
    return settings, dataclasses.replace(pp, **{k: v for k, v in (overrides or {}).items() if v is not None})
