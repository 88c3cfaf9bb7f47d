"""Box formats in one place.

``boxes_xywh``: (N, 4) x, y, width, height (RSNA CSV). ``boxes_xyxy``: (N, 4) x1, y1, x2, y2
(torchvision). All functions take and return float numpy arrays; N may be 0.
"""

from __future__ import annotations

import numpy as np


def as_boxes(boxes) -> np.ndarray:
    """Return ``boxes`` as a float64 (N, 4) array (an empty input gives shape (0, 4))."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return arr.reshape(-1, 4)


def xywh_to_xyxy(boxes_xywh) -> np.ndarray:
    """Return (N, 4) xyxy boxes from (N, 4) xywh boxes."""
    b = as_boxes(boxes_xywh).copy()
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def xyxy_to_xywh(boxes_xyxy) -> np.ndarray:
    """Return (N, 4) xywh boxes from (N, 4) xyxy boxes."""
    b = as_boxes(boxes_xyxy).copy()
    b[:, 2] -= b[:, 0]
    b[:, 3] -= b[:, 1]
    return b


def clip_xyxy(boxes_xyxy, height: int, width: int) -> np.ndarray:
    """Return xyxy boxes clipped to an image of ``height`` x ``width`` pixels."""
    b = as_boxes(boxes_xyxy).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def cache_to_original_xyxy(boxes_cache_xyxy, cache_px: int, original_size: tuple[int, int]) -> np.ndarray:
    """Return boxes_orig_xyxy: boxes in the cache's square ``cache_px`` image mapped to the image's own
    ``original_size`` (height, width) pixels and clipped to it. x scales by width / cache_px, y by height / cache_px."""
    height, width = original_size
    return clip_xyxy(scale_boxes(boxes_cache_xyxy, width / cache_px, height / cache_px), height, width)


def original_to_cache_xyxy(boxes_orig_xyxy, cache_px: int, original_size: tuple[int, int]) -> np.ndarray:
    """Return boxes in the image's own ``original_size`` (height, width) pixels mapped into the cache's square
    ``cache_px`` image (not clipped)."""
    height, width = original_size
    return scale_boxes(boxes_orig_xyxy, cache_px / width, cache_px / height)


def scale_boxes(boxes, scale_x: float, scale_y: float) -> np.ndarray:
    """Return boxes (xywh or xyxy: both scale the same way) multiplied by per-axis factors."""
    return as_boxes(boxes) * np.array([scale_x, scale_y, scale_x, scale_y])


def area_xyxy(boxes_xyxy) -> np.ndarray:
    """Return the (N,) areas of xyxy boxes; inverted boxes have area 0."""
    b = as_boxes(boxes_xyxy)
    return (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)


def iou_xyxy(a_xyxy, b_xyxy) -> np.ndarray:
    """Return the (N, M) IoU matrix between N and M xyxy boxes (0 where the union is empty)."""
    a, b = as_boxes(a_xyxy), as_boxes(b_xyxy)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clip(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_xyxy(a)[:, None] + area_xyxy(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def shrink_xyxy(boxes_xyxy, factor: float) -> np.ndarray:
    """Return xyxy boxes scaled about their centres by ``factor`` (width and height)."""
    b = as_boxes(boxes_xyxy)
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = (b[:, 2:] - b[:, :2]) * factor / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def boxes_to_masks(boxes_xyxy, height: int, width: int, shape: str = "rectangle") -> np.ndarray:
    """Return (N, height, width) uint8 masks filled inside each xyxy box.

    ``shape`` is "rectangle" (the seed's filled boxes) or "ellipse" (inscribed ellipse).
    """
    b = as_boxes(boxes_xyxy)
    masks = np.zeros((len(b), height, width), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(b):
        c1, r1 = int(np.floor(max(x1, 0))), int(np.floor(max(y1, 0)))
        c2, r2 = int(np.ceil(min(x2, width))), int(np.ceil(min(y2, height)))
        if c2 <= c1 or r2 <= r1:
            continue
        if shape == "rectangle":
            masks[i, r1:r2, c1:c2] = 1
        elif shape == "ellipse":
            yy, xx = np.mgrid[r1:r2, c1:c2]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            rx, ry = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
            inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
            masks[i, r1:r2, c1:c2] = inside
        else:
            raise ValueError(f"unknown mask shape {shape!r}: use 'rectangle' or 'ellipse'")
    return masks
