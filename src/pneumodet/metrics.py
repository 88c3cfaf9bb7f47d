"""The RSNA Pneumonia Detection Challenge metric, and image-level metrics. Pure numpy on boxes.

Per image, for each IoU threshold t in 0.40, 0.45, ..., 0.75: predictions are taken by descending
confidence; each is a true positive when it matches a not-yet-matched truth box with IoU > t
(strictly above, as the official text says; the popular kernel used >=); precision(t) =
TP / (TP + FP + FN). The image's score is the mean over the thresholds. An image with no truth
and no prediction is left out; one with no truth and any prediction scores 0 and counts. The data
set's score is the mean over the images that count. This is not COCO/VOC mAP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pneumodet.boxes import as_boxes, iou_xyxy, xywh_to_xyxy

THRESHOLDS = np.round(np.arange(0.40, 0.751, 0.05), 2)


@dataclass(frozen=True)
class Prediction:
    """One image's predictions: ``boxes_xyxy`` (N, 4) and ``scores`` (N,), any order."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Prediction:
        return cls(np.zeros((0, 4)), np.zeros(0))

    @classmethod
    def from_xywh(cls, boxes_xywh, scores) -> Prediction:
        return cls(xywh_to_xyxy(boxes_xywh), np.asarray(scores, dtype=np.float64).reshape(-1))


def image_precisions(truth_xyxy, pred_xyxy, scores) -> np.ndarray | None:
    """Return precision at each of the 8 thresholds for one image, or None if the image does not count."""
    truth, pred = as_boxes(truth_xyxy), as_boxes(pred_xyxy)
    if len(truth) == 0 and len(pred) == 0:
        return None
    if len(truth) == 0 or len(pred) == 0:
        return np.zeros(len(THRESHOLDS))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    iou = iou_xyxy(pred[order], truth)  # (P, T), rows by descending confidence
    # all 8 thresholds at once: matched[k, j] says truth j is taken at threshold k
    matched = np.zeros((len(THRESHOLDS), len(truth)), dtype=bool)
    tp = np.zeros(len(THRESHOLDS))
    rows = np.arange(len(THRESHOLDS))
    for row in iou:
        candidates = np.where(~matched & (row[None, :] > THRESHOLDS[:, None]), row[None, :], -1.0)
        best = candidates.argmax(axis=1)
        hit = candidates[rows, best] > THRESHOLDS
        matched[rows[hit], best[hit]] = True
        tp += hit
    precisions = tp / (len(pred) + len(truth) - tp)  # TP / (TP + FP + FN)
    return precisions


OUTCOMES = ("miss", "false alarm", "hit", "true negative")


def outcome_of(truth_xyxy, pred_xyxy, scores) -> tuple[str, float | None]:
    """Return (outcome, image RSNA score) of one image. A positive is a hit when a box finds one of its truth
    boxes at the loosest IoU threshold (0.40), else a miss; a negative with any box is a false alarm, without
    one a true negative (which does not count, so has no score)."""
    precisions = image_precisions(truth_xyxy, pred_xyxy, scores)
    if precisions is None:
        return "true negative", None
    value = float(precisions.mean())
    if len(as_boxes(truth_xyxy)) == 0:
        return "false alarm", value
    return ("hit" if precisions[0] > 0 else "miss"), value


@dataclass(frozen=True)
class RsnaScore:
    rsna_map: float
    per_threshold: dict[str, float]
    n_images: int  # images that count
    per_image: np.ndarray  # (n_all,) image score, NaN where the image does not count

    def to_dict(self) -> dict:
        return {"rsna_map": self.rsna_map, "per_threshold": self.per_threshold, "n_images": self.n_images}


def rsna_map(truths: Sequence, predictions: Sequence[Prediction]) -> RsnaScore:
    """Return the RSNA score of ``predictions`` against ``truths`` (xyxy arrays), image by image."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    rows, per_image = [], np.full(len(truths), np.nan)
    for i, (truth, pred) in enumerate(zip(truths, predictions, strict=True)):
        precisions = image_precisions(truth, pred.boxes_xyxy, pred.scores)
        if precisions is not None:
            rows.append(precisions)
            per_image[i] = precisions.mean()
    table = np.asarray(rows).reshape(-1, len(THRESHOLDS))
    means = table.mean(axis=0) if len(table) else np.zeros(len(THRESHOLDS))
    return RsnaScore(
        rsna_map=float(means.mean()) if len(table) else 0.0,
        per_threshold={f"{t:.2f}": float(m) for t, m in zip(THRESHOLDS, means, strict=True)},
        n_images=len(table),
        per_image=per_image,
    )


def roc_auc(labels, scores) -> float:
    """Return the ROC AUC of binary ``labels`` ranked by ``scores`` (ties count half); NaN if one class."""
    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    unique, start = np.unique(sorted_scores, return_index=True)
    ends = np.append(start[1:], len(scores))
    for s, e in zip(start, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
