"""The run's val images with truth, predictions, per-image RSNA score and outcome, for the review page."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pneumodet.boxes import xywh_to_xyxy, xyxy_to_xywh
from pneumodet.candidates import Candidates
from pneumodet.metrics import outcome_of
from pneumodet.postprocess import PostProcess, image_score, postprocess


@dataclass(frozen=True)
class ReviewItem:
    index: int
    patient_id: str
    view: str
    outcome: str
    score: float | None  # per-image RSNA score; None for a true negative (it does not count)
    truth_orig_xyxy: np.ndarray  # the image's own pixels
    pred_orig_xyxy: np.ndarray
    pred_scores: np.ndarray
    row: int  # cache row
    scale: tuple[float, float]  # (cache px / width, cache px / height): original pixels to the cache's
    image_score: float | None = None  # the gate's probability, else the highest box score

    def to_json(self) -> dict:
        return {"index": self.index, "view": self.view, "outcome": self.outcome, "score": self.score,
                "n_truth": len(self.truth_orig_xyxy), "n_pred": len(self.pred_scores),
                "top_score": float(self.pred_scores.max()) if len(self.pred_scores) else None,
                "image_score": self.image_score}


def build_items(dataset, raw: dict[str, Candidates], pp: PostProcess) -> list[ReviewItem]:
    """Return review items for a PneumoniaDataset (the val split), sorted worst first (true negatives last)."""
    items = []
    for i, record in dataset.records.iterrows():
        pid = record["patient_id"]
        truth = xywh_to_xyxy(dataset.boxes_orig_xywh(i))
        found = raw.get(pid, Candidates.empty())
        pred, scores = postprocess(found.boxes_orig_xyxy, found.scores, pp, found.gate)
        outcome, score = outcome_of(truth, pred, scores)
        view = record["view"] if isinstance(record["view"], str) else "unknown"
        items.append(ReviewItem(0, pid, view, outcome, score, truth, pred, scores, int(record["row"]),
                                (float(record["scale_x"]), float(record["scale_y"])),
                                image_score(found.boxes_orig_xyxy, found.scores, pp, found.gate)))
    items.sort(key=lambda it: (it.score is None, it.score if it.score is not None else 0.0, it.patient_id))
    return [replace(it, index=i) for i, it in enumerate(items)]


def review_detail(item: ReviewItem, cache_shape: tuple[int, ...]) -> dict:
    """Return what the large view draws: truth and predicted boxes (x, y, width, height, in the image's own
    pixels), their scores, and the image's original (height, width)."""
    height, width = round(cache_shape[0] / item.scale[1]), round(cache_shape[1] / item.scale[0])
    return {**item.to_json(), "patient_id": item.patient_id, "original_size": [height, width],
            "truth": xyxy_to_xywh(item.truth_orig_xyxy).round(1).tolist(),
            "pred": [[*box, round(float(s), 4)] for box, s in zip(xyxy_to_xywh(item.pred_orig_xyxy).round(1).tolist(),
                                                                  item.pred_scores, strict=True)]}


def side_markers(view: str | None, row_direction: str | None = None) -> tuple[str, str] | None:
    """Return the (image left, image right) L/R markers of a radiograph: from PatientOrientation's row direction
    when the file gives one, else, for a frontal view (PA or AP), the display convention (the patient's right on
    the image's left); None when neither says."""
    if row_direction in ("L", "R"):
        return ("R", "L") if row_direction == "L" else ("L", "R")
    return ("R", "L") if view in ("PA", "AP") else None


def render_png(pixels: np.ndarray, truth_xyxy=None, pred_xyxy=None, pred_scores=None, scale=(1.0, 1.0),
               size: int = 512, markers: tuple[str, str] | None = None) -> bytes:
    """Return a PNG of the image with truth (green) and predicted (red, with scores) boxes (``size`` 0: as is,
    in gray); ``markers``: the letters to print at the image's left and right edges (:func:`side_markers`)."""
    if size == 0:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()
    image = Image.fromarray(pixels).convert("RGB")
    factor = size / max(image.size)
    image = image.resize((round(image.width * factor), round(image.height * factor)), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    if markers:
        for letter, x in zip(markers, (8, image.width - 24), strict=True):
            draw.text((x, image.height // 2 - 12), letter, fill=(255, 220, 0), font_size=24, stroke_width=2,
                      stroke_fill=(0, 0, 0))
    sx, sy = scale[0] * factor, scale[1] * factor
    for boxes, color, scores in ((truth_xyxy, (0, 220, 0), None), (pred_xyxy, (255, 40, 40), pred_scores)):
        if boxes is None:
            continue
        for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes).reshape(-1, 4)):
            rect = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
            draw.rectangle(rect, outline=color, width=3)
            if scores is not None:
                draw.text((rect[0] + 3, rect[1] + 2), f"{scores[i]:.2f}", fill=color, font_size=18)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_val_predictions(path: Path) -> dict[str, Candidates]:
    """Return patient_id -> Candidates saved by evaluate (``val.csv``, and ``val.gate.csv`` for a gated run)."""
    from pneumodet.report.submission import read_candidates

    return read_candidates(path)
