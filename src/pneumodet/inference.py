"""Test-time augmentation and ensembles: passes of a backend (flipped, at several sizes) or the models of an
ensemble, fused box by box by weighted box fusion. Works without Lightning (the web service uses it).
"""

from __future__ import annotations

import numpy as np
import torch

from pneumodet.boxes import as_boxes, iou_xyxy
from pneumodet.candidates import CacheCandidates
from pneumodet.settings import InferenceSettings

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


def fuse_candidates(passes: list, score: str = "average"):
    """Return one image's candidates from several passes (flip TTA, or the models of an ensemble), of the passes'
    type (:class:`CacheCandidates` or :class:`Candidates`: one box space): boxes by :func:`fuse_boxes` (``score``:
    how a fused box is scored), the gate the passes' mean."""
    kinds = {type(c) for c in passes}
    if len(kinds) != 1:
        raise TypeError(f"cannot fuse boxes of different spaces: {sorted(k.__name__ for k in kinds)}")
    boxes, scores = fuse_boxes([c[:2] for c in passes], score=score)
    return kinds.pop()(boxes, scores, float(np.mean([c.gate for c in passes])))


def tta_candidates(backend, images: list[torch.Tensor], image_size: int, settings: InferenceSettings
                   ) -> list[CacheCandidates]:
    """Return per image the candidates of ``backend`` (:class:`pneumodet.forward.TorchBackend` or another with its
    ``candidates``) for float [C, image_size, image_size] images in [0, 1], in their (cache) pixels, run as
    ``settings`` say. With TTA (flips, and each size of ``settings.tta_scales``) the boxes of every pass are fused
    and the gate is their mean."""
    run = {"box_refine": settings.box_refine, "box_vote": settings.box_vote, "bf16": settings.bf16}
    if not settings.hflip_tta:
        return backend.candidates(images, image_size, **run)
    width = images[0].shape[-1]
    passes: list[list[CacheCandidates]] = [[] for _ in images]
    for scale in settings.scales:
        size_px = round(image_size * scale)
        plain = backend.candidates(images, size_px, **run)
        flipped = backend.candidates([im.flip(-1) for im in images], size_px, **run)
        for per_image, a, b in zip(passes, plain, flipped, strict=True):
            per_image += [a, b._replace(boxes_cache_xyxy=hflip_boxes(b.boxes_cache_xyxy, width))]
    return [fuse_candidates(p) for p in passes]


def hflip_boxes(boxes_xyxy, width: float) -> np.ndarray:
    """Return boxes mirrored left-right in an image ``width`` pixels wide."""
    out = as_boxes(boxes_xyxy).copy()
    out[:, [0, 2]] = width - out[:, [2, 0]]
    return out
