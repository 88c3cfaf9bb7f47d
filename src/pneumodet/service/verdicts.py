"""A reviewer's verdicts on the review page, kept under the run folder, and their export as RSNA labels.

``RUN/review/verdicts.json`` maps each reviewed image (by patient_id) to one of

- ``correct``: the predicted boxes are right (kept as the reviewer saw them; none: a negative image);
- ``wrong``: the predicted boxes are wrong and the image has no opacity (exported as a negative);
- ``corrected``: the boxes the reviewer drew are the truth (original pixels, x, y, width, height).

It is rewritten atomically after every change, and memory changes only once the file is on disk: a verdict the
page shows as saved survives a killed server, and one that could not be written (a read-only folder, a full
disk) is refused with the reason and changes nothing. The file is someone's data, so it is checked entry by entry
when it is loaded: a bad entry is a one-line error naming it, never a failure later.
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


class VerdictSaveError(OSError):
    """The verdicts file could not be written: nothing changed (the API answers 500 with its text)."""


class VerdictStore:
    """patient_id -> {"verdict", "boxes" (x, y, width, height), "updated"}; saved on every change."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.verdicts: dict[str, dict] = read_verdicts(self.path) if self.path.is_file() else {}

    def get(self, patient_id: str) -> dict | None:
        return self.verdicts.get(patient_id)

    def set(self, patient_id: str, verdict: str, boxes_xywh=(), size: tuple[int, int] | None = None,
            predicted_xywh=()) -> dict:
        """Save one image's verdict and the boxes it makes the truth; return the saved entry.

        ``corrected``: ``boxes_xywh``, the reviewer's, checked to lie in ``size`` (H, W); ``correct``: the
        ``predicted_xywh`` the reviewer saw (kept, so a later re-tuning of the run cannot change what was
        accepted); ``wrong``: none. A VerdictSaveError if the file cannot be written (nothing changes).
        """
        if verdict not in VERDICTS:
            raise VerdictError(f"unknown verdict {short(verdict)}; use one of {', '.join(VERDICTS)}")
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
            self._commit({**self.verdicts, patient_id: entry}, "the verdict was not saved")
        return entry

    def clear(self, patient_id: str) -> None:
        """Forget one image's verdict; a VerdictSaveError if the file cannot be written (nothing changes)."""
        with self.lock:
            if patient_id in self.verdicts:
                self._commit({k: v for k, v in self.verdicts.items() if k != patient_id}, "the verdict is still saved")

    def _commit(self, verdicts: dict[str, dict], unchanged: str) -> None:
        """Write ``verdicts`` to disk, then make them the store's: a failed write leaves both as they were, and its
        VerdictSaveError ends with ``unchanged``, what that means for the reviewer."""
        text = json.dumps({"verdicts": verdicts}, indent=1, sort_keys=True) + "\n"
        try:
            write_text_atomic(self.path, text)
        except (OSError, UserError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise VerdictSaveError(f"could not write {self.path} ({reason}); {unchanged}") from None
        self.verdicts = verdicts


def read_verdicts(path: Path) -> dict[str, dict]:
    """Return the verdicts in ``path``, each entry checked; a one-line UserError naming the first bad one."""
    fix = "fix it or move the file away to start a new review"
    try:
        loaded = json.loads(path.read_text())
        entries = loaded["verdicts"]
        if not isinstance(entries, dict):
            raise TypeError("verdicts is not a mapping")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a verdicts file pneumodet wrote ({type(exc).__name__}); {fix}") from None
    for patient_id, entry in entries.items():
        try:
            _check_entry(entry)
        except (VerdictError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: entry {short(patient_id)}: {exc}; {fix}") from None
    return dict(entries)


def _check_entry(entry) -> None:
    """Raise VerdictError unless ``entry`` is what :meth:`VerdictStore.set` writes."""
    if not isinstance(entry, dict) or set(entry) != {"verdict", "boxes", "updated"}:
        raise VerdictError("expected an object with verdict, boxes and updated")
    verdict, boxes = entry["verdict"], entry["boxes"]
    if verdict not in VERDICTS:
        raise VerdictError(f"verdict {short(verdict)} is not one of {', '.join(VERDICTS)}")
    if not isinstance(entry["updated"], str) or len(entry["updated"]) > 40:
        raise VerdictError("updated is not a time")
    if not isinstance(boxes, list) or (verdict == "wrong" and boxes):
        raise VerdictError(f"boxes do not fit the verdict {verdict}")
    if boxes:
        check_boxes(boxes, None)
    elif verdict == "corrected":
        raise VerdictError("corrected without boxes")


def short(value, chars: int = 40) -> str:
    """Return repr(value) cut to ``chars`` characters: an error names what it refused without echoing it whole."""
    text = repr(value)
    return text if len(text) <= chars else text[: chars - 3] + "..."


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
