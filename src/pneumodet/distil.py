"""``pneumodet distil``: a teacher's sure answers on unlabelled images, added to a labelled cache, so that one model
trained on it (the student) learns what the teacher (an ensemble, say) knows about images no one labelled.

The teacher predicts every image of a folder with its own tuned post-processing. An image joins the student's
training images only where the teacher is sure of all of it:

- **pseudo-positive**: the teacher keeps at least one box and every box it keeps scores at least ``min_score``;
  those boxes are its labels;
- **pseudo-negative**: the teacher keeps no box and the image's score (the gate's probability, or the highest box
  score of a model without a gate) is below ``negative_below`` (default: half the threshold that makes an image
  positive);
- anything else is left out: a box the teacher kept without being sure of it could be a missed opacity or a false
  one, and neither should become a label.

The new cache holds the labelled cache's images and tables unchanged, the pseudo-labelled images after them, and a
``split.csv`` in which every labelled image keeps its split and fold, and every pseudo-labelled image trains (fold
-1: it trains in every fold, and is never val, so the student's thresholds are still tuned on true labels only).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.boxes import xyxy_to_xywh
from pneumodet.data.cache import (
    BOX_COLUMNS,
    IMAGE_COLUMNS,
    CacheParams,
    commit,
    decode_into,
    new_array,
    new_build_dir,
    open_cache,
)
from pneumodet.data.dataset import read_split
from pneumodet.errors import UserError
from pneumodet.files import atomic_path, check_output_dir
from pneumodet.io.dicom import folder_images

#: a box the teacher keeps is a label only at this score or more; chosen on the `wide` tuning variant, where the
#: boxes a demo-recipe run kept at >= 0.9 overlapped a true box (IoU >= 0.5) 97 % of the time
MIN_SCORE = 0.9
PSEUDO_LABELS = "pseudo_labels.csv"
RECORD = "distil.json"


@dataclass(frozen=True)
class DistilResult:
    cache: Path
    labelled: int  # images of the labelled cache
    files: int  # .dcm files in the unlabelled folder
    positives: int  # pseudo-positive images added
    negatives: int  # pseudo-negative images added
    left_out: int  # predicted, but the teacher was not sure
    boxes: int  # pseudo boxes
    already_labelled: int  # files whose patientId the labelled cache already has: not predicted
    unreadable: int
    min_score: float
    negative_below: float


def pseudo_label(found, min_score: float, negative_below: float) -> tuple[str, np.ndarray, np.ndarray]:
    """Return ("positive" | "negative" | "unsure", boxes (N, 4) xyxy, scores) for one teacher Detection."""
    boxes, scores = np.asarray(found.boxes_orig_xyxy, dtype=np.float64).reshape(-1, 4), np.asarray(found.scores)
    if len(scores):
        return ("positive" if scores.min() >= min_score else "unsure"), boxes, scores
    score = found.image_score
    return ("negative" if np.isfinite(score) and score < negative_below else "unsure"), boxes[:0], scores[:0]


def default_negative_below(postprocess) -> float:
    """Return half the threshold that makes an image positive: the gate's, or the box score threshold without one."""
    threshold = postprocess.gate_threshold if postprocess.gate_threshold > 0 else postprocess.score_threshold
    return threshold / 2


def distil(teacher, images_dir: str | Path, data: str | Path, out: str | Path, *, min_score: float = MIN_SCORE,
           negative_below: float | None = None, hflip_tta: bool | None = None, engine: str | None = None,
           workers: int = 2, progress: bool = True) -> DistilResult:
    """Predict ``images_dir`` with ``teacher`` (a run, a folds folder or a list of runs) and write the labelled cache
    ``data`` plus the images it is sure of to the cache folder ``out`` (``train --data OUT`` trains the student)."""
    from pneumodet.detector import load_detector
    from pneumodet.predict import predict_files

    data, out, images_dir = Path(data), Path(out), Path(images_dir)
    if not 0 < min_score <= 1:
        raise UserError(f"--min-score must be in (0, 1], got {min_score}")
    if out.resolve() == data.resolve():
        raise UserError(f"{out}: the student's cache must be another folder than the labelled cache {data}")
    files = folder_images(images_dir, say="distil")[0]
    detector = load_detector(teacher, hflip_tta=hflip_tta, engine=engine)
    size = detector.image_size
    labelled = open_cache(data, size)
    table = read_split(data / "split.csv")
    known = set(labelled.images["patient_id"]) | set(table["patient_id"])
    fresh = [f for f in files if f.stem not in known]
    if not fresh:
        raise UserError(f"{images_dir}: every one of its {len(files)} images is already labelled in {data}; "
                        "distil needs images without labels")
    if negative_below is None:
        negative_below = default_negative_below(detector.postprocess)
    if not 0 <= negative_below <= 1:
        raise UserError(f"--negative-below must be in [0, 1], got {negative_below}")
    check_output_dir(out)
    if (out / "qc.json").is_file():
        raise UserError(f"{out}: holds a cache pneumodet prepare wrote; distil writes a new folder (or one it wrote)")
    found_by_id, _ = predict_files(detector, fresh, workers, progress=progress,
                                   unreadable="distil: {}; left out")
    verdicts = {pid: pseudo_label(found, min_score, negative_below) for pid, found in found_by_id.items()}
    chosen = [f for f in fresh if f.stem in verdicts and verdicts[f.stem][0] != "unsure"]
    if not chosen:
        raise UserError(f"{images_dir}: the teacher was sure of none of its {len(found_by_id)} readable images "
                        f"(boxes at >= {min_score:g}, or no box and a score below {negative_below:g}); nothing "
                        "to add")
    (out / "split.csv").unlink(missing_ok=True)  # written again once the cache is: a call killed in between leaves
    # no split.csv, so no student trains on a cache whose split does not match it
    params = CacheParams(size_px=size, subset="train")
    tmp = new_build_dir(out, params)
    try:
        new_rows, box_rows = _build(tmp, labelled, chosen, verdicts, size, workers, progress)
        record = {"teacher": [str(p) for p in (teacher if isinstance(teacher, list | tuple) else [teacher])],
                  "images": str(images_dir), "labelled_cache": str(data), "min_score": min_score,
                  "negative_below": negative_below, "hflip_tta": detector.settings.hflip_tta,
                  "postprocess": asdict(detector.postprocess)}
        commit(tmp, out / params.name, {"params": asdict(params), "source": f"distil:{labelled.meta.get('source')}",
                                        "n_images": len(labelled.images) + len(new_rows), "n_files": len(files),
                                        "n_readable": len(found_by_id), "distil": record})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_split(out / "split.csv", table, [row["patient_id"] for row in new_rows])
    _write_pseudo_labels(out / PSEUDO_LABELS, verdicts)
    kinds = [verdicts[row["patient_id"]][0] for row in new_rows]
    result = DistilResult(out, len(labelled.images), len(files), kinds.count("positive"), kinds.count("negative"),
                          len(found_by_id) - len(new_rows), len(box_rows),
                          len(files) - len(fresh), len(fresh) - len(found_by_id), min_score, negative_below)
    with atomic_path(out / RECORD) as path:
        path.write_text(json.dumps({**record, **{k: v for k, v in asdict(result).items() if k != "cache"}},
                                   indent=2) + "\n")
    return result


