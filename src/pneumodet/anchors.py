"""Anchor shapes fitted to the training boxes, as YOLO's autoanchor does, with the configured ones as the fallback.

The RPN starts every proposal from an anchor: a box of ``size`` (its area is size squared) and ``ratio`` (its
height over its width; torchvision's ``aspect_ratios``) at each position of each FPN level. The fixed anchors
(squares, and 1:2 and 2:1 boxes, sizes doubling from level to level) were made for COCO; pneumonia boxes are
mostly taller than wide. :func:`fit_anchors` keeps the sizes' doubling (each FPN level keeps its scale against
its stride), scales them together, and places the ratios by k-means on the boxes' log height/width. The fit is
kept only when it matches the boxes better: each box's best centred IoU with any anchor shape, averaged.
numpy only: no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: fewer training boxes than this and the fixed anchors are kept: a few dozen boxes fit noise
MIN_BOXES = 30
#: a fit must raise the mean best IoU by this much to replace the fixed anchors
MIN_GAIN = 0.01
#: the sizes' common scale is searched over 2 ** (k / 8) for k in -SCALE_STEPS .. SCALE_STEPS (one octave each way)
SCALE_STEPS = 8


@dataclass(frozen=True)
class AnchorFit:
    """The anchors a run uses and why: ``fitted`` False means the fixed ones were kept (``reason`` says why)."""

    sizes: tuple[int, ...]
    ratios: tuple[float, ...]
    fitted: bool
    reason: str
    n_boxes: int
    mean_best_iou: float  # of the anchors chosen, over the training boxes
    fixed_mean_best_iou: float  # of the configured anchors

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        chosen = "fitted to" if self.fitted else f"fixed ({self.reason}); checked on"
        return (f"anchors {chosen} {self.n_boxes} training boxes: sizes {list(self.sizes)}, ratios "
                f"{list(self.ratios)} (h/w); mean best IoU {self.mean_best_iou:.3f}, the fixed ones "
                f"{self.fixed_mean_best_iou:.3f}")


def anchor_shapes(sizes, ratios) -> np.ndarray:
    """Return the (len(sizes) * len(ratios), 2) widths and heights torchvision's AnchorGenerator makes."""
    sizes, ratios = np.asarray(sizes, dtype=np.float64), np.asarray(ratios, dtype=np.float64)
    h_ratios = np.sqrt(ratios)
    widths = (sizes[:, None] / h_ratios[None, :]).ravel()
    heights = (sizes[:, None] * h_ratios[None, :]).ravel()
    return np.stack([widths, heights], axis=1)


def best_iou(wh: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Return each box's highest IoU with any anchor shape, both centred at one point: (N,)."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    inter = np.minimum(wh[:, None, 0], shapes[None, :, 0]) * np.minimum(wh[:, None, 1], shapes[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + shapes[None, :, 0] * shapes[None, :, 1] - inter
    return (inter / union).max(axis=1)


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
    """Return ``k`` sorted cluster centres of ``values`` (Lloyd's algorithm from the quantiles: deterministic)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        moved = np.array([values[nearest == j].mean() if (nearest == j).any() else centres[j] for j in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return np.sort(centres)


def fit_anchors(wh: np.ndarray, sizes, ratios) -> AnchorFit:
    """Return anchors for boxes of widths and heights ``wh`` (N, 2), in the model's pixels.

    ``sizes`` (one per FPN level) and ``ratios`` are the configured anchors: the fallback, and the start whose
    sizes are scaled. The fit has as many ratios as they do.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(axis=1)]
    sizes, ratios = tuple(int(s) for s in sizes), tuple(float(r) for r in ratios)
    fixed = float(best_iou(wh, anchor_shapes(sizes, ratios)).mean()) if len(wh) else 0.0

    def keep(reason: str) -> AnchorFit:
        return AnchorFit(sizes, ratios, False, reason, len(wh), fixed, fixed)

    if len(wh) < MIN_BOXES:
        return keep(f"{len(wh)} boxes, fewer than {MIN_BOXES}")
    fitted_ratios = tuple(round(float(r), 2) for r in np.exp(kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), len(ratios))))
    best_sizes, best = sizes, -1.0
    for k in range(-SCALE_STEPS, SCALE_STEPS + 1):
        scaled = tuple(max(1, round(s * 2 ** (k / SCALE_STEPS))) for s in sizes)
        score = float(best_iou(wh, anchor_shapes(scaled, fitted_ratios)).mean())
        if score > best + 1e-12:
            best_sizes, best = scaled, score
    if best < fixed + MIN_GAIN:
        return keep(f"the fit's mean best IoU {best:.3f} is not {MIN_GAIN} above theirs")
    return AnchorFit(best_sizes, fitted_ratios, True, "", len(wh), best, fixed)
