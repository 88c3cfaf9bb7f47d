"""What a report says about a detector on a labelled set, under one post-processing: every figure with its 95 %
bootstrap interval, the numbers clinicians read, and the ones detection papers read.

:func:`assess` is the body of ``metrics.json`` (evaluate on val, and every external set) and the tables written
beside it as CSV. Nothing here tunes: the post-processing is given.

- The challenge's figure: RSNA mAP, per IoU threshold and by view.
- The image level, where the call is the detector's own: positive when any box is kept after the post-processing
  (so the tuned gate and box thresholds decide it). Sensitivity, specificity, PPV, NPV and the four counts at that
  call; ROC AUC of the image score (the gate's probability, else the highest box score), with the gate's and the
  highest box's side by side; a table of operating points over image-score thresholds.
- The box level: FROC and COCO AP (:mod:`pneumodet.boxmetrics`) on the boxes the post-processing keeps, every
  box threshold but its own (the curve sweeps it).
- Calibration: ECE of the gate and of the box scores.

Intervals come from one set of resamples (:mod:`pneumodet.stats`): by image, or by group where the images carry
groups (``prepare --groups``); the by-view figures use the same resamples restricted to the view.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from pneumodet.boxmetrics import box_outcomes, calibration, coco_ap, froc, precision_recall
from pneumodet.metrics import outcome_of, roc_auc, rsna_map
from pneumodet.postprocess import PostProcess, max_box_score
from pneumodet.stats import Resamples, interval, resample_weights, weighted_auc, weighted_mean, weighted_rate
from pneumodet.tuning import ValSet, apply, image_scores

#: image-score thresholds of the operating-point table
OPERATING_THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.05), 2)
#: how the image-level call is made, as metrics.json says it
CALL = "positive when the post-processing keeps any box (gate and box thresholds as tuned)"


def _with_ci(name: str, value: float, resampled: np.ndarray) -> dict:
    value = float(value)
    return {name: value if np.isfinite(value) else None, f"{name}_ci": interval(resampled)}


def _counts(labels: np.ndarray, called: np.ndarray) -> dict:
    """Return TP, FP, FN and TN of the calls ``called`` against the truth ``labels``."""
    return {"tp": int((called & labels).sum()), "fp": int((called & ~labels).sum()),
            "fn": int((~called & labels).sum()), "tn": int((~called & ~labels).sum())}


def _confusion(labels: np.ndarray, called: np.ndarray, weights: np.ndarray) -> dict:
    """Sensitivity, specificity, PPV and NPV of ``called`` against ``labels``, with intervals, and the counts."""
    out = {}
    for name, (hits, among) in {"sensitivity": (called, labels), "specificity": (~called, ~labels),
                                "ppv": (labels, called), "npv": (~labels, ~called)}.items():
        n = among.sum()
        out.update(_with_ci(name, (hits & among).sum() / n if n else np.nan, weighted_rate(hits, among, weights)))
    return {**out, **_counts(labels, called)}


def _image_level(labels: np.ndarray, scores: np.ndarray, max_box: np.ndarray, gated: bool, called: np.ndarray,
                 weights: np.ndarray) -> dict:
    """The image-level figures: ROC AUC of the image ``scores`` (the gate's where ``gated``) and of the highest
    box score ``max_box``, and the call's, each with its interval over ``weights``."""
    out = {"images": int(len(labels)), "positives": int(labels.sum())}
    out.update(_with_ci("roc_auc", roc_auc(labels, scores), weighted_auc(labels, scores, weights)))
    # with a gate, the image score is the gate's probability: its AUC is the one just computed
    out.update({"gate_roc_auc": out["roc_auc"] if gated else None, "gate_roc_auc_ci": out["roc_auc_ci"] if gated else None})
    out.update(_with_ci("max_box_roc_auc", roc_auc(labels, max_box), weighted_auc(labels, max_box, weights)))
    out["call"] = CALL
    out.update(_confusion(labels, called, weights))
    return out


def operating_points(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Return the image-level figures of calling an image positive when its score >= each threshold."""
    rows = []
    for threshold in OPERATING_THRESHOLDS:
        c = _counts(labels, scores >= threshold)
        tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
        rows.append({"threshold": float(threshold), "sensitivity": tp / (tp + fn) if tp + fn else np.nan,
                     "specificity": tn / (tn + fp) if tn + fp else np.nan, "ppv": tp / (tp + fp) if tp + fp else np.nan,
                     "npv": tn / (tn + fn) if tn + fn else np.nan, **c})
    return pd.DataFrame(rows)


def assess(val: ValSet, pp: PostProcess, resamples: Resamples | None = None) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Return (report, tables) of ``val`` under ``pp``: the report is metrics.json's body (every interval over
    ``resamples``, default 1,000 seeded ones by image, or by group where ``val`` has groups); the tables are
    per_image, operating_points, froc, precision_recall and calibration, for CSV files and plots."""
    resamples = resamples or resample_weights(len(val.truths), val.groups)
    weights = resamples.weights
    predictions = apply(val, pp)
    score = rsna_map(val.truths, predictions)
    labels, scores = val.labels, image_scores(val, pp)
    max_box = np.array([max_box_score(c.boxes_orig_xyxy, c.scores, pp) for c in val.raw])
    called = np.array([len(p.scores) > 0 for p in predictions], dtype=bool)
    report = {**_with_ci("rsna_map", score.rsna_map, weighted_mean(score.per_image, weights)),
              "per_threshold": score.per_threshold, "n_images": len(val.truths), "n_images_counted": score.n_images,
              "image_level": _image_level(labels, scores, max_box, val.has_gate, called, weights)}
    # box level: every box the post-processing keeps whatever its score (the curves sweep the score threshold)
    swept = apply(val, replace(pp, score_threshold=0.0))
    curve = froc(val.truths, swept)
    pr = precision_recall(val.truths, swept, 0.5)
    report["box_level"] = {"froc": {k: v for k, v in curve.items() if k != "curve"}, "coco": coco_ap(val.truths, swept),
                           "boxes_kept": int(sum(len(p.scores) for p in predictions))}
    gates = np.array([c.gate for c in val.raw])
    box_scores, box_found = box_outcomes(val.truths, swept)
    gate_calibration = calibration(gates, val.labels) if val.has_gate else None
    box_calibration = calibration(box_scores, box_found)
    report["calibration"] = {
        "gate": None if gate_calibration is None else {"ece": gate_calibration["ece"], "items": gate_calibration["items"]},
        "box": {"ece": box_calibration["ece"], "items": box_calibration["items"], "found_iou": curve["iou"]}}
    views = np.array(val.views)
    report["by_view"] = {}
    for view in sorted(set(val.views)):
        mask = views == view
        counted = score.per_image[mask][np.isfinite(score.per_image[mask])]  # the view's images that count
        report["by_view"][view] = {
            **_with_ci("rsna_map", counted.mean() if len(counted) else 0.0,
                       weighted_mean(score.per_image[mask], weights[:, mask])),
            **_image_level(labels[mask], scores[mask], max_box[mask], val.has_gate, called[mask], weights[:, mask])}
    report["bootstrap"] = resamples.describe()
    tables = {
        "per_image": _per_image(val, predictions, score.per_image, scores, called),
        "operating_points": operating_points(labels, scores),
        "froc": pd.DataFrame(curve["curve"]),
        "precision_recall": pd.DataFrame({"recall": pr["recall"], "precision": pr["precision"]}),
        "calibration": pd.DataFrame([{"score": "box", **row} for row in box_calibration["bins"]]
                                    + ([{"score": "gate", **row} for row in gate_calibration["bins"]]
                                       if gate_calibration else [])),
    }
    return report, tables


def _per_image(val: ValSet, predictions, per_image: np.ndarray, scores: np.ndarray,
               called: np.ndarray) -> pd.DataFrame:
    rows = []
    for i, (truth, found) in enumerate(zip(val.truths, predictions, strict=True)):
        outcome, _ = outcome_of(truth, found.boxes_xyxy, found.scores)
        rows.append({"patient_id": val.patient_ids[i], "view": val.views[i], "truth_boxes": len(truth),
                     "boxes": len(found.scores), "rsna_score": per_image[i], "image_score": scores[i],
                     "gate": val.raw[i].gate, "called": bool(called[i]), "outcome": outcome,
                     **({"group": val.groups[i]} if val.groups is not None else {})})
    return pd.DataFrame(rows)


def per_image_scores(table: pd.DataFrame) -> dict[str, float]:
    """Return patient_id -> image RSNA score (NaN where the image does not count) from a per_image table."""
    return dict(zip(table["patient_id"].astype(str), table["rsna_score"].astype(float), strict=True))

