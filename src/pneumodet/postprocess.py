"""Post-processing of detection candidates: score threshold, NMS between boxes, max boxes, shrink; the
image score. One definition, used by per-epoch validation, evaluate, predict and serve alike.

Imports only the foundations (config, boxes) and torchvision's NMS, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.ops import nms

from pneumodet.boxes import as_boxes, shrink_xyxy
from pneumodet.config import PredictConfig


@dataclass(frozen=True)
class PostProcess:
    """The choices evaluate tunes on val: score threshold, NMS IoU between boxes, boxes kept, shrink.

    No defaults of its own: they are PredictConfig's (``PostProcess.from_config(PredictConfig())``).
    """

    score_threshold: float
    nms_iou: float
    max_boxes: int
    shrink: float

    @classmethod
    def from_config(cls, cfg: PredictConfig) -> PostProcess:
        return cls(cfg.score_threshold, cfg.nms_iou, cfg.max_boxes, cfg.shrink)


def postprocess(boxes_xyxy, scores, pp: PostProcess) -> tuple[np.ndarray, np.ndarray]:
    """Return (boxes (N, 4) xyxy, scores (N,)) kept by ``pp``, highest score first, in the boxes' own space."""
    boxes, scores = as_boxes(boxes_xyxy), np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = scores >= pp.score_threshold
    boxes, scores = boxes[keep], scores[keep]
    if len(boxes):
        order = nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32),
                     pp.nms_iou).numpy()[: pp.max_boxes]
        boxes, scores = boxes[order], scores[order]
        if pp.shrink != 1.0:
            boxes = shrink_xyxy(boxes, pp.shrink)
    return boxes, scores


def image_score(boxes_xyxy, scores, pp: PostProcess) -> float:
    """Return an image's score: its highest box score after NMS and max boxes, before the threshold."""
    kept = postprocess(boxes_xyxy, scores, replace(pp, score_threshold=0.0, shrink=1.0))[1]
    return float(kept.max()) if len(kept) else 0.0
