"""The box-level numbers detection papers and lesion-detection challenges read, beside the RSNA metric: FROC,
COCO average precision and the precision-recall curve, and calibration. Pure numpy on boxes.

- FROC: lesion sensitivity (truth boxes found) against false positives per image, as the box score threshold
  falls; read at 1/8, 1/4, ..., 8 false positives per image and averaged there (the CPM of LUNA16). A truth
  box is found when a box overlaps it with IoU > ``HIT_IOU`` (0.4, the RSNA metric's loosest threshold),
  each box matching at most one truth box, highest scores first.
- COCO AP: pycocotools' bbox evaluation for one class (IoU >= 0.50:0.05:0.95, at most 100 boxes an image,
  101-point interpolated precision), checked against pycocotools itself on random sets.
- Calibration: the reliability of a probability (the gate's, or a box's score as the chance it finds a truth
  box), in ten equal bins, and the expected calibration error (ECE): the bins' |accuracy - confidence|
  weighted by their share of the items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumodet.boxes import as_boxes, iou_xyxy

HIT_IOU = 0.4
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
COCO_IOUS = np.round(np.arange(0.5, 0.951, 0.05), 2)
COCO_RECALLS = np.linspace(0.0, 1.0, 101)
COCO_MAX_BOXES = 100


def greedy_hits(truth_xyxy, pred_xyxy, scores, iou: float, inclusive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (order, hit): the predictions' indices by descending score, and whether each, in that order, takes
    a truth box not yet taken: the one it overlaps most, with IoU > ``iou`` (>= with ``inclusive``)."""
    truth, pred = as_boxes(truth_xyxy), as_boxes(pred_xyxy)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hit = np.zeros(len(order), dtype=bool)
    if not len(truth) or not len(pred):
        return order, hit
    overlaps = iou_xyxy(pred[order], truth)
    taken = np.zeros(len(truth), dtype=bool)
    for k, row in enumerate(overlaps):
        candidates = np.where(taken, -1.0, row)
        j = int(np.argmax(candidates))
        if candidates[j] >= 0 and (candidates[j] >= iou if inclusive else candidates[j] > iou):
            taken[j], hit[k] = True, True
    return order, hit


