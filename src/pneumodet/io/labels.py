"""RSNA label CSVs <-> one annotation per image. The only module that knows their column names.

``stage_2_train_labels.csv``: patientId,x,y,width,height,Target — one row per box; a negative
image has one row with empty coordinates. ``stage_2_detailed_class_info.csv``: patientId,class —
repeated once per box. Problems are collected, never fatal; a file that is not such a CSV is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.errors import UserError

LABELS_COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]
CLASS_COLUMNS = ["patientId", "class"]
CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")


@dataclass(frozen=True)
class Annotation:
    """The truth for one image: ``boxes_xywh`` (N, 4) float in original pixels; N = 0 for negatives."""

    patient_id: str
    boxes_xywh: np.ndarray
    label_class: str | None = None

    @property
    def positive(self) -> bool:
        return len(self.boxes_xywh) > 0


@dataclass(frozen=True)
class Problem:
    """One quality problem: which image, what kind, and the detail a person needs to find it."""

    patient_id: str
    problem: str
    detail: str
    file: str = ""


@dataclass
class Labels:
    annotations: dict[str, Annotation]
    problems: list[Problem] = field(default_factory=list)
    left_out: set[str] = field(default_factory=set)  # labelled, but not usable (a problem says why)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: labels file not found")
    try:
        # a spreadsheet's export may put a space after each comma, or around a header name
        frame = pd.read_csv(path, dtype={"patientId": str}, keep_default_na=True, skipinitialspace=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(columns)}")
    frame["patientId"] = frame["patientId"].fillna("").astype(str).str.strip()
    frame["csv_line"] = np.arange(len(frame)) + 2  # line 1 is the header
    return frame


def _drop_unnamed(frame: pd.DataFrame, path: Path, problems: list[Problem]) -> pd.DataFrame:
    """Return ``frame`` without rows that have no patientId, each reported."""
    unnamed = frame["patientId"] == ""
    problems += [Problem("", "missing patientId", f"{path.name} line {line}: row without a patientId; left out")
                 for line in frame.loc[unnamed, "csv_line"]]
    return frame[~unnamed]


def read_labels(labels_csv: str | Path, class_csv: str | Path | None = None) -> Labels:
    """Return one :class:`Annotation` per image in ``labels_csv`` and the problems found."""
    frame = _read_csv(Path(labels_csv), LABELS_COLUMNS)
    problems: list[Problem] = []
    frame = _drop_unnamed(frame, Path(labels_csv), problems)
    coords = frame[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    target = pd.to_numeric(frame["Target"], errors="coerce")
    boxes: dict[str, list[list[float]]] = {}
    targets: dict[str, set[int]] = {}
    for pid, t, row in zip(frame["patientId"], target, coords.itertuples(index=False), strict=True):
        boxes.setdefault(pid, [])
        if t not in (0, 1):
            problems.append(Problem(pid, "bad target", f"Target={t!r}, expected 0 or 1"))
            continue
        if t == 0 and 0 in targets.get(pid, ()):
            problems.append(Problem(pid, "duplicate row", "the Target=0 row is repeated; counted once"))
        targets.setdefault(pid, set()).add(int(t))
        if t == 0:
            continue
        x, y, w, h = row
        if not all(np.isfinite(v) for v in (x, y, w, h)):
            problems.append(Problem(pid, "missing box", "Target=1 with empty, non-numeric or infinite coordinates"))
        elif w <= 0 or h <= 0:
            problems.append(Problem(pid, "non-positive box size", f"width={w:g} height={h:g}"))
        elif [x, y, w, h] in boxes[pid]:
            problems.append(Problem(pid, "duplicate box", f"x={x:g} y={y:g} width={w:g} height={h:g}"))
        else:
            boxes[pid].append([float(x), float(y), float(w), float(h)])
    for pid, seen in targets.items():
        if seen == {0, 1}:
            problems.append(
                Problem(pid, "conflicting target", "rows with both Target=0 and Target=1; boxes kept")
            )
    left_out = {pid for pid, seen in targets.items() if 1 in seen and not boxes[pid]}
    for pid in sorted(left_out):  # trained as a negative, it would teach the model to miss it
        rows = int((frame["patientId"] == pid).sum())
        problems.append(Problem(pid, "positive without a usable box",
                                f"Target=1 but none of its {rows} row(s) holds a usable box; image left out"))
        del boxes[pid]
    classes = _read_classes(Path(class_csv), problems) if class_csv else {}
    annotations = {}
    for pid, pid_boxes in boxes.items():
        arr = np.asarray(pid_boxes, dtype=np.float64).reshape(-1, 4)
        label_class = classes.get(pid) or (CLASSES[0] if len(arr) else None)
        if pid in classes and (label_class == CLASSES[0]) != (len(arr) > 0) and pid in targets:
            problems.append(
                Problem(pid, "class conflict", f"class {label_class!r} but {len(arr)} box(es)")
            )
        annotations[pid] = Annotation(pid, arr, label_class)
    for pid in classes.keys() - boxes.keys() - left_out:
        problems.append(Problem(pid, "class without label", "in the class file but not the labels file"))
    return Labels(annotations, problems, left_out)


def _read_classes(path: Path, problems: list[Problem]) -> dict[str, str]:
    frame = _drop_unnamed(_read_csv(path, CLASS_COLUMNS), path, problems)
    frame = frame.drop(columns="csv_line").drop_duplicates()  # the real file repeats a row per box
    classes: dict[str, str] = {}
    for pid, group in frame.groupby("patientId", sort=False):
        values = group["class"].astype(str).tolist()
        if len(values) > 1:
            problems.append(Problem(pid, "conflicting class", f"classes {values}; first kept"))
        if values[0] not in CLASSES:
            problems.append(Problem(pid, "unknown class", f"{values[0]!r}"))
        classes[pid] = values[0]
    return classes


def write_labels(annotations: list[Annotation], labels_csv: str | Path, class_csv: str | Path | None) -> None:
    """Write annotations in the Kaggle format (one row per box; negatives one empty row)."""
    rows, class_rows = [], []
    for ann in annotations:
        label_class = ann.label_class or (CLASSES[0] if ann.positive else CLASSES[2])
        if ann.positive:
            for x, y, w, h in ann.boxes_xywh:
                rows.append([ann.patient_id, _num(x), _num(y), _num(w), _num(h), 1])
                class_rows.append([ann.patient_id, label_class])
        else:
            rows.append([ann.patient_id, None, None, None, None, 0])
            class_rows.append([ann.patient_id, label_class])
    pd.DataFrame(rows, columns=LABELS_COLUMNS).to_csv(labels_csv, index=False)
    if class_csv:
        pd.DataFrame(class_rows, columns=CLASS_COLUMNS).to_csv(class_csv, index=False)


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(float(value), 2)
