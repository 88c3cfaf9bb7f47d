"""Inference: raw detections, optional flip TTA with weighted box fusion, post-processing, and
mapping back to each image's original pixels. Works without Lightning (the web service uses it).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from pneumodet.boxes import as_boxes, iou_xyxy
from pneumodet.config import RunConfig
from pneumodet.model import RefiningRoIHeads, boxes_only, swapped
from pneumodet.postprocess import Candidates

FUSED_SCORES = ("average", "found")


def fuse_boxes(sets: list[tuple[np.ndarray, np.ndarray]], iou: float = 0.55, score: str = "average"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Return weighted box fusion of several predictions of one image (e.g. an image and its flip).

    Boxes are clustered greedily by descending score at ``iou``; a cluster takes at most one box from
    each set (two boxes of one pass are two findings, never one). A cluster's box is the score-weighted
    mean. Its score (within [0, 1] either way) is, with ``score="average"``, the sum of its scores divided
    by the number of sets, so a box only some sets found is down-weighted; with ``"found"``, the mean over
    the sets that found it, which keeps each box on the scale of a single set's scores.
    """
    if score not in FUSED_SCORES:
        raise ValueError(f"score must be one of {FUSED_SCORES}, got {score!r}")
    if not sets:
        return np.zeros((0, 4)), np.zeros(0)
    boxes = np.concatenate([as_boxes(b) for b, _ in sets])
    scores = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for _, s in sets])
    origin = np.concatenate([np.full(len(as_boxes(b)), n) for n, (b, _) in enumerate(sets)])
    clusters: list[list[int]] = []
    fused: list[np.ndarray] = []
    for i in np.argsort(-scores, kind="stable"):
        if fused:
            overlaps = iou_xyxy(boxes[i : i + 1], np.asarray(fused))[0]
            overlaps[[origin[i] in origin[c] for c in clusters]] = -1.0  # this pass is in that cluster already
            j = int(np.argmax(overlaps))
            if overlaps[j] > iou:
                clusters[j].append(i)
                w = scores[clusters[j]]
                fused[j] = (boxes[clusters[j]] * w[:, None]).sum(0) / w.sum()
                continue
        clusters.append([i])
        fused.append(boxes[i].copy())
    out_scores = np.array([scores[c].sum() / (len(sets) if score == "average" else len(c)) for c in clusters])
    out_boxes = np.asarray(fused).reshape(-1, 4)
    order = np.argsort(-out_scores, kind="stable")
    return out_boxes[order], out_scores[order]


def fuse_candidates(passes: list[Candidates], score: str = "average") -> Candidates:
    """Return one image's candidates from several passes (flip TTA, or the models of an ensemble): boxes by
    :func:`fuse_boxes` (``score``: how a fused box is scored), the gate the passes' mean."""
    boxes, scores = fuse_boxes([c[:2] for c in passes], score=score)
    return Candidates(boxes, scores, float(np.mean([c.gate for c in passes])))


def predictor_for(model, config: RunConfig, hflip_tta: bool | None = None,
                  tta_scales: tuple[float, ...] | None = None, box_refine: int | None = None,
                  box_vote: bool | None = None) -> Predictor:
    """Return a Predictor with the run's inference settings (TTA, box refinement, bf16, channels-last), on a GPU
    if there is one. ``hflip_tta`` turns TTA on or off: on, it flips each image and predicts it at each of
    ``tta_scales`` (default: ``predict.tta_scales``); ``box_refine`` and ``box_vote``: default ``predict``'s."""
    p = config.predict
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tta = p.hflip_tta if hflip_tta is None else hflip_tta
    scales = tuple(p.tta_scales if tta_scales is None else tta_scales) if tta else (1.0,)
    return Predictor(model, config.data.image_size, hflip_tta=tta, device=device, bf16=p.bf16,
                     channels_last=p.channels_last, scales=scales,
                     box_refine=p.box_refine if box_refine is None else box_refine,
                     box_vote=p.box_vote if box_vote is None else box_vote)


