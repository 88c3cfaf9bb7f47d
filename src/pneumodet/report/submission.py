"""Kaggle submission files: ``patientId,PredictionString`` with ``conf x y width height`` groups.

With io/labels.py, the only module that knows these column names.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.boxes import xywh_to_xyxy, xyxy_to_xywh
from pneumodet.candidates import Candidates
from pneumodet.errors import UserError
from pneumodet.files import atomic_path
from pneumodet.metrics import Prediction

SUBMISSION_COLUMNS = ["patientId", "PredictionString"]
BOX_COLUMNS = ["patient_id", "score", "x", "y", "width", "height"]


def format_prediction(boxes_xyxy, scores) -> str:
    """Return 'conf x y w h ...' with the highest confidence first (empty for no boxes)."""
    boxes, scores = xyxy_to_xywh(boxes_xyxy), np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return " ".join(f"{scores[i]:.4f} {boxes[i, 0]:.1f} {boxes[i, 1]:.1f} {boxes[i, 2]:.1f} {boxes[i, 3]:.1f}"
                    for i in order)


def _atomic_csv(path: Path, header: list[str], rows) -> None:
    with atomic_path(path) as tmp:
        _csv(tmp, header, rows)


def _csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _submission_rows(results: dict[str, tuple[np.ndarray, np.ndarray]]):
    return ([pid, format_prediction(b, s)] for pid, (b, s) in results.items())


def _box_rows(results: dict[str, tuple[np.ndarray, np.ndarray]], exact: bool = False) -> list[list[str]]:
    """Return one row per box: rounded for people (score to 5 decimals, pixels to 0.1), or ``exact`` (every digit
    a float needs to read back as itself)."""
    rows = []
    for pid, (boxes, scores) in results.items():
        for (x, y, w, h), s in zip(xyxy_to_xywh(boxes), np.asarray(scores).reshape(-1), strict=True):
            rows.append([pid, *((repr(float(v)) for v in (s, x, y, w, h)) if exact else
                                (f"{s:.5f}", f"{x:.1f}", f"{y:.1f}", f"{w:.1f}", f"{h:.1f}"))])
    return rows


def write_submission(path: str | Path, results: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``patient_id -> (boxes_xyxy, scores)`` (original pixels) as a Kaggle submission, atomically."""
    path = Path(path)
    _atomic_csv(path, SUBMISSION_COLUMNS, _submission_rows(results))
    return path


def write_boxes(path: str | Path, results: dict[str, tuple[np.ndarray, np.ndarray]], exact: bool = False) -> Path:
    """Write one row per box: patient_id,score,x,y,width,height (re-score or re-plot without the model); ``exact``
    keeps every digit, so what is read back scores as what was written."""
    path = Path(path)
    _atomic_csv(path, BOX_COLUMNS, _box_rows(results, exact))
    return path


