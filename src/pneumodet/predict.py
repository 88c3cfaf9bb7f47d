"""Inference: raw detections, optional flip TTA with weighted box fusion, post-processing, and
mapping back to each image's original pixels. Works without Lightning (the web service uses it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.ops import nms

from pneumodet.boxes import as_boxes, iou_xyxy, shrink_xyxy
from pneumodet.config import PredictConfig, RunConfig
from pneumodet.model import boxes_only

#: raw inference keeps more than any tuned setting will: post-processing decides the rest
RAW_MAX_DETECTIONS = 10
RAW_NMS_IOU = 0.5


@dataclass(frozen=True)
class PostProcess:
    """The choices evaluate tunes on val: score threshold, NMS IoU between boxes, boxes kept, shrink."""

    score_threshold: float = 0.5
    nms_iou: float = 0.1
    max_boxes: int = 3
    shrink: float = 1.0

    @classmethod
    def from_config(cls, cfg: PredictConfig) -> PostProcess:
        return cls(cfg.score_threshold, cfg.nms_iou, cfg.max_boxes, cfg.shrink)


def postprocess(boxes_xyxy, scores, pp: PostProcess) -> tuple[np.ndarray, np.ndarray]:
    """Return (boxes (N, 4) xyxy, scores (N,)) kept by ``pp``, highest score first."""
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


def fuse_boxes(sets: list[tuple[np.ndarray, np.ndarray]], iou: float = 0.55) -> tuple[np.ndarray, np.ndarray]:
    """Return weighted box fusion of several predictions of one image (e.g. an image and its flip).

    Boxes are clustered greedily by descending score at ``iou``; a cluster's box is the
    score-weighted mean, its score the sum of scores divided by the number of sets, so a box that
    only one pass found is down-weighted.
    """
    boxes = np.concatenate([as_boxes(b) for b, _ in sets]) if sets else np.zeros((0, 4))
    scores = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for _, s in sets]) if sets else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    clusters: list[list[int]] = []
    fused: list[np.ndarray] = []
    for i in order:
        if fused:
            overlaps = iou_xyxy(boxes[i : i + 1], np.asarray(fused))[0]
            j = int(np.argmax(overlaps))
            if overlaps[j] > iou:
                clusters[j].append(i)
                w = scores[clusters[j]]
                fused[j] = (boxes[clusters[j]] * w[:, None]).sum(0) / w.sum()
                continue
        clusters.append([i])
        fused.append(boxes[i].copy())
    out_scores = np.array([scores[c].sum() / len(sets) for c in clusters])
    out_boxes = np.asarray(fused).reshape(-1, 4)
    order = np.argsort(-out_scores, kind="stable")
    return out_boxes[order], out_scores[order]


def predictor_for(model, config: RunConfig, hflip_tta: bool | None = None) -> Predictor:
    """Return a Predictor with the run's inference settings (TTA, bf16, channels-last), on a GPU if there is one."""
    p = config.predict
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Predictor(model, config.data.image_size, hflip_tta=p.hflip_tta if hflip_tta is None else hflip_tta,
                     device=device, bf16=p.bf16, channels_last=p.channels_last)


class Predictor:
    """Run a trained model on cache-sized images; return raw boxes in those images' pixels."""

    def __init__(self, model, image_size: int, hflip_tta: bool = False, device: str | torch.device = "cpu",
                 bf16: bool = False, channels_last: bool = False):
        self.model = model.to(device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.image_size, self.hflip_tta, self.device, self.bf16 = image_size, hflip_tta, torch.device(device), bf16

    @contextlib.contextmanager
    def _permissive(self):
        heads = self.model.roi_heads
        saved = heads.nms_thresh, heads.detections_per_img
        heads.nms_thresh, heads.detections_per_img = RAW_NMS_IOU, RAW_MAX_DETECTIONS
        try:
            with boxes_only(self.model):
                yield
        finally:
            heads.nms_thresh, heads.detections_per_img = saved

    def _forward(self, images: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            outputs = self.model([im.to(self.device) for im in images])
        return [(o["boxes"].float().cpu().numpy().astype(np.float64), o["scores"].float().cpu().numpy()) for o in outputs]

    def __call__(self, images: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return per image (boxes (N, 4) xyxy, scores (N,)) for float [C, H, W] images in [0, 1]."""
        with self._permissive():
            plain = self._forward(images)
            if not self.hflip_tta:
                return plain
            flipped = self._forward([im.flip(-1) for im in images])
        merged = []
        for (boxes, scores), (fboxes, fscores) in zip(plain, flipped, strict=True):
            width = images[0].shape[-1]
            unflipped = fboxes.copy()
            unflipped[:, [0, 2]] = width - fboxes[:, [2, 0]]
            merged.append(fuse_boxes([(boxes, scores), (unflipped, fscores)]))
        return merged


def to_original(boxes_xyxy, scale_x: float, scale_y: float, height: int, width: int) -> np.ndarray:
    """Return cache-pixel xyxy boxes in the image's original pixels, clipped to it."""
    b = as_boxes(boxes_xyxy) / np.array([scale_x, scale_y, scale_x, scale_y])
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b
