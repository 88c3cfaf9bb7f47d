"""Plots drawn from files on disk (metrics.csv, predictions), never from live objects."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pneumodet.files import atomic_path  # noqa: E402

LOSS_TITLES = {
    "loss": "total",
    "loss_objectness": "RPN objectness",
    "loss_rpn_box_reg": "RPN box regression",
    "loss_classifier": "classifier",
    "loss_box_reg": "box regression",
    "loss_mask": "mask",
    "loss_gate": "image-level gate",
}


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _finite(epochs: list, values: list) -> tuple[list, list]:
    """Return the (epoch, value) pairs whose value is a number: a line joins the epochs that have one."""
    pairs = [(e, v) for e, v in zip(epochs, values, strict=True) if not math.isnan(v)]
    return [e for e, _ in pairs], [v for _, v in pairs]


def plot_history(metrics_csv: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw loss_curves.png (train vs val, total and each component) and val_map.png from metrics.csv."""
    from pneumodet.runs import read_metrics

    rows = read_metrics(metrics_csv)
    if not rows:
        return []
    out_dir = Path(out_dir)
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7), sharex=True)
    axes.flat[-1].axis("off")
    for ax, (key, title) in zip(axes.flat, LOSS_TITLES.items(), strict=False):
        for split, style in (("train", "-o"), ("val", "--s")):
            x, values = _finite(epochs, [r.get(f"{split}_{key}", math.nan) for r in rows])
            if values:
                ax.plot(x, values, style, label=split, markersize=3)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend()
    fig.suptitle("Mask R-CNN losses (val losses: training-mode forward, no gradients)")
    paths = [_save(fig, out_dir / "loss_curves.png")]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x, scores = _finite(epochs, [r["val_rsna_map"] for r in rows])  # epochs with validation (train.val_every_steps)
    ax.plot(x, scores, "-o", label="val RSNA mAP (best threshold)")
    ax.plot(*_finite(epochs, [r["val_threshold"] for r in rows]), ":", color="gray", label="its score threshold")
    gate_x, gate_auc = _finite(epochs, [r.get("val_gate_auc", math.nan) for r in rows])
    if gate_auc:
        ax.plot(gate_x, gate_auc, "-^", color="tab:green", markersize=3, label="image-level gate ROC AUC")
    if scores:
        best = int(np.argmax(scores))
        ax.annotate(f"best {scores[best]:.3f}", (x[best], scores[best]), textcoords="offset points", xytext=(0, 8),
                    ha="center")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Validation RSNA mAP")
    paths.append(_save(fig, out_dir / "val_map.png"))
    return paths


def draw_boxes(ax, boxes_xyxy, color: str, scores=None, width: float = 1.5) -> None:
    """Draw xyxy boxes on a matplotlib axis, with scores above them when given."""
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes_xyxy).reshape(-1, 4)):
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=width))
        if scores is not None:
            ax.text(x1, y1 - 2, f"{scores[i]:.2f}", color=color, fontsize=7, va="bottom")


def plot_augmentations(image, target, ops: list, out: str | Path) -> Path:
    """Draw ``image`` with its boxes, then once under each op; each panel titled with what was applied."""
    panels = [("original", image, target)]
    for op in ops:
        augmented, new_target = op(image.clone(), {k: (v.clone() if hasattr(v, "clone") else v)
                                                   for k, v in target.items()})
        panels.append((op.last, augmented, new_target))
    cols = 5
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img, tgt) in zip(axes.flat, panels, strict=False):
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        draw_boxes(ax, tgt["boxes"].numpy(), "red")
        if len(tgt.get("masks", [])):
            ax.imshow(np.ma.masked_equal(tgt["masks"].max(0).values.numpy(), 0), cmap="autumn", alpha=0.2)
        ax.set_title("\n".join(_wrap(title)), fontsize=8)
    fig.subplots_adjust(top=1 - 0.35 / fig.get_figheight(), hspace=0.25)
    fig.suptitle("Training augmentation: one image under each operation at each end of its range")
    return _save(fig, Path(out))


def _wrap(text: str, width: int = 48) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]