def write_submission_and_boxes(path: str | Path, boxes_path: str | Path,
                               results: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    """Write the submission and its per-box table together: both are written in full before either is published
    (the table first), so a full disk or a kill leaves the old pair or the new one, never a new submission
    without its table."""
    path, boxes_path = Path(path), Path(boxes_path)
    with atomic_path(path) as tmp_submission, atomic_path(boxes_path) as tmp_boxes:
        _csv(tmp_boxes, BOX_COLUMNS, _box_rows(results))
        _csv(tmp_submission, SUBMISSION_COLUMNS, _submission_rows(results))
    return path, boxes_path


def read_boxes(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return patient_id -> (boxes_xyxy, scores) from a file written by :func:`write_boxes`."""
    frame = pd.read_csv(path, dtype=str)  # numbers parsed below by numpy: exactly, whatever pandas' parser does
    out = {}
    for pid, group in frame.groupby("patient_id", sort=False):
        boxes_xywh = group[["x", "y", "width", "height"]].to_numpy().astype(np.float64)
        out[pid] = (xywh_to_xyxy(boxes_xywh), group["score"].to_numpy().astype(np.float64))
    return out


def write_gates(path: str | Path, gates: dict[str, float]) -> Path:
    """Write patient_id,gate: each image's gate probability (the image-level classifier's), every digit kept."""
    path = Path(path)
    _atomic_csv(path, ["patient_id", "gate"], ([pid, repr(float(g))] for pid, g in gates.items()))
    return path


def read_gates(path: str | Path) -> dict[str, float]:
    """Return patient_id -> gate probability from a file written by :func:`write_gates`."""
    frame = pd.read_csv(path, dtype=str)
    return dict(zip(frame["patient_id"], frame["gate"].to_numpy().astype(np.float64).tolist(), strict=True))


def write_candidates(path: str | Path, raw: dict[str, Candidates]) -> None:
    """Write candidates as ``NAME.csv`` (one row per box) and, for a gated model, ``NAME.gate.csv`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_boxes(path, {pid: c[:2] for pid, c in raw.items()}, exact=True)  # re-scored, they score the same
    if raw and not any(math.isnan(c.gate) for c in raw.values()):
        write_gates(path.with_name(f"{path.stem}.gate.csv"), {pid: c.gate for pid, c in raw.items()})


def read_candidates(path: str | Path) -> dict[str, Candidates]:
    """Return what :func:`write_candidates` wrote (images without a box only where the gate file names them)."""
    path = Path(path)
    boxes = read_boxes(path) if path.is_file() else {}
    gate_path = path.with_name(f"{path.stem}.gate.csv")
    gates = read_gates(gate_path) if gate_path.is_file() else {}
    return {pid: Candidates(*boxes.get(pid, Candidates.empty()[:2]), gates.get(pid, math.nan))
            for pid in set(boxes) | set(gates)}


def parse_prediction_string(text, where: str) -> Prediction:
    """Return the Prediction in one PredictionString; UserError naming ``where`` if malformed."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        return Prediction.empty()
    parts = str(text).split()
    if len(parts) % 5:
        raise UserError(f"{where}: PredictionString has {len(parts)} numbers, not a multiple of 5 "
                        "(conf x y width height ...)")
    try:
        values = np.array([float(p) for p in parts]).reshape(-1, 5)
    except ValueError:
        bad = next(p for p in parts if not _is_number(p))
        raise UserError(f"{where}: PredictionString has a non-numeric value {bad!r}") from None
    if not np.isfinite(values).all():
        raise UserError(f"{where}: PredictionString has a non-finite value")
    if (values[:, 3:] < 0).any():
        raise UserError(f"{where}: PredictionString has a negative width or height")
    return Prediction.from_xywh(values[:, 1:], values[:, 0])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_submission(path: str | Path) -> dict[str, Prediction]:
    """Return patient_id -> Prediction from a Kaggle submission; one-line errors naming the row."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: submission not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    if list(frame.columns[:2]) != SUBMISSION_COLUMNS:
        raise UserError(f"{path}: expected columns patientId,PredictionString, found {','.join(frame.columns)}")
    out: dict[str, Prediction] = {}
    for line, (pid, text) in enumerate(zip(frame["patientId"].str.strip(), frame["PredictionString"], strict=True),
                                       start=2):
        if pid in out:
            raise UserError(f"{path}:{line}: patientId {pid} appears twice")
        out[pid] = parse_prediction_string(text, f"{path}:{line} ({pid})")
    return out


def score_submission(submission: Path, labels_csv: Path, against: Path | None = None) -> dict:
    """Return the RSNA score of a submission file against a Kaggle-format labels file.

    ``against``: another submission for the same images; the result then holds its score and the paired bootstrap
    difference (this one minus that one, both on the same resamples of the labelled images) with its interval.
    """
    from pneumodet.io.labels import read_labels
    from pneumodet.metrics import rsna_map
    from pneumodet.stats import interval, resample_weights, weighted_mean

    labels = read_labels(labels_csv).annotations
    ids = list(labels)
    truth = [xywh_to_xyxy(labels[pid].boxes_xywh) for pid in ids]
    resamples = resample_weights(len(ids))

    def scored(path: Path):
        predictions = read_submission(path)
        score = rsna_map(truth, [predictions.get(pid, Prediction.empty()) for pid in ids])
        return predictions, score, weighted_mean(score.per_image, resamples.weights)

    predictions, score, resampled = scored(submission)
    result = {**score.to_dict(), "rsna_map_ci": interval(resampled), "bootstrap": resamples.describe(),
              "images_in_labels": len(ids), "missing_from_submission": sum(pid not in predictions for pid in ids),
              "not_in_labels": len(set(predictions) - set(labels))}
    if against is not None:
        other, other_score, other_resampled = scored(against)
        result["against"] = {"submission": str(against), "rsna_map": other_score.rsna_map,
                             "rsna_map_ci": interval(other_resampled),
                             "missing_from_submission": sum(pid not in other for pid in ids),
                             "difference": score.rsna_map - other_score.rsna_map,
                             "difference_ci": interval(resampled - other_resampled)}
    return result