class Predictor:
    """Run a trained model on cache-sized images; return raw boxes in those images' pixels."""

    def __init__(self, model, image_size: int, hflip_tta: bool = False, device: str | torch.device = "cpu",
                 bf16: bool = False, channels_last: bool = False, scales: tuple[float, ...] = (1.0,),
                 box_refine: int = 0, box_vote: bool = False):
        refines = isinstance(getattr(model, "roi_heads", None), RefiningRoIHeads)
        if box_refine and not refines:
            raise ValueError("box_refine needs a model from pneumodet.model.build_model (RefiningRoIHeads)")
        box_vote = box_vote and refines  # another model's RoI heads keep their own NMS
        self.model = model.to(device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.image_size, self.hflip_tta, self.device, self.bf16 = image_size, hflip_tta, torch.device(device), bf16
        self.scales, self.box_refine, self.box_vote = tuple(scales), box_refine, box_vote

    def _forward(self, images: list[torch.Tensor]) -> list[Candidates]:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            outputs = self.model([im.to(self.device) for im in images])
        return [Candidates(o["boxes"].float().cpu().numpy().astype(np.float64), o["scores"].float().cpu().numpy(),
                           float(o["gate"]) if "gate" in o else np.nan) for o in outputs]

    def _size(self, scale: float):
        """Return a context within which the model resizes its inputs to ``scale`` x the cache size (its transform
        maps the boxes back to the input's pixels); scale 1 leaves the model as it is."""
        if scale == 1.0:
            return nullcontext()
        size = round(self.image_size * scale)
        return swapped(self.model.transform, min_size=(size,), max_size=size)

    def _passes(self, images: list[torch.Tensor]) -> list[list[Candidates]]:
        """Return per image one Candidates per pass (each size, plain then flipped), boxes in the images' pixels."""
        width = images[0].shape[-1]
        passes: list[list[Candidates]] = [[] for _ in images]
        for scale in self.scales:
            with self._size(scale):
                found = [self._forward(images)]
                if self.hflip_tta:
                    flipped = self._forward([im.flip(-1) for im in images])
                    found.append([c._replace(boxes_xyxy=hflip_boxes(c.boxes_xyxy, width)) for c in flipped])
            for per_image, *more in zip(passes, *found, strict=True):
                per_image.extend(more)
        return passes

    def __call__(self, images: list[torch.Tensor]) -> list[Candidates]:
        """Return per image the model's candidates (boxes_cache_xyxy (N, 4), scores (N,), gate), in the pixels of
        the float [C, H, W] images in [0, 1] it was given (cache pixels), before post-processing. With TTA (flips,
        and each size of ``scales``) the boxes of every pass are fused and the gate is their mean."""
        roi_settings = (swapped(self.model.roi_heads, refine_passes=self.box_refine, box_vote=self.box_vote)
                        if self.box_refine or self.box_vote else nullcontext())
        with boxes_only(self.model), roi_settings:
            if not self.hflip_tta and self.scales == (1.0,):
                return self._forward(images)
            return [fuse_candidates(p) for p in self._passes(images)]


def hflip_boxes(boxes_xyxy, width: float) -> np.ndarray:
    """Return boxes mirrored left-right in an image ``width`` pixels wide."""
    out = as_boxes(boxes_xyxy).copy()
    out[:, [0, 2]] = width - out[:, [2, 0]]
    return out


def to_original(boxes_cache_xyxy, scale_x: float, scale_y: float, height: int, width: int) -> np.ndarray:
    """Return boxes_orig_xyxy: cache-pixel boxes in the image's own pixels, clipped to its ``height`` x ``width``.

    ``scale_x`` = cache size / width and ``scale_y`` = cache size / height, as the cache records them.
    """
    b = as_boxes(boxes_cache_xyxy) / np.array([scale_x, scale_y, scale_x, scale_y])
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b
