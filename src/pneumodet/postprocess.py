"""Post-processing of detection candidates: score threshold, NMS between boxes, max boxes, shrink; the
image score. One definition, used by per-epoch validation, evaluate, predict and serve alike.

Imports only the foundations (config, boxes) and torchvision's NMS, so every layer may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.ops import nms

from pneumodet.boxes import as_boxes, shrink_xyxy
from pneumodet.config import PredictConfig


@dataclass(frozen=True)
class PostProcess:
    """The choices evaluate tunes on val: score threshold, NMS IoU between boxes, boxes kept, shrink, and the
    image-level gate's threshold.

    PredictConfig gives the defaults (``PostProcess.from_config(PredictConfig())``); ``gate_threshold`` defaults
    to off.
    """

    score_threshold: float
    nms_iou: float
    max_boxes: int
    shrink: float
    gate_threshold: float = 0.0

    @classmethod
    def from_config(cls, cfg: PredictConfig) -> PostProcess:
        return cls(cfg.score_threshold, cfg.nms_iou, cfg.max_boxes, cfg.shrink, cfg.gate_threshold)

    def describe(self) -> str:
        """Return the settings in words, e.g. 'score threshold 0.5, NMS IoU 0.01, at most 3 boxes, no shrink, gate
        off'."""
        shrink = "no shrink" if self.shrink == 1.0 else f"boxes shrunk to {self.shrink:g}"
        gate = "gate off" if self.gate_threshold <= 0 else f"gate threshold {self.gate_threshold:g}"
        return (f"score threshold {self.score_threshold:g}, NMS IoU {self.nms_iou:g}, at most {self.max_boxes} "
                f"box{'es' if self.max_boxes != 1 else ''}, {shrink}, {gate}")


def gated(gate: float, pp: PostProcess) -> bool:
    """Return whether the gate removes every box of an image (a model without a gate never does)."""
    return pp.gate_threshold > 0 and not math.isnan(gate) and gate < pp.gate_threshold


def postprocess(boxes_xyxy, scores, pp: PostProcess, gate: float = math.nan) -> tuple[np.ndarray, np.ndarray]:
    """Return (boxes (N, 4) xyxy, scores (N,)) kept by ``pp``, highest score first, in the boxes' own space.

    ``gate``: the image's gate probability; below ``pp.gate_threshold`` no box is kept.
    """
    boxes, scores = as_boxes(boxes_xyxy), np.asarray(scores, dtype=np.float64).reshape(-1)
    if gated(gate, pp):
        return boxes[:0], scores[:0]
    keep = scores >= pp.score_threshold
    boxes, scores = boxes[keep], scores[keep]
    if len(boxes):
        order = nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32),
                     pp.nms_iou).numpy()[: pp.max_boxes]
        boxes, scores = boxes[order], scores[order]
        if pp.shrink != 1.0:
            boxes = shrink_xyxy(boxes, pp.shrink)
    return boxes, scores


def max_box_score(boxes_xyxy, scores, pp: PostProcess) -> float:
    """Return an image's highest box score after NMS and max boxes, before the threshold."""
    kept = postprocess(boxes_xyxy, scores, replace(pp, score_threshold=0.0, shrink=1.0))[1]
    return float(kept.max()) if len(kept) else 0.0


def image_score(boxes_xyxy, scores, pp: PostProcess, gate: float = math.nan) -> float:
    """Return an image's score: the gate's probability where the model has a gate, else its highest box score."""
    return float(gate) if not math.isnan(gate) else max_box_score(boxes_xyxy, scores, pp)
