"""``pneumodet evaluate``: tune the post-processing once, on the run's own val, then score any labelled set with
it frozen.

- ``evaluate RUN``: predicts the run's val images (its own split.csv; a folds folder: each fold's val, out of
  fold), tunes the post-processing on them (:mod:`pneumodet.tuning`) and writes ``RUN/metrics.json``, the only
  file that holds a run's tuning, which predict, serve and the API follow.
- ``evaluate RUN --data CACHE --split all``: an external test. Every image of another labelled set, predicted
  and post-processed with the run's frozen settings (metrics.json's), scored, and written to
  ``RUN/external/NAME/``; the run's own files are not touched. ``--retune`` tunes on the set instead, and says so.

Either report is :func:`pneumodet.assess.assess`: metrics.json with 95 % bootstrap intervals, CSV tables in
``report/`` and plots in ``plots/``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from pneumodet.assess import assess
from pneumodet.checkpoints import fold_runs, run_dataset
from pneumodet.data.dataset import PneumoniaDataset, read_split
from pneumodet.detector import Detector, load_detector
from pneumodet.errors import UserError
from pneumodet.files import write_text_atomic
from pneumodet.postprocess import PostProcess
from pneumodet.report.submission import write_candidates
from pneumodet.runs import RunPaths, find_run, is_folds, run_split, write_split
from pneumodet.saved import (
    candidates_of,
    finite,
    groups_of,
    inference_settings,
    labelled_set,
    recorded_settings,
)
from pneumodet.tuning import GRID, ValSet, apply, score, tune

EXTERNAL = "external"
REPORT = "report"


def evaluate(run: str | Path, cache: str | Path | None = None, split: str = "val", progress: bool = True,
             reuse_predictions: bool = False, hflip_tta: bool | None = None,
             tta_scales: tuple[float, ...] | None = None, box_refine: int | None = None,
             box_vote: bool | None = None, name: str | None = None, retune: bool = False) -> dict:
    """Evaluate a run: on its val split, tune the post-processing and write metrics.json (the run's tuning); with
    ``split="all"``, score every image of ``cache`` with that tuning frozen (:func:`evaluate_external`).

    A folds folder (``train --folds K``) is tuned out of fold: see :func:`evaluate_folds`. ``hflip_tta``:
    predict val with TTA (flips, and each size of ``tta_scales``), ``box_refine``: with that many passes of the box
    head over its detections, ``box_vote``: with box voting (default for each: the run's config); metrics.json
    records them, and predict then uses the same settings unless told otherwise, since they change the scores
    (or boxes) the thresholds are tuned on.
    """
    asked = {"hflip_tta": hflip_tta, "tta_scales": None if tta_scales is None else list(tta_scales),
             "box_refine": box_refine, "box_vote": box_vote}
    if split == "all":
        if any(v is not None for v in asked.values()):
            raise UserError("an external set is predicted with the settings the run was tuned with (metrics.json); "
                            "drop --tta, --tta-scales, --box-refine and --box-vote, or evaluate the run again with them")
        return evaluate_external(run, cache, name, retune=retune, reuse_predictions=reuse_predictions,
                                 progress=progress)
    if name is not None or retune:
        raise UserError("--name and --retune go with --split all (an external set); evaluate RUN tunes on its val")
    if is_folds(run):
        return evaluate_folds(run, cache, progress=progress, reuse_predictions=reuse_predictions, asked=asked)
    detector = _detector(run, RunPaths(Path(run)).predictions, reuse_predictions, asked)
    dataset = run_dataset(detector.paths, detector.config, detector.info, "val", cache)
    if len(dataset) == 0:
        raise UserError(f"{cache or detector.info['cache']}: none of the run's val images are in this cache; "
                        "evaluate another labelled set with --split all")
    raw, record = candidates_of(detector, dataset, detector.paths.predictions, "val", reuse=reuse_predictions,
                                progress=progress)
    val = labelled_set(dataset, raw, groups_of(run_split(detector.paths)))
    result, tuned, tables = _tuned_report(val, PostProcess.from_config(detector.config.predict))
    result = {**result, "split": "val", "checkpoint": detector.info["path"], "epoch": detector.info.get("epoch"),
              **inference_settings(detector), "predictions": record}
    write_report(detector.paths.root, result, val, tuned, tables, dataset=dataset, threshold_curve=True)
    return result


def _detector(run: str | Path, predictions: Path, reuse: bool, asked: dict) -> Detector:
    """Return the run's Detector with the TTA, box refinement and box voting asked for, else the run's own
    predict.hflip_tta, predict.tta_scales, predict.box_refine and predict.box_vote (evaluate starts from the
    checkpoint's config, never from a previous evaluation); with ``reuse``, each not asked for is the one the
    saved predictions were made with."""
    if reuse:
        asked = recorded_settings(predictions, "val", asked)
    scales = asked["tta_scales"]
    return load_detector(run, use_tuning=False, hflip_tta=asked["hflip_tta"], box_refine=asked["box_refine"],
                         tta_scales=None if scales is None else tuple(scales), box_vote=asked["box_vote"])


def _tuned_report(val: ValSet, start: PostProcess) -> tuple[dict, PostProcess, dict]:
    """Return (metrics.json's body, the tuned post-processing, the tables) of ``val`` tuned from ``start``."""
    tuned, _ = tune(val, start)
    result, tables = assess(val, tuned)
    result.update({"postprocess": asdict(tuned), "tuned_on": "val", "rsna_map_before_tuning": score(val, start),
                   "postprocess_before_tuning": asdict(start)})
    if val.has_gate:  # the same tuning with the gate off: what the gate is worth on these images
        without, without_score = tune(val, start, gate=False)
        result["rsna_map_without_gate"] = without_score
        result["postprocess_without_gate"] = asdict(without)
    return result, tuned, tables


def evaluate_folds(folds: str | Path, cache: str | Path | None = None, progress: bool = True,
                   reuse_predictions: bool = False, asked: dict | None = None) -> dict:
    """Evaluate each fold's run on its own val fold; tune post-processing on all their out-of-fold predictions
    together (every labelled image once); write FOLDS/metrics.json, which predict uses for the ensemble."""
    folds, asked = Path(folds), asked or dict.fromkeys(("hflip_tta", "tta_scales", "box_refine", "box_vote"))
    parts, per_fold, start, detector = [], [], None, None
    for fold in fold_runs(folds):
        detector = _detector(fold, RunPaths(fold).predictions, reuse_predictions, asked)
        start = start or PostProcess.from_config(detector.config.predict)
        dataset = run_dataset(detector.paths, detector.config, detector.info, "val", cache)
        raw, record = candidates_of(detector, dataset, detector.paths.predictions, "val", reuse=reuse_predictions,
                                    progress=progress)
        parts.append(labelled_set(dataset, raw, groups_of(run_split(detector.paths))))
        per_fold.append({"run": fold.name, "images": len(raw), "checkpoint": detector.info["path"],
                         "epoch": detector.info.get("epoch"), "predictions": record})
    oof = ValSet.concat(parts)
    result, tuned, tables = _tuned_report(oof, start)
    for entry, val in zip(per_fold, parts, strict=True):
        entry["rsna_map"] = score(val, tuned)  # each fold with the post-processing tuned on all of them
    result = {**result, "split": "out-of-fold", "tuned_on": "out-of-fold val", "folds": per_fold,
              **inference_settings(detector)}
    paths = RunPaths(folds)
    # the out-of-fold predictions with every image as "val": serve FOLDS reviews all of them
    write_candidates(paths.predictions / "val.csv", dict(zip(oof.patient_ids, oof.raw, strict=True)))
    write_split(paths, pd.DataFrame({"patient_id": oof.patient_ids, "split": "val"}))
    write_report(folds, result, oof, tuned, tables, threshold_curve=True)
    return result


def set_name(cache: str | Path, name: str | None) -> str:
    """Return the name an external set's report folder takes: ``name``, else the cache folder's own."""
    chosen = name or Path(cache).resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", chosen):
        raise UserError(f"--name {chosen[:40]!r}: use letters, digits, '.', '_' and '-' (a folder name)")
    return chosen


def evaluate_external(run: str | Path, cache: str | Path | None, name: str | None = None, *, retune: bool = False,
                      reuse_predictions: bool = False, progress: bool = True) -> dict:
    """Score every image of the labelled set in ``cache`` with ``run``'s frozen tuning (its metrics.json: the
    post-processing and the inference settings; a folds folder: the ensemble) and write the report to
    ``RUN/external/NAME/`` (metrics.json, predictions/, report/, plots/). The run's own files are not touched;
    ``retune`` tunes on this set instead (an optimistic figure, labelled as such)."""
    if cache is None:
        raise UserError("--split all scores another labelled set: give it with --data CACHE "
                        "(pneumodet prepare OTHER_DATA --out CACHE --size PX)")
    root = Path(run)
    tuned_at = RunPaths(root) if is_folds(root) else find_run(root)
    if not tuned_at.metrics_json.is_file():
        raise UserError(f"{run}: not tuned yet (no metrics.json); run pneumodet evaluate {run} first, so that the "
                        "external set is scored with settings chosen on the run's own val")
    detector = load_detector(run)  # the frozen tuning: metrics.json's post-processing and inference settings
    name = set_name(cache, name)
    out = root / EXTERNAL / name
    dataset = PneumoniaDataset(cache, detector.image_size, "all", mask_shape=detector.config.data.mask_shape)
    _refuse_training_images(root, dataset, cache)
    raw, record = candidates_of(detector, dataset, out / "predictions", "all", reuse=reuse_predictions,
                                progress=progress, label=name)
    table = read_split(Path(cache) / "split.csv") if (Path(cache) / "split.csv").is_file() else None
    val = labelled_set(dataset, raw, groups_of(table))
    frozen = detector.postprocess
    pp = tune(val, frozen)[0] if retune else frozen
    result, tables = assess(val, pp)
    result = {**result, "set": name, "cache": str(Path(cache).resolve()), "run": str(root.resolve()),
              "split": "all", "tuned_on": "this set (--retune): an optimistic figure" if retune else
              f"{'out-of-fold val' if is_folds(root) else 'val'} of the run, frozen",
              "postprocess": asdict(pp), "postprocess_frozen": asdict(frozen), **inference_settings(detector),
              "checkpoint": detector.info["path"], "predictions": record}
    write_report(out, result, val, pp, tables, dataset=dataset, label=name)
    return result


def _refuse_training_images(root: Path, dataset: PneumoniaDataset, cache) -> None:
    """Raise a UserError when the set shares images with what the run (or a fold of it) trained on."""
    runs = fold_runs(root) if is_folds(root) else [root]
    ids = set(dataset.records["patient_id"].astype(str))
    for run in runs:
        table = run_split(RunPaths(run))
        trained = set(table.loc[table["split"] == "train", "patient_id"].astype(str)) & ids
        if trained:
            raise UserError(f"{cache}: {len(trained)} of its {len(ids)} images are training images of {run} "
                            f"(e.g. {sorted(trained)[0]}); an external test needs images the run never saw")


def write_report(folder: Path, result: dict, val: ValSet, pp: PostProcess, tables: dict, *, dataset=None,
                 threshold_curve: bool = False, label: str = "val") -> None:
    """Write a report into ``folder``: metrics.json, the CSV tables in report/, and the plots (roc, froc,
    precision_recall, calibration; threshold.png when tuned; examples/ when the images are at hand)."""
    from pneumodet.report.evaluation_plots import (
        plot_calibration,
        plot_examples,
        plot_froc,
        plot_precision_recall,
        plot_roc,
        plot_threshold,
    )

    folder = Path(folder)
    for table_name, table in tables.items():
        path = folder / REPORT / f"{table_name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, table.to_csv(index=False))
    write_text_atomic(folder / "metrics.json", json.dumps(finite(result), indent=2) + "\n")
    plots = folder / "plots"
    if threshold_curve:
        thresholds = GRID["score_threshold"]
        plot_threshold(thresholds, [score(val, replace(pp, score_threshold=t)) for t in thresholds], pp,
                       plots / "threshold.png", label)
    plot_roc(val.labels, tables["per_image"]["image_score"].to_numpy(), result["image_level"], plots / "roc.png",
             label)
    plot_froc(tables["froc"], result["box_level"]["froc"], plots / "froc.png", label)
    plot_precision_recall(tables["precision_recall"], result["box_level"]["coco"], plots / "precision_recall.png",
                          label)
    plot_calibration(tables["calibration"], result["calibration"], plots / "calibration.png", label)
    if dataset is not None:
        examples = "val_examples" if label == "val" else "examples"
        plot_examples(dataset, val, apply(val, pp), tables["per_image"], plots / examples)


def external_reports(run: str | Path) -> list[dict]:
    """Return the external reports of a run (folds folder) as read: RUN/external/*/metrics.json, newest first."""
    folder = Path(run) / EXTERNAL
    found = []
    for path in sorted(folder.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            found.append({"name": path.parent.name, **json.loads(path.read_text())})
        except (ValueError, OSError):
            continue
    return found

