"""``pneumodet evaluate``: val predictions, tuned post-processing, RSNA and image-level metrics, plots."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pneumodet.boxes import xywh_to_xyxy
from pneumodet.data.dataset import PneumoniaDataset, collate
from pneumodet.detector import Detector, load_detector
from pneumodet.errors import UserError
from pneumodet.files import checkpoint_identity, sha256_of, write_text_atomic
from pneumodet.metrics import Prediction, roc_auc, rsna_map, sensitivity_specificity
from pneumodet.postprocess import Candidates, PostProcess, image_score, max_box_score, postprocess
from pneumodet.report.submission import read_candidates, write_candidates
from pneumodet.runs import RunPaths, fold_runs, is_folds, run_dataset, write_split

GRID = {
    "score_threshold": [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)],
    "nms_iou": [0.01, 0.1, 0.2, 0.3, 0.5],
    "max_boxes": [1, 2, 3, 4],
    "shrink": [0.8, 0.85, 0.875, 0.9, 0.95, 1.0],
}
#: gate thresholds tried (0: no gate), jointly with every score threshold
GATE_GRID = [0.0] + [round(t, 2) for t in np.arange(0.1, 0.91, 0.1)]


@dataclass(frozen=True)
class ValSet:
    patient_ids: list[str]
    views: list[str]
    truths: list[np.ndarray]  # xyxy, original pixels
    raw: list[Candidates]  # boxes xyxy in original pixels, scores, gate

    def subset(self, mask) -> ValSet:
        keep = np.flatnonzero(mask)
        return ValSet(*([getattr(self, f)[i] for i in keep] for f in ("patient_ids", "views", "truths", "raw")))

    @staticmethod
    def concat(parts: list[ValSet]) -> ValSet:
        return ValSet(*(sum((getattr(p, f) for p in parts), []) for f in ("patient_ids", "views", "truths", "raw")))

    @property
    def has_gate(self) -> bool:
        return bool(self.raw) and not any(math.isnan(c.gate) for c in self.raw)


def predict_dataset(detector: Detector, dataset: PneumoniaDataset, batch_size: int = 8,
                    progress: bool = True) -> list[Candidates]:
    """Return every image's Candidates (boxes_orig_xyxy, scores, gate) in ``dataset``, before post-processing."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=collate)
    sizes = list(zip(dataset.records["original_height"].astype(int), dataset.records["original_width"].astype(int),
                     strict=True))
    results: list[Candidates] = []
    for images, _ in tqdm(loader, desc="predict val", unit="batch", disable=not progress):
        results += detector.candidates(list(images), sizes[len(results): len(results) + len(images)])
    return results


def apply(val: ValSet, pp: PostProcess) -> list[Prediction]:
    return [Prediction(*postprocess(c.boxes_xyxy, c.scores, pp, c.gate)) for c in val.raw]


def _score(val: ValSet, pp: PostProcess) -> float:
    return rsna_map(val.truths, apply(val, pp)).rsna_map


def tune(val: ValSet, start: PostProcess, rounds: int = 2, gate: bool = True) -> tuple[PostProcess, float]:
    """Return the post-processing that maximises RSNA mAP on ``val`` and that mAP.

    With a gate (and ``gate``), the gate and score thresholds are searched jointly on a grid first (they trade
    against each other: a strict gate lets a loose box threshold through); then each setting in turn
    (coordinate ascent), ``rounds`` times. ``gate=False`` tunes with the gate off (the comparison without it).
    """
    grid = dict(GRID)
    if val.has_gate and gate:
        grid["gate_threshold"] = GATE_GRID
        best, best_score = start, _score(val, start)
        for g in GATE_GRID:
            for t in GRID["score_threshold"]:
                candidate = replace(best, gate_threshold=g, score_threshold=t)
                score = _score(val, candidate)
                if score > best_score + 1e-9:
                    best, best_score = candidate, score
    else:
        best = replace(start, gate_threshold=0.0)
        best_score = _score(val, best)
    for _ in range(rounds):
        for name, values in grid.items():
            for value in values:
                candidate = replace(best, **{name: value})
                score = _score(val, candidate)
                if score > best_score + 1e-9:
                    best, best_score = candidate, score
    return best, best_score