def _build(tmp: Path, labelled, chosen: list[Path], verdicts: dict, size: int, workers: int,
           progress: bool) -> tuple[list[dict], list[list]]:
    """Write images.npy / images.csv / boxes.csv / problems.csv of the labelled cache plus ``chosen`` into ``tmp``."""
    decoded = decode_into(tmp / "new.npy", chosen, size, workers, progress)
    new_pixels = np.load(tmp / "new.npy", mmap_mode="r")
    offset = labelled.pixels.shape[0]
    good = [result for result in decoded if "error" not in result]
    for result in decoded:
        if "error" in result:  # read once by the teacher, not now: the file changed in between
            print(f"pneumodet distil: {Path(result['file']).name}: {result['error']}; left out", file=sys.stderr)
    array = new_array(tmp / "images.npy", (offset + len(good), size, size))  # a full disk: one line, not a SIGBUS
    for start in range(0, offset, 1024):
        array[start:min(start + 1024, offset)] = labelled.pixels[start:start + 1024]
    new_rows, box_rows = [], []
    for n, result in enumerate(good):
        pid = chosen[result["row"]].stem  # the name predict and the labels go by (the header's may differ)
        array[offset + n] = new_pixels[result["row"]]
        kind, boxes, _ = verdicts[pid]
        xywh = xyxy_to_xywh(boxes) if len(boxes) else np.zeros((0, 4))
        new_rows.append({**{k: result.get(k) for k in IMAGE_COLUMNS}, "patient_id": pid, "row": offset + n,
                         "label_class": "pseudo " + kind, "n_boxes": len(xywh)})
        box_rows += [[pid, *box] for box in np.round(xywh, 1).tolist()]
    array.flush()
    del array, new_pixels
    (tmp / "new.npy").unlink()
    images = pd.concat([labelled.images, pd.DataFrame(new_rows, columns=IMAGE_COLUMNS)], ignore_index=True)
    boxes = pd.concat([labelled.boxes, pd.DataFrame(box_rows, columns=BOX_COLUMNS)], ignore_index=True)
    images.to_csv(tmp / "images.csv", index=False)
    boxes.to_csv(tmp / "boxes.csv", index=False)
    shutil.copyfile(labelled.folder / "problems.csv", tmp / "problems.csv")
    return new_rows, box_rows


def _write_split(path: Path, table: pd.DataFrame, added: list[str]) -> None:
    rows = pd.DataFrame({"patient_id": added, "split": "train"})
    if "fold" in table.columns:
        rows["fold"] = "-1"
    if "group" in table.columns:
        rows["group"] = [f"image:{pid}" for pid in added]
    frame = pd.concat([table.assign(source="label"), rows.assign(source="pseudo")], ignore_index=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _write_pseudo_labels(path: Path, verdicts: dict) -> None:
    """Write every predicted image's verdict in the Kaggle labels' columns plus score and kind (unsure ones too)."""
    rows = []
    for pid, (kind, boxes, scores) in sorted(verdicts.items()):
        target = int(len(boxes) > 0)  # the labels' meaning; kind says which rows the student trains on
        if len(boxes):
            rows += [[pid, *np.round(box, 1), target, round(float(s), 5), kind]
                     for box, s in zip(xyxy_to_xywh(boxes).tolist(), scores, strict=True)]
        else:
            rows.append([pid, None, None, None, None, target, None, kind])
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target", "score", "kind"]).to_csv(
            tmp, index=False)
