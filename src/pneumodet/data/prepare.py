"""``pneumodet prepare``: quality control, the cache and the split, from a folder in the Kaggle layout."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.data.cache import (
    BOX_COLUMNS,
    IMAGE_COLUMNS,
    CacheParams,
    clean_cache_root,
    commit,
    decode_into,
    find_cache,
    fingerprint,
    new_build_dir,
)
from pneumodet.data.qc import check_boxes, match_files, summarise, write_qc
from pneumodet.data.split import assign_folds, read_groups, split_images
from pneumodet.errors import UserError
from pneumodet.files import atomic_path, check_output_dir
from pneumodet.io.dicom import folder_images
from pneumodet.io.labels import Annotation, Problem, read_labels
from pneumodet.io.layout import CLASS_INFO, TEST_IMAGES, TRAIN_IMAGES, TRAIN_LABELS, image_files


@dataclass(frozen=True)
class PrepareResult:
    cache_dir: Path
    reused: bool
    summary: dict
    qc_csv: Path
    split_csv: Path | None
    val_fraction: float | None = None  # the share used (given, or chosen for the set's size)
    val_images: int = 0
    val_positives: int = 0


#: with the default val share, small sets get up to MAX_AUTO_VAL of their images so that about MIN_VAL_IMAGES
#: tune the thresholds (24 val images with 8 positives gave thresholds that did not carry to unseen data)
MIN_VAL_IMAGES = 50
DEFAULT_VAL = 0.1
MAX_AUTO_VAL = 0.25


def auto_val_fraction(n_images: int) -> float:
    """Return the default val share for ``n_images`` labelled images: 10 %, raised to reach ~50 images, at most 25 %."""
    return min(MAX_AUTO_VAL, max(DEFAULT_VAL, MIN_VAL_IMAGES / max(n_images, 1)))


def find_images(data: Path, subset: str) -> Path:
    """Return the folder of .dcm files for ``subset``: DATA/stage_2_{subset}_images, or DATA itself."""
    folder = data / (TRAIN_IMAGES if subset == "train" else TEST_IMAGES)
    if folder.is_dir():
        return folder
    if subset == "test" and image_files(data)[0]:
        return data
    raise UserError(f"{data}: no {folder.name}/ folder; expected the Kaggle layout "
                    f"(pneumodet download or pneumodet synth makes one)")


def prepare(data: str | Path, out: str | Path, size_px: int = 256, val_fraction: float | None = None, seed: int = 0,
            groups_csv: str | Path | None = None, subset: str = "train", workers: int | None = None,
            progress: bool = True, folds: int = 5, labels_csv: str | Path | None = None) -> PrepareResult:
    """Check, cache and split the data set in ``data``; write everything under ``out``.

    ``split.csv`` holds each labelled image's split (train/val) and its fold (0 .. ``folds``-1, for
    ``train --folds``), both stratified by class and view and grouped by ``groups_csv``. ``val_fraction``
    None: :func:`auto_val_fraction` of the labelled images.
    ``labels_csv``: a Kaggle-format labels file to use instead of ``DATA/stage_2_train_labels.csv`` (e.g. the
    review page's export); the class file is not read with it, and images it does not name are left out.
    """
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise UserError(f"{data}: data folder not found")
    if not 2 <= folds <= 100:
        raise UserError(f"--folds must be between 2 and 100, got {folds}")
    if size_px < 32 or size_px > 4096:
        raise UserError(f"--size must be between 32 and 4096 pixels, got {size_px}")
    images_dir = find_images(data, subset)
    files, repeats = folder_images(images_dir)
    if labels_csv is not None and subset != "train":
        raise UserError("--labels goes with --subset train")
    labels_paths = []
    if subset == "train":
        class_csv = None if labels_csv else data / CLASS_INFO  # another labels file has no class file beside it
        labels_paths = [Path(labels_csv) if labels_csv else data / TRAIN_LABELS] + ([class_csv] if class_csv else [])
        if not labels_paths[0].is_file():
            raise UserError(f"{labels_paths[0]}: labels file not found")
        labels = read_labels(labels_paths[0], class_csv if class_csv and class_csv.is_file() else None)
    groups = read_groups(groups_csv) if groups_csv else None
    check_output_dir(out)
    clean_cache_root(out)  # what dead runs left, whether or not this run rebuilds
    params = CacheParams(size_px=size_px, subset=subset)
    source = fingerprint(files, labels_paths)
    suffix = "" if subset == "train" else f"_{subset}"
    cache_dir = find_cache(out, params, source)
    reused = cache_dir is not None
    if not reused:
        cache_dir = _build(out, params, source, files, labels if subset == "train" else None, workers, progress)
    images = pd.read_csv(cache_dir / "images.csv", dtype={"patient_id": str})
    boxes = pd.read_csv(cache_dir / "boxes.csv", dtype={"patient_id": str})
    problems_frame = pd.read_csv(cache_dir / "problems.csv", dtype=str).fillna("")
    problems = [Problem(r.patient_id, r.problem, r.detail, r.file) for r in problems_frame.itertuples()]
    problems += [Problem(path.stem, "repeated patientId", f"{kept.name} is the image; this file is left out",
                         str(path)) for path, kept in repeats]
    meta = json.loads((cache_dir / "meta.json").read_text())
    summary = summarise(images, boxes, problems, len(files), meta.get("n_readable", len(images)))
    qc_csv, _ = write_qc(out, problems, summary, suffix)
    split_csv = None
    if subset == "train":
        if val_fraction is None:
            val_fraction = auto_val_fraction(len(images))
        split = split_images(images, val_fraction, seed, groups)
        split["fold"] = assign_folds(images, folds, seed, groups).to_numpy()  # for train --folds
        if groups:  # kept for evaluate: its intervals resample whole groups
            split["group"] = [groups.get(pid, f"image:{pid}") for pid in split["patient_id"]]
        split_csv = out / "split.csv"
        with atomic_path(split_csv) as tmp:
            split.to_csv(tmp, index=False)
        val = set(split.loc[split["split"] == "val", "patient_id"])
        positives = int((images["patient_id"].isin(val) & (images["n_boxes"] > 0)).sum())
        return PrepareResult(cache_dir, reused, summary, qc_csv, split_csv, val_fraction, len(val), positives)
    return PrepareResult(cache_dir, reused, summary, qc_csv, split_csv)


def _build(out: Path, params: CacheParams, source: str, files: list[Path], labels, workers, progress) -> Path:
    tmp_dir = new_build_dir(out, params)
    try:
        results = decode_into(tmp_dir / "images.npy", files, params.size_px, workers, progress)
        problems: list[Problem] = list(labels.problems) if labels else []
        rows, box_rows = [], []
        usable, unreadable = {}, set()
        for result in results:
            if "error" in result:
                pid = Path(result["file"]).stem
                unreadable.add(pid)
                problems.append(Problem(pid, result.get("problem", "unreadable file"), result["error"],
                                        result["file"]))
            else:
                usable[result["patient_id"]] = result
        if labels is not None:
            problems += match_files(labels.annotations, {f.stem: f for f in files}, unreadable | labels.left_out)
        for pid, result in usable.items():
            annotation = labels.annotations.get(pid) if labels else Annotation(pid, np.zeros((0, 4)), None)
            if annotation is None:
                continue  # image without a label: reported above, left out
            annotation, box_problems = check_boxes(annotation, result["original_height"], result["original_width"])
            problems += box_problems
            if box_problems and not annotation.positive:  # every box lay outside: not a negative, not usable
                problems.append(Problem(pid, "positive without a usable box",
                                        "Target=1 but every box lies outside the image; image left out"))
                continue
            rows.append({**result, "label_class": annotation.label_class, "n_boxes": len(annotation.boxes_xywh)})
            box_rows += [[pid, *box] for box in annotation.boxes_xywh.tolist()]
        if not rows:
            empty = pd.DataFrame(columns=IMAGE_COLUMNS)
            qc_csv, _ = write_qc(out, problems, summarise(empty, empty, problems, len(files), len(usable)),
                                 "" if params.subset == "train" else f"_{params.subset}")
            raise UserError(f"no usable images among {len(files)} files in {files[0].parent} "
                            f"(first problem: {problems[0].detail if problems else 'none'}; all in {qc_csv})")
        pd.DataFrame(rows, columns=IMAGE_COLUMNS).to_csv(tmp_dir / "images.csv", index=False)
        pd.DataFrame(box_rows, columns=BOX_COLUMNS).to_csv(tmp_dir / "boxes.csv", index=False)
        pd.DataFrame([[p.patient_id, p.file, p.problem, p.detail] for p in problems],
                     columns=["patient_id", "file", "problem", "detail"]).to_csv(tmp_dir / "problems.csv", index=False)
        return commit(tmp_dir, out / params.name, {"params": asdict(params), "source": source, "n_images": len(rows),
                                "n_files": len(files), "n_readable": len(usable), "pid": os.getpid()})
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