def _scored_hits(truths: Sequence, predictions: Sequence, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Return every box of every image: (scores, hit), by the matching of :func:`greedy_hits`."""
    scores, hits = [], []
    for truth, pred in zip(truths, predictions, strict=True):
        order, hit = greedy_hits(truth, pred.boxes_xyxy, pred.scores, iou)
        scores.append(np.asarray(pred.scores, dtype=np.float64)[order])
        hits.append(hit)
    return (np.concatenate(scores) if scores else np.zeros(0)), (np.concatenate(hits) if hits else np.zeros(0, bool))


def froc(truths: Sequence, predictions: Sequence, iou: float = HIT_IOU, rates=FROC_RATES) -> dict:
    """Return the FROC of ``predictions`` (Prediction per image) against ``truths`` (xyxy per image): the curve
    (false positives per image, sensitivity, at each score threshold) and the sensitivity at each of ``rates``
    false positives per image (the highest reached without exceeding it), with their mean."""
    n_images, n_truth = len(truths), sum(len(as_boxes(t)) for t in truths)
    scores, hits = _scored_hits(truths, predictions, iou)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)  # ties fall together
    fp_per_image = np.cumsum(~hits)[last] / max(n_images, 1)
    sensitivity = np.cumsum(hits)[last] / n_truth if n_truth else np.full(int(last.sum()), np.nan)
    thresholds = scores[last]
    at = []
    for rate in rates:
        reached = sensitivity[fp_per_image <= rate + 1e-12]
        at.append(float(reached.max()) if len(reached) else 0.0)
    return {"iou": iou, "fp_per_image": list(rates), "sensitivity": at,
            "mean_sensitivity": float(np.mean(at)) if n_truth else None,
            "curve": {"fp_per_image": fp_per_image.tolist(), "sensitivity": sensitivity.tolist(),
                      "threshold": thresholds.tolist()}}


def _coco_matches(truths: Sequence, predictions: Sequence, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, true positive) of every box pycocotools would evaluate at ``iou``, in its order."""
    scores, matched = [], []
    for truth, pred in zip(truths, predictions, strict=True):
        order = np.argsort(-np.asarray(pred.scores, dtype=np.float64), kind="mergesort")[:COCO_MAX_BOXES]
        boxes, box_scores = as_boxes(pred.boxes_xyxy)[order], np.asarray(pred.scores, dtype=np.float64)[order]
        truth = as_boxes(truth)
        overlaps = iou_xyxy(boxes, truth)
        taken = np.zeros(len(truth), dtype=bool)
        hit = np.zeros(len(boxes), dtype=bool)
        for k in range(len(boxes)):
            best, choice = min(iou, 1 - 1e-10), -1
            for j in range(len(truth)):  # pycocotools' loop: the last truth box of the highest IoU >= iou
                if taken[j] or overlaps[k, j] < best:
                    continue
                best, choice = overlaps[k, j], j
            if choice >= 0:
                taken[choice], hit[k] = True, True
        scores.append(box_scores)
        matched.append(hit)
    return (np.concatenate(scores) if scores else np.zeros(0)), (np.concatenate(matched) if matched else np.zeros(0, bool))


def precision_recall(truths: Sequence, predictions: Sequence, iou: float = 0.5) -> dict:
    """Return the interpolated precision-recall curve at ``iou`` as pycocotools builds it: precision at each of
    101 recall levels (0 where the recall is never reached), and its mean, the AP at that IoU."""
    n_truth = sum(len(as_boxes(t)) for t in truths)
    scores, hit = _coco_matches(truths, predictions, iou)
    order = np.argsort(-scores, kind="mergesort")
    tp, fp = np.cumsum(hit[order]), np.cumsum(~hit[order])
    if not n_truth:
        return {"iou": iou, "recall": COCO_RECALLS.tolist(), "precision": [None] * len(COCO_RECALLS), "ap": None}
    recall = tp / n_truth
    precision = tp / (tp + fp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    at = np.searchsorted(recall, COCO_RECALLS, side="left")
    sampled = np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)] if len(envelope) else 0, 0.0)
    return {"iou": iou, "recall": COCO_RECALLS.tolist(), "precision": sampled.tolist(), "ap": float(sampled.mean())}


def coco_ap(truths: Sequence, predictions: Sequence) -> dict:
    """Return COCO's bbox AP (mean over IoU 0.50:0.95) with AP50 and AP75; None without any truth box."""
    curves = {float(t): precision_recall(truths, predictions, float(t))["ap"] for t in COCO_IOUS}
    if curves[0.5] is None:
        return {"ap": None, "ap50": None, "ap75": None}
    return {"ap": float(np.mean(list(curves.values()))), "ap50": curves[0.5], "ap75": curves[0.75]}


def calibration(probabilities, outcomes, bins: int = 10) -> dict:
    """Return the reliability of ``probabilities`` for binary ``outcomes``: per equal-width bin its range, count,
    mean probability and observed rate, and the expected calibration error (None without items)."""
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(outcomes, dtype=bool)
    keep = np.isfinite(p)
    p, y = p[keep], y[keep]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    rows, gap = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        confidence = float(p[inside].mean()) if n else None
        rate = float(y[inside].mean()) if n else None
        if n:
            gap += n * abs(rate - confidence)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n, "confidence": confidence,
                     "observed": rate})
    return {"ece": gap / len(p) if len(p) else None, "items": int(len(p)), "bins": rows}


def box_outcomes(truths: Sequence, predictions: Sequence, iou: float = HIT_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Return (score, found a truth box) for every predicted box: what box-score calibration is measured on."""
    return _scored_hits(truths, predictions, iou)
