"""Evaluation figures, drawn from the tables :func:`pneumodet.assess.assess` writes: RSNA mAP against the score
threshold, ROC, FROC, precision-recall, calibration, and truth and prediction overlaid on chosen images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.boxes import iou_xyxy, original_to_cache_xyxy
from pneumodet.report.plots import _save, draw_boxes, plt
from pneumodet.stats import with_ci


def plot_threshold(thresholds, curve, tuned, out: Path, label: str = "val") -> Path:
    """RSNA mAP (``curve``) against the score threshold, the other tuned settings fixed."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(thresholds, curve, "-o", markersize=3)
    ax.axvline(tuned.score_threshold, color="red", linestyle=":", label=f"chosen {tuned.score_threshold:.2f}")
    ax.set_xlabel("score threshold")
    ax.set_ylabel(f"{label} RSNA mAP")
    ax.set_title(f"RSNA mAP vs threshold (NMS {tuned.nms_iou}, ≤{tuned.max_boxes} boxes, shrink {tuned.shrink})")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_roc(labels: np.ndarray, scores: np.ndarray, level: dict, out: Path, label: str = "val") -> Path:
    """Image-level ROC of the image score (the gate's probability, else the highest box score), with the
    detector's own call (any box kept) as a point; AUC and the point's figures with their intervals."""
    fig, ax = plt.subplots(figsize=(5.2, 5))
    if labels.any() and (~labels).any():
        cuts = np.unique(np.concatenate([[np.inf], scores, [-np.inf]]))[::-1]
        tpr = [(scores[labels] >= c).mean() for c in cuts]
        fpr = [(scores[~labels] >= c).mean() for c in cuts]
        ax.plot(fpr, tpr, label=f"AUC {with_ci(level['roc_auc'], level['roc_auc_ci'])}")
        if level["sensitivity"] is not None and level["specificity"] is not None:
            ax.plot(1 - level["specificity"], level["sensitivity"], "ro",
                    label=f"the call: sensitivity {with_ci(level['sensitivity'], level['sensitivity_ci'])},\n"
                          f"specificity {with_ci(level['specificity'], level['specificity_ci'])}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"Image-level ROC on {label}")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out)


def plot_froc(curve: pd.DataFrame, froc: dict, out: Path, label: str = "val") -> Path:
    """Lesion sensitivity against false positives per image (log scale), the read-out points marked."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    if len(curve):
        ax.step(np.maximum(curve["fp_per_image"], 1e-3), curve["sensitivity"], where="post")
    ax.plot(froc["fp_per_image"], froc["sensitivity"], "ro", markersize=4,
            label=f"mean at 1/8-8 FP per image: {froc['mean_sensitivity'] or 0:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel(f"truth boxes found (IoU > {froc['iou']})")
    ax.set_title(f"FROC on {label}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out)


def plot_precision_recall(curve: pd.DataFrame, coco: dict, out: Path, label: str = "val") -> Path:
    """Interpolated precision against recall at IoU 0.5 (COCO's 101 points), with COCO AP50 and AP."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot(curve["recall"], curve["precision"].astype(float))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (truth boxes found)")
    ax.set_ylabel("precision")
    ap50, ap = coco["ap50"], coco["ap"]
    ax.set_title(f"Boxes on {label}: AP50 {ap50 or 0:.3f}, COCO AP[.5:.95] {ap or 0:.3f}", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_calibration(table: pd.DataFrame, calibration: dict, out: Path, label: str = "val") -> Path:
    """Reliability diagrams: observed rate against mean predicted probability per bin, for the gate (any opacity
    in the image) and the box scores (the box finds a truth box); ECE in each title."""
    kinds = [k for k in ("gate", "box") if calibration.get(k)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.8 * len(kinds), 4.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = table[(table["score"] == kind) & (table["n"] > 0)]
        ax.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
        ax.plot(rows["confidence"], rows["observed"], "-o", markersize=4)
        for _, row in rows.iterrows():
            ax.annotate(str(int(row["n"])), (row["confidence"], row["observed"]), fontsize=6,
                        textcoords="offset points", xytext=(3, -8))
        ece = calibration[kind]["ece"]
        what = "image-level gate" if kind == "gate" else "box scores"
        ax.set_title(f"{what} on {label}: ECE {ece if ece is not None else float('nan'):.3f}", fontsize=10)
        ax.set_xlabel("mean predicted probability (items per bin marked)")
        ax.set_ylabel("observed rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    return _save(fig, out)


def choose_examples(per_image: pd.DataFrame, n: int = 4) -> list[tuple[str, int]]:
    """Return (outcome, index) for a fixed sample, named by each image's true outcome: the worst misses, the most
    confident false alarms, true negatives, the hits with the poorest overlap and the best."""
    score = per_image["rsna_score"].fillna(1.0).to_numpy()
    top = per_image["image_score"].to_numpy()

    def pick(outcome: str, key, count: int) -> list[tuple[str, int]]:
        rows = np.flatnonzero(per_image["outcome"].to_numpy() == outcome)
        return [(outcome, int(i)) for i in rows[np.argsort(key[rows], kind="stable")][:count]]

    picks = pick("miss", score, n) + pick("false alarm", -top, n // 2) + pick("true negative", -top, n // 2)
    picks += pick("hit", score, n // 2) + pick("hit", -score, n // 2)
    seen, unique = set(), []
    for outcome, i in picks:
        if i not in seen:
            seen.add(i)
            unique.append((outcome, i))
    return unique


def plot_examples(dataset, val, predictions, per_image: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per chosen image: truth (green) and predicted boxes (red, each with its score and its IoU with the
    truth box it overlaps most) overlaid on the image, named and titled by the image's outcome."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    written = []
    for rank, (outcome, i) in enumerate(choose_examples(per_image)):
        image, _ = dataset[i]
        record = dataset.records.iloc[i]
        size = (int(record["original_height"]), int(record["original_width"]))
        truth, found = val.truths[i], predictions[i]  # boxes in the image's own pixels; drawn in the cache's
        truth_cache, found_cache = (original_to_cache_xyxy(b, image.shape[-1], size) for b in (truth, found.boxes_xyxy))
        overlaps = iou_xyxy(found.boxes_xyxy, truth).max(axis=1) if len(truth) else np.zeros(len(found.scores))
        fig, ax = plt.subplots(figsize=(5, 5.3))
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
        draw_boxes(ax, truth_cache, "lime", width=2)
        draw_boxes(ax, found_cache, "red", width=2)
        for box, s, overlap in zip(found_cache, found.scores, overlaps, strict=True):
            ax.text(box[0], box[1] - 2, f"{s:.2f}, IoU {overlap:.2f}", color="red", fontsize=7, va="bottom")
        score = per_image.at[i, "rsna_score"]
        ax.set_title(f"{outcome}: {len(truth)} true (green), {len(found.scores)} predicted (red); image RSNA score "
                     f"{'not counted' if np.isnan(score) else f'{score:.2f}'}\n{val.patient_ids[i]}, view "
                     f"{val.views[i]}", fontsize=8)
        written.append(_save(fig, out_dir / f"{rank:02d}-{outcome.replace(' ', '-')}.png"))
    return written
