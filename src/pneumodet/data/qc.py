"""Quality control: problems per file and label row, and the summary counts of a data set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.boxes import clip_xyxy, xywh_to_xyxy, xyxy_to_xywh
from pneumodet.files import atomic_path, write_text_atomic
from pneumodet.io.labels import Annotation, Problem

QC_COLUMNS = ["patient_id", "file", "problem", "detail"]


def check_boxes(annotation: Annotation, height: int, width: int) -> tuple[Annotation, list[Problem]]:
    """Return the annotation with boxes clipped to the image (empty ones dropped) and the problems."""
    if not annotation.positive:
        return annotation, []
    boxes_xyxy = xywh_to_xyxy(annotation.boxes_xywh)
    clipped = clip_xyxy(boxes_xyxy, height, width)
    problems, keep = [], []
    for original, inside in zip(boxes_xyxy, clipped, strict=True):
        empty = inside[2] - inside[0] < 1 or inside[3] - inside[1] < 1
        if not np.allclose(original, inside):
            action = "dropped" if empty else "clipped"
            problems.append(Problem(annotation.patient_id, "box outside image",
                                    f"xyxy {np.round(original, 1).tolist()} on {width}x{height}; {action}"))
        keep.append(not empty)
    boxes_xywh = xyxy_to_xywh(clipped[np.asarray(keep, dtype=bool)])
    return Annotation(annotation.patient_id, boxes_xywh, annotation.label_class), problems


def match_files(annotations: dict[str, Annotation], files: dict[str, Path],
                unreadable: set[str] = frozenset()) -> list[Problem]:
    """Return a problem for each label without an image file and each image without a label.

    ``files`` holds every image file; the ``unreadable`` ones have a problem of their own already.
    """
    problems = [Problem(pid, "label without image", "no .dcm file for this patientId")
                for pid in sorted(annotations.keys() - files.keys())]
    problems += [Problem(pid, "image without label", "not in the labels file; left out", str(files[pid]))
                 for pid in sorted(files.keys() - annotations.keys() - unreadable)]
    return problems


def summarise(images: pd.DataFrame, boxes: pd.DataFrame, problems: list[Problem], n_files: int,
              n_readable: int) -> dict:
    """Return the qc.json counts: images, readable, positives, boxes, views, sizes, formats, problems."""
    sizes = Counter(f"{w}x{h}" for h, w in zip(images["original_height"], images["original_width"], strict=True))
    positives = int((images["n_boxes"] > 0).sum()) if "n_boxes" in images else 0
    return {
        "images": n_files,
        "readable": n_readable,
        "usable": len(images),
        "positives": positives,
        "boxes": len(boxes),
        "views": _counts(images.get("view")),
        "sizes": dict(sizes.most_common()),
        "photometric_interpretations": _counts(images.get("photometric")),
        "transfer_syntaxes": _counts(images.get("transfer_syntax")),
        "classes": _counts(images.get("label_class")),
        "problems": dict(Counter(p.problem for p in problems).most_common()),
    }


def _counts(column) -> dict[str, int]:
    if column is None:
        return {}
    return {str(k): int(v) for k, v in column.astype(object).fillna("unknown").value_counts().items()}


def write_qc(out_dir: Path, problems: list[Problem], summary: dict, suffix: str = "") -> tuple[Path, Path]:
    """Write qc{suffix}.csv (one row per problem) and qc{suffix}.json atomically; return both paths."""
    csv_path, json_path = out_dir / f"qc{suffix}.csv", out_dir / f"qc{suffix}.json"
    rows = [[p.patient_id, p.file, p.problem, p.detail] for p in problems]
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(rows, columns=QC_COLUMNS).to_csv(tmp, index=False)
    write_text_atomic(json_path, json.dumps(summary, indent=2) + "\n")
    return csv_path, json_path
