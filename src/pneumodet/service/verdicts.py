"""A reviewer's verdicts on the review page, kept under the run folder, and their export as RSNA labels.

``RUN/review/verdicts.json`` maps each reviewed image (by patient_id) to one of

- ``correct``: the predicted boxes are right (kept as the reviewer saw them; none: a negative image);
- ``wrong``: the predicted boxes are wrong and the image has no opacity (exported as a negative);
- ``corrected``: the boxes the reviewer drew are the truth (original pixels, x, y, width, height).

It is rewritten atomically after every change, so a killed server loses nothing that was answered.
:func:`export_labels` turns them into a Kaggle-format labels CSV that ``pneumodet prepare --labels`` reads:
the loop from the reviewer's corrections back to training data.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np

from pneumodet.errors import UserError
from pneumodet.files import write_text_atomic
from pneumodet.io.labels import Annotation, write_labels

VERDICTS = ("correct", "wrong", "corrected")
VERDICTS_FILE = Path("review") / "verdicts.json"
MAX_BOXES = 20


class VerdictError(ValueError):
    """A verdict that cannot be saved (the API answers 422 with its text)."""


class VerdictStore:
    """patient_id -> {"verdict", "boxes" (x, y, width, height), "updated"}; saved on every change."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.verdicts: dict[str, dict] = {}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self.verdicts = {str(k): v for k, v in loaded["verdicts"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UserError(f"{self.path}: not a verdicts file pneumodet wrote ({type(exc).__name__}); "
                                "move it away to start a new review") from None

    def get(self, patient_id: str) -> dict | None:
        return self.verdicts.get(patient_id)

    def set(self, patient_id: str, verdict: str, boxes_xywh=(), size: tuple[int, int] | None = None,
            predicted_xywh=()) -> dict:
        """Save one image's verdict and the boxes it makes the truth.

        ``corrected``: ``boxes_xywh``, the reviewer's, checked to lie in ``size`` (H, W); ``correct``: the
        ``predicted_xywh`` the reviewer saw (kept, so a later re-tuning of the run cannot change what was
        accepted); ``wrong``: none.
        """
        if verdict not in VERDICTS:
            raise VerdictError(f"unknown verdict {verdict!r}; use one of {', '.join(VERDICTS)}")
        if verdict != "corrected" and len(boxes_xywh):
            raise VerdictError(f"drawn boxes go with the verdict corrected, not {verdict}")
        if verdict == "corrected":
            boxes = check_boxes(boxes_xywh, size)
        elif verdict == "correct":
            boxes = [[round(float(v), 1) for v in box] for box in np.asarray(predicted_xywh, float).reshape(-1, 4)]
        else:
            boxes = []
        entry = {"verdict": verdict, "boxes": boxes, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with self.lock:
            self.verdicts[patient_id] = entry
            self._save()
        return entry

    def clear(self, patient_id: str) -> None:
        with self.lock:
            if self.verdicts.pop(patient_id, None) is not None:
                self._save()

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps({"verdicts": self.verdicts}, indent=1, sort_keys=True) + "\n")


def check_boxes(boxes_xywh, size: tuple[int, int] | None) -> list[list[float]]:
    """Return the boxes as lists of 4 rounded floats, or raise VerdictError for malformed or outside ones."""
    try:
        array = np.asarray(boxes_xywh, dtype=float)
    except (TypeError, ValueError):
        array = None
    if array is None or array.size == 0 or array.ndim != 2 or array.shape[1] != 4:
        raise VerdictError("corrected needs boxes: a list of [x, y, width, height]")
    if len(array) > MAX_BOXES:
        raise VerdictError(f"at most {MAX_BOXES} boxes per image, got {len(array)}")
    if not np.isfinite(array).all() or (array[:, 2:] < 1).any() or (array[:, :2] < 0).any():
        raise VerdictError("each box needs x, y >= 0 and width, height >= 1 pixel")
    if size is not None:
        height, width = size
        if (array[:, 0] + array[:, 2] > width + 0.5).any() or (array[:, 1] + array[:, 3] > height + 0.5).any():
            raise VerdictError(f"a box reaches outside the {width}x{height} image")
    return [[round(float(v), 1) for v in box] for box in array]


def reviewed_annotations(items, store: VerdictStore) -> list[Annotation]:
    """Return the truth the reviewer gave for each reviewed item, in the page's order (``items``: ReviewItems)."""
    return [Annotation(it.patient_id, np.asarray(entry["boxes"], dtype=float).reshape(-1, 4))
            for it in items if (entry := store.get(it.patient_id)) is not None]


def export_labels(items, store: VerdictStore) -> str:
    """Return the reviewed images as a Kaggle-format labels CSV (patientId,x,y,width,height,Target)."""
    buffer = io.StringIO()
    write_labels(reviewed_annotations(items, store), buffer, None)
    return buffer.getvalue()
