"""Evaluation figures: RSNA mAP against score threshold, ROC, and true vs predicted boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumodet.report.plots import _save, draw_boxes, plt


def plot_threshold(thresholds, curve, tuned, out: Path) -> Path:
    """RSNA mAP on val (``curve``) against the score threshold, the other tuned settings fixed."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(thresholds, curve, "-o", markersize=3)
    ax.axvline(tuned.score_threshold, color="red", linestyle=":", label=f"chosen {tuned.score_threshold:.2f}")
    ax.set_xlabel("score threshold")
    ax.set_ylabel("val RSNA mAP")
    ax.set_title(f"RSNA mAP vs threshold (NMS {tuned.nms_iou}, ≤{tuned.max_boxes} boxes, shrink {tuned.shrink})")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_roc(labels: np.ndarray, scores: np.ndarray, point: dict, threshold: float, out: Path) -> Path:
    """Image-level ROC of the image score (the gate's probability, else the highest box score) with the
    operating point ``point`` at ``threshold``."""
    fig, ax = plt.subplots(figsize=(5, 5))
    if labels.any() and (~labels).any():
        cuts = np.unique(np.concatenate([[np.inf], scores, [-np.inf]]))[::-1]
        tpr = [(scores[labels] >= c).mean() for c in cuts]
        fpr = [(scores[~labels] >= c).mean() for c in cuts]
        ax.plot(fpr, tpr, label=f"AUC {point['roc_auc']:.3f}")
        ax.plot(1 - point["specificity"], point["sensitivity"], "ro",
                label=f"threshold {threshold:.2f}: sens {point['sensitivity']:.2f}, "
                      f"spec {point['specificity']:.2f}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("sensitivity")
    ax.set_title("Image-level ROC on val")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out)


def choose_examples(val, per_image: np.ndarray, predictions, n: int = 4) -> list[tuple[str, int]]:
    """Return (kind, index) for a fixed sample: worst misses, false alarms, true negatives, hits."""
    positive = np.array([len(t) > 0 for t in val.truths])
    has_pred = np.array([len(p.scores) > 0 for p in predictions])
    score = np.nan_to_num(per_image, nan=1.0)
    top = [float(p.scores.max()) if len(p.scores) else 0.0 for p in predictions]
    picks: list[tuple[str, int]] = []
    misses = np.flatnonzero(positive)
    picks += [("worst-miss", int(i)) for i in misses[np.argsort(score[misses], kind="stable")][:n]]
    alarms = np.flatnonzero(~positive & has_pred)
    picks += [("false-alarm", int(i)) for i in alarms[np.argsort([-top[i] for i in alarms], kind="stable")][:n // 2]]
    quiet = np.flatnonzero(~positive & ~has_pred)
    picks += [("true-negative", int(i)) for i in quiet[: n // 2]]
    hits = np.flatnonzero(positive & (score > 0))
    picks += [("hit", int(i)) for i in hits[np.argsort(-score[hits], kind="stable")][: n // 2]]
    seen, unique = set(), []
    for kind, i in picks:
        if i not in seen:
            seen.add(i)
            unique.append((kind, i))
    return unique


def plot_examples(dataset, val, predictions, per_image: np.ndarray, out_dir: Path) -> list[Path]:
    """One PNG per chosen val image: truth (left) and predictions with scores (right)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    written = []
    for rank, (kind, i) in enumerate(choose_examples(val, per_image, predictions)):
        image, _ = dataset[i]
        record = dataset.records.iloc[i]
        sx, sy = record["scale_x"], record["scale_y"]
        to_cache = np.array([sx, sy, sx, sy])
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        for ax in axes:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        draw_boxes(axes[0], val.truths[i] * to_cache, "lime", width=2)
        draw_boxes(axes[1], predictions[i].boxes_xyxy * to_cache, "red", predictions[i].scores, width=2)
        axes[0].set_title(f"truth: {len(val.truths[i])} box(es), view {val.views[i]}", fontsize=9)
        image_score = "not counted" if np.isnan(per_image[i]) else f"{per_image[i]:.2f}"
        axes[1].set_title(f"predicted: {len(predictions[i].scores)} box(es); image RSNA score {image_score}",
                          fontsize=9)
        fig.suptitle(f"{kind}: {val.patient_ids[i]}", fontsize=9)
        written.append(_save(fig, out_dir / f"{rank:02d}-{kind}.png"))
    return written