def image_scores(val: ValSet, pp: PostProcess) -> np.ndarray:
    """Return every image's score: the gate's probability where there is a gate, else its highest box score."""
    return np.array([image_score(c.boxes_xyxy, c.scores, pp, c.gate) for c in val.raw])


def image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Image-level metrics: ROC AUC, and sensitivity and specificity at ``threshold``."""
    sens, spec = sensitivity_specificity(labels, scores, threshold)
    return {"images": int(len(labels)), "positives": int(labels.sum()), "roc_auc": roc_auc(labels, scores),
            "sensitivity": sens, "specificity": spec}


def _image_level(val: ValSet, pp: PostProcess) -> dict:
    """Image-level metrics of the image score, with the gate's ROC AUC beside the max-box score's."""
    labels = np.array([len(t) > 0 for t in val.truths])
    scores = image_scores(val, pp)
    threshold = pp.gate_threshold if val.has_gate and pp.gate_threshold > 0 else pp.score_threshold
    max_box = np.array([max_box_score(c.boxes_xyxy, c.scores, pp) for c in val.raw])
    return {**image_metrics(labels, scores, threshold), "threshold": threshold,
            "gate_roc_auc": roc_auc(labels, scores) if val.has_gate else None,
            "max_box_roc_auc": roc_auc(labels, max_box)}


def summarize(val: ValSet, start: PostProcess) -> tuple[dict, PostProcess]:
    """Return the metrics of ``val`` after tuning (the body of metrics.json) and the tuned post-processing."""
    tuned, _ = tune(val, start)
    score = rsna_map(val.truths, apply(val, tuned))
    views = np.array(val.views)
    by_view = {view: {"rsna_map": _score(val.subset(views == view), tuned),
                      **_image_level(val.subset(views == view), tuned)} for view in sorted(set(val.views))}
    result = {
        "rsna_map": score.rsna_map,
        "per_threshold": score.per_threshold,
        "n_images_counted": score.n_images,
        "n_images": len(val.truths),
        "postprocess": asdict(tuned),
        "rsna_map_before_tuning": _score(val, start),
        "postprocess_before_tuning": asdict(start),
        "image_level": _image_level(val, tuned),
        "by_view": by_view,
    }
    if val.has_gate:  # the same tuning with the gate off: what the gate is worth on these images
        without, without_score = tune(val, start, gate=False)
        result["rsna_map_without_gate"] = without_score
        result["postprocess_without_gate"] = asdict(without)
    return result, tuned


def _plots(val: ValSet, tuned: PostProcess, result: dict, plots: Path) -> None:
    from pneumodet.report.evaluation_plots import plot_roc, plot_threshold

    thresholds = GRID["score_threshold"]
    curve = [_score(val, replace(tuned, score_threshold=t)) for t in thresholds]
    plot_threshold(thresholds, curve, tuned, plots / "threshold.png")
    labels = np.array([len(t) > 0 for t in val.truths])
    plot_roc(labels, image_scores(val, tuned), result["image_level"],
             result["image_level"]["threshold"], plots / "roc.png")


def collect(detector: Detector, cache: str | Path | None, split: str, progress: bool,
            reuse_predictions: bool) -> tuple[ValSet, PneumoniaDataset, dict]:
    """Return the candidates of a run's ``split`` images (its own split.csv) with their truth, and the record of
    how they were made (``PREDICTIONS/SPLIT.json``): predicted now and saved with it, or, with
    ``reuse_predictions``, read back after checking the record matches them, the weights and the settings."""
    paths, config, info = detector.paths, detector.config, detector.info
    dataset = run_dataset(paths, config, info, split, cache)
    cache = cache or info["cache"]
    if len(dataset) == 0:
        raise UserError(f"{cache}: none of the run's {split} images are in this cache; evaluate another "
                        "labelled set with --split all")
    ids = list(dataset.records["patient_id"])
    raw_csv = paths.predictions / f"{split}.csv"
    if reuse_predictions:
        record = check_record(read_record(paths, split), detector, paths, split)
        saved = read_candidates(raw_csv)
        raw = [saved.get(pid, Candidates.empty()) for pid in ids]
    else:
        raw = predict_dataset(detector, dataset, config.predict.batch_size, progress)
        record = write_predictions(paths, split, dict(zip(ids, raw, strict=True)), detector)
    val = ValSet(ids, list(dataset.records["view"].fillna("unknown")),
                 [xywh_to_xyxy(dataset.boxes_xywh(i)) for i in range(len(dataset))], raw)
    return val, dataset, record


def write_predictions(paths: RunPaths, split: str, raw: dict[str, Candidates], detector: Detector) -> dict:
    """Write ``PREDICTIONS/SPLIT.csv`` (and ``.gate.csv``), then the record of how they were made
    (``SPLIT.json``: the inference settings, the checkpoint, each file's SHA-256); return the record. The record
    is written last, so predictions cut short by a kill never match one."""
    record_path(paths, split).unlink(missing_ok=True)
    csv = paths.predictions / f"{split}.csv"
    write_candidates(csv, raw)
    files = [f for f in (csv, csv.with_name(f"{split}.gate.csv")) if f.is_file()]
    record = {"settings": _inference(detector), "checkpoint": checkpoint_identity(Path(detector.info["path"])),
              "sha256": {f.name: sha256_of(f) for f in files}}
    write_text_atomic(record_path(paths, split), json.dumps(record, indent=2) + "\n")
    return record


def record_path(paths: RunPaths, split: str) -> Path:
    return paths.predictions / f"{split}.json"


def read_record(paths: RunPaths, split: str) -> dict:
    """Return how ``PREDICTIONS/SPLIT.csv`` was made; a one-line UserError when nothing says (never made, made by
    an older pneumodet, or cut short)."""
    path = record_path(paths, split)
    again = f"run pneumodet evaluate {paths.root} without --reuse"
    try:
        record = json.loads(path.read_text())
        record["settings"], record["sha256"], record["checkpoint"]  # noqa: B018 (present, or KeyError)
    except FileNotFoundError:
        raise UserError(f"{paths.predictions / f'{split}.csv'}: no record of how these predictions were made "
                        f"(missing, cut short, or made by an older pneumodet); {again}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a predictions record pneumodet wrote; {again}") from None
    return record


def check_record(record: dict, detector: Detector, paths: RunPaths, split: str) -> dict:
    """Return ``record`` if the saved predictions are the files it describes, from the detector's weights and
    under its settings; else a one-line UserError saying what differs."""
    again = f"run pneumodet evaluate {paths.root} without --reuse"
    for name, digest in record["sha256"].items():
        path = paths.predictions / name
        if not path.is_file() or sha256_of(path) != digest:
            raise UserError(f"{path}: not the file its record describes (changed, or cut short by a kill); {again}")
    if record["checkpoint"] != checkpoint_identity(Path(detector.info["path"])):
        raise UserError(f"{paths.predictions / f'{split}.csv'}: made with other weights than "
                        f"{detector.info['path']}; {again}")
    wanted = _inference(detector)
    differ = [f"{k} {record['settings'].get(k)} (asked: {v})" for k, v in wanted.items()
              if record["settings"].get(k) != v]
    if differ:
        raise UserError(f"{paths.predictions / f'{split}.csv'}: made with {', '.join(differ)}; re-score them with "
                        f"those settings, or {again}")
    return record


def reused_settings(run: str | Path, split: str, asked: dict) -> dict:
    """Return the inference settings to re-score ``run``'s saved predictions with: the ones asked for, each one
    not asked for taken from the predictions' record (they can only be scored as they were made)."""
    record = read_record(RunPaths(Path(run)), split)
    return {k: record["settings"].get(k) if v is None else v for k, v in asked.items()}


def _inference(detector: Detector) -> dict:
    """Return the inference settings metrics.json records for predict to follow: TTA on or off, its sizes, the
    box refinement passes and box voting."""
    return {"hflip_tta": detector.predictors[0].hflip_tta, "tta_scales": list(detector.tta_scales),
            "box_refine": detector.box_refine, "box_vote": detector.box_vote}


def evaluate(run: str | Path, cache: str | Path | None = None, split: str = "val", progress: bool = True,
             reuse_predictions: bool = False, hflip_tta: bool | None = None,
             tta_scales: tuple[float, ...] | None = None, box_refine: int | None = None,
             box_vote: bool | None = None) -> dict:
    """Evaluate a run on its val split; tune and save post-processing; write metrics.json and plots.

    A folds folder (``train --folds K``) is evaluated out of fold: see :func:`evaluate_folds`. ``hflip_tta``:
    predict val with TTA (flips, and each size of ``tta_scales``), ``box_refine``: with that many passes of the box
    head over its detections, ``box_vote``: with box voting (default for each: the run's config); metrics.json
    records them, and predict then uses the same settings unless told otherwise, since they change the scores
    (or boxes) the thresholds are tuned on.
    """
    from pneumodet.report.evaluation_plots import plot_examples

    if is_folds(run):
        return evaluate_folds(run, cache, progress=progress, reuse_predictions=reuse_predictions,
                              hflip_tta=hflip_tta, tta_scales=tta_scales, box_refine=box_refine, box_vote=box_vote)
    detector = _detector(run, split, reuse_predictions, hflip_tta, tta_scales, box_refine, box_vote)
    val, dataset, record = collect(detector, cache, split, progress, reuse_predictions)
    result, tuned = summarize(val, PostProcess.from_config(detector.config.predict))
    result = {**result, "split": split, "checkpoint": detector.info["path"], "epoch": detector.info.get("epoch"),
              **_inference(detector), "predictions": record}
    write_text_atomic(detector.paths.metrics_json, json.dumps(_finite(result), indent=2) + "\n")
    _plots(val, tuned, result, detector.paths.plots)
    plot_examples(dataset, val, apply(val, tuned), rsna_map(val.truths, apply(val, tuned)).per_image,
                  detector.paths.plots / "val_examples")
    return result


def _detector(run: str | Path, split: str, reuse: bool, hflip_tta: bool | None, tta_scales: tuple[float, ...] | None,
              box_refine: int | None, box_vote: bool | None) -> Detector:
    """Return the run's Detector with the TTA, box refinement and box voting asked for, else the run's own
    predict.hflip_tta, predict.tta_scales, predict.box_refine and predict.box_vote (evaluate starts from the
    checkpoint's config, never from a previous evaluation); with ``reuse``, each not asked for is the one the
    saved predictions were made with."""
    asked = {"hflip_tta": hflip_tta, "tta_scales": None if tta_scales is None else list(tta_scales),
             "box_refine": box_refine, "box_vote": box_vote}
    if reuse:
        asked = reused_settings(run, split, asked)
    scales = asked["tta_scales"]
    return load_detector(run, use_tuning=False, hflip_tta=asked["hflip_tta"], box_refine=asked["box_refine"],
                         tta_scales=None if scales is None else tuple(scales), box_vote=asked["box_vote"])


def evaluate_folds(folds: str | Path, cache: str | Path | None = None, progress: bool = True,
                   reuse_predictions: bool = False, hflip_tta: bool | None = None,
                   tta_scales: tuple[float, ...] | None = None, box_refine: int | None = None,
                   box_vote: bool | None = None) -> dict:
    """Evaluate each fold's run on its own val fold; tune post-processing on all their out-of-fold predictions
    together (every labelled image once); write FOLDS/metrics.json, which predict uses for the ensemble."""
    folds = Path(folds)
    parts, per_fold, start = [], [], None
    for fold in fold_runs(folds):
        detector = _detector(fold, "val", reuse_predictions, hflip_tta, tta_scales, box_refine, box_vote)
        start = start or PostProcess.from_config(detector.config.predict)
        val, _, record = collect(detector, cache, "val", progress, reuse_predictions)
        parts.append(val)
        per_fold.append({"run": fold.name, "images": len(val.truths), "checkpoint": detector.info["path"],
                         "epoch": detector.info.get("epoch"), "predictions": record})
    oof = ValSet.concat(parts)
    result, tuned = summarize(oof, start)
    for entry, val in zip(per_fold, parts, strict=True):
        entry["rsna_map"] = _score(val, tuned)  # each fold with the post-processing tuned on all of them
    result = {**result, "split": "out-of-fold", "folds": per_fold, **_inference(detector)}
    paths = RunPaths(folds)
    # the out-of-fold predictions with every image as "val": serve FOLDS reviews all of them
    write_candidates(paths.predictions / "val.csv", dict(zip(oof.patient_ids, oof.raw, strict=True)))
    write_split(paths, pd.DataFrame({"patient_id": oof.patient_ids, "split": "val"}))
    write_text_atomic(paths.metrics_json, json.dumps(_finite(result), indent=2) + "\n")
    _plots(oof, tuned, result, paths.plots)
    return result


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
