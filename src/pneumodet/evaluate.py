"""``pneumodet evaluate``: val predictions, tuned post-processing, RSNA and image-level metrics, plots."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pneumodet.boxes import xywh_to_xyxy
from pneumodet.data.dataset import PneumoniaDataset, collate
from pneumodet.detector import Detector, load_detector
from pneumodet.errors import UserError
from pneumodet.files import write_text_atomic
from pneumodet.metrics import Prediction, roc_auc, rsna_map, sensitivity_specificity
from pneumodet.postprocess import PostProcess, image_score, postprocess
from pneumodet.report.submission import read_boxes, write_boxes
from pneumodet.runs import run_split

GRID = {
    "score_threshold": [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)],
    "nms_iou": [0.01, 0.1, 0.2, 0.3, 0.5],
    "max_boxes": [1, 2, 3, 4],
    "shrink": [0.8, 0.85, 0.875, 0.9, 0.95, 1.0],
}


@dataclass(frozen=True)
class ValSet:
    patient_ids: list[str]
    views: list[str]
    truths: list[np.ndarray]  # xyxy, original pixels
    raw: list[tuple[np.ndarray, np.ndarray]]  # (boxes xyxy, scores), original pixels


def predict_dataset(detector: Detector, dataset: PneumoniaDataset, batch_size: int = 8,
                    progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return every candidate (boxes_orig_xyxy, scores) for every image of ``dataset``, before post-processing."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=collate)
    sizes = list(zip(dataset.records["original_height"].astype(int), dataset.records["original_width"].astype(int),
                     strict=True))
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for images, _ in tqdm(loader, desc="predict val", unit="batch", disable=not progress):
        results += detector.candidates(list(images), sizes[len(results): len(results) + len(images)])
    return results


def apply(val: ValSet, pp: PostProcess) -> list[Prediction]:
    return [Prediction(*postprocess(b, s, pp)) for b, s in val.raw]


def tune(val: ValSet, start: PostProcess, rounds: int = 2) -> tuple[PostProcess, float]:
    """Return the post-processing that maximises val RSNA mAP, one setting at a time (coordinate ascent)."""
    best, best_score = start, rsna_map(val.truths, apply(val, start)).rsna_map
    for _ in range(rounds):
        for name, values in GRID.items():
            for value in values:
                candidate = replace(best, **{name: value})
                score = rsna_map(val.truths, apply(val, candidate)).rsna_map
                if score > best_score + 1e-9:
                    best, best_score = candidate, score
    return best, best_score


def image_scores(val: ValSet, pp: PostProcess) -> np.ndarray:
    """Return every image's score (its highest box score after NMS, before the threshold)."""
    return np.array([image_score(b, s, pp) for b, s in val.raw])


def image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Image-level metrics: ROC AUC, and sensitivity and specificity at ``threshold``."""
    sens, spec = sensitivity_specificity(labels, scores, threshold)
    return {"images": int(len(labels)), "positives": int(labels.sum()), "roc_auc": roc_auc(labels, scores),
            "sensitivity": sens, "specificity": spec}


def evaluate(run: str | Path, cache: str | Path | None = None, split: str = "val", progress: bool = True,
             reuse_predictions: bool = False) -> dict:
    """Evaluate a run on its val split; tune and save post-processing; write metrics.json and plots."""
    from pneumodet.report.evaluation_plots import plot_examples, plot_roc, plot_threshold

    detector = load_detector(run)
    paths, config, info = detector.paths, detector.config, detector.info
    if cache is None:
        if not info.get("cache"):
            raise UserError(f"{paths.root}: the checkpoint does not say which cache it was trained on; pass --data")
        cache = info["cache"]
    # the run's own split: never score a run on images it trained on, whatever the cache's split.csv says now
    dataset = PneumoniaDataset(cache, config.data.image_size, split, mask_shape=config.data.mask_shape,
                               split_table=run_split(paths) if split != "all" else None)
    if len(dataset) == 0:
        raise UserError(f"{cache}: none of the run's {split} images are in this cache; evaluate another "
                        "labelled set with --split all")
    raw_csv = paths.predictions / f"{split}.csv"
    if reuse_predictions and raw_csv.is_file():
        saved = read_boxes(raw_csv)
        empty = (np.zeros((0, 4)), np.zeros(0))
        raw = [saved.get(pid, empty) for pid in dataset.records["patient_id"]]
    else:
        raw = predict_dataset(detector, dataset, config.predict.batch_size, progress)
        paths.predictions.mkdir(parents=True, exist_ok=True)
        write_boxes(raw_csv, dict(zip(dataset.records["patient_id"], raw, strict=True)))
    val = ValSet(list(dataset.records["patient_id"]), list(dataset.records["view"].fillna("unknown")),
                 [xywh_to_xyxy(dataset.boxes_xywh(i)) for i in range(len(dataset))], raw)
    start = PostProcess.from_config(config.predict)
    tuned, tuned_score = tune(val, start)
    score = rsna_map(val.truths, apply(val, tuned))
    untuned = rsna_map(val.truths, apply(val, start)).rsna_map
    views = np.array(val.views)
    labels = np.array([len(t) > 0 for t in val.truths])
    scores = image_scores(val, tuned)
    by_view = {}
    for view in sorted(set(val.views)):
        mask = views == view
        sub = ValSet([], [], [t for t, m in zip(val.truths, mask, strict=True) if m],
                     [r for r, m in zip(val.raw, mask, strict=True) if m])
        by_view[view] = {"rsna_map": rsna_map(sub.truths, apply(sub, tuned)).rsna_map,
                         **image_metrics(labels[mask], scores[mask], tuned.score_threshold)}
    result = {
        "rsna_map": score.rsna_map,
        "per_threshold": score.per_threshold,
        "n_images_counted": score.n_images,
        "n_images": len(val.truths),
        "split": split,
        "checkpoint": info["path"],
        "epoch": info.get("epoch"),
        "postprocess": asdict(tuned),
        "rsna_map_before_tuning": untuned,
        "postprocess_before_tuning": asdict(start),
        "image_level": image_metrics(labels, scores, tuned.score_threshold),
        "by_view": by_view,
    }
    write_text_atomic(paths.metrics_json, json.dumps(_finite(result), indent=2) + "\n")
    thresholds = GRID["score_threshold"]
    curve = [rsna_map(val.truths, apply(val, replace(tuned, score_threshold=t))).rsna_map for t in thresholds]
    plot_threshold(thresholds, curve, tuned, paths.plots / "threshold.png")
    plot_roc(labels, scores, result["image_level"], tuned.score_threshold, paths.plots / "roc.png")
    plot_examples(dataset, val, apply(val, tuned), score.per_image, paths.plots / "val_examples")
    return result


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
