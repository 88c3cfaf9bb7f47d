"""A labelled set's candidates, predicted once and kept with the record of how they were made.

``FOLDER/NAME.csv`` (one row per candidate box, original pixels; ``NAME.gate.csv`` for a gated model) and
``FOLDER/NAME.json``, written last: each file's SHA-256, the checkpoint it came from and the inference settings
(flip TTA, its sizes, box refinement, box voting). ``evaluate --reuse`` re-scores them only when the record says
they are whole and were made by the same weights under the same settings: predictions cut short by a kill, or
made under other settings, are refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pneumodet.boxes import xywh_to_xyxy
from pneumodet.candidates import Candidates
from pneumodet.data.dataset import PneumoniaDataset, collate
from pneumodet.detector import Detector
from pneumodet.errors import UserError
from pneumodet.files import checkpoint_identity, sha256_of, write_text_atomic
from pneumodet.report.submission import read_candidates, write_candidates
from pneumodet.settings import TUNED_KEYS
from pneumodet.tuning import ValSet


def inference_settings(detector: Detector) -> dict:
    """Return the settings that change the candidates (and so what thresholds are tuned on): TTA on or off, its
    sizes, the box refinement passes and box voting."""
    settings = detector.settings
    return {k: list(settings.tta_scales) if k == "tta_scales" else getattr(settings, k) for k in TUNED_KEYS}


def predict_dataset(detector: Detector, dataset: PneumoniaDataset, batch_size: int = 8, progress: bool = True,
                    label: str = "val") -> list[Candidates]:
    """Return every image's Candidates (boxes_orig_xyxy, scores, gate) in ``dataset``, before post-processing."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=collate)
    sizes = list(zip(dataset.records["original_height"].astype(int), dataset.records["original_width"].astype(int),
                     strict=True))
    results: list[Candidates] = []
    for images, _ in tqdm(loader, desc=f"predict {label}", unit="batch", disable=not progress):
        results += detector.candidates(list(images), sizes[len(results): len(results) + len(images)])
    return results


def labelled_set(dataset: PneumoniaDataset, raw: list[Candidates], groups: dict[str, str] | None = None) -> ValSet:
    """Return the ValSet of ``dataset``'s images with their candidates ``raw`` (``groups``: patient_id -> group
    for a grouped bootstrap; an image without one is its own)."""
    ids = [str(pid) for pid in dataset.records["patient_id"]]
    return ValSet(ids, list(dataset.records["view"].fillna("unknown")),
                  [xywh_to_xyxy(dataset.boxes_orig_xywh(i)) for i in range(len(dataset))], raw,
                  None if groups is None else [groups.get(pid, f"image:{pid}") for pid in ids])


def groups_of(table) -> dict[str, str] | None:
    """Return patient_id -> group from a split table that has a group column (``prepare --groups``), else None."""
    if table is None or "group" not in table.columns:
        return None
    return dict(zip(table["patient_id"].astype(str), table["group"].astype(str), strict=True))


def candidates_of(detector: Detector, dataset: PneumoniaDataset, folder: Path, name: str, *, reuse: bool,
                  progress: bool, label: str | None = None) -> tuple[list[Candidates], dict]:
    """Return ``dataset``'s candidates and their record: predicted now and saved as ``folder/name.*``, or with
    ``reuse`` read back after :func:`check_record` (``label``: what the progress bar calls the set)."""
    ids = [str(pid) for pid in dataset.records["patient_id"]]
    if reuse:
        record = check_record(read_record(folder, name), detector, folder, name)
        saved = read_candidates(folder / f"{name}.csv")
        return [saved.get(pid, Candidates.empty()) for pid in ids], record
    raw = predict_dataset(detector, dataset, detector.config.predict.batch_size, progress, label=label or name)
    return raw, write_predictions(folder, name, dict(zip(ids, raw, strict=True)), detector)


def write_predictions(folder: Path, name: str, raw: dict[str, Candidates], detector: Detector) -> dict:
    """Write ``folder/name.csv`` (and ``.gate.csv``), then the record of how they were made (``name.json``: the
    inference settings, the checkpoint, each file's SHA-256); return the record. The record is written last, so
    predictions cut short by a kill never match one."""
    record_path(folder, name).unlink(missing_ok=True)
    csv = folder / f"{name}.csv"
    write_candidates(csv, raw)
    files = [f for f in (csv, csv.with_name(f"{name}.gate.csv")) if f.is_file()]
    record = {"settings": inference_settings(detector), "checkpoint": checkpoint_identity(Path(detector.info["path"])),
              "sha256": {f.name: sha256_of(f) for f in files}}
    write_text_atomic(record_path(folder, name), json.dumps(record, indent=2) + "\n")
    return record


def record_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def read_record(folder: Path, name: str) -> dict:
    """Return how ``folder/name.csv`` was made; a one-line UserError when nothing says (never made, made by an
    older pneumodet, or cut short)."""
    path = record_path(folder, name)
    again = "evaluate again without --reuse"
    try:
        record = json.loads(path.read_text())
        record["settings"], record["sha256"], record["checkpoint"]  # noqa: B018 (present, or KeyError)
    except FileNotFoundError:
        raise UserError(f"{folder / f'{name}.csv'}: no record of how these predictions were made (missing, cut "
                        f"short, or made by an older pneumodet); {again}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a predictions record pneumodet wrote; {again}") from None
    return record


def check_record(record: dict, detector: Detector, folder: Path, name: str) -> dict:
    """Return ``record`` if the saved predictions are the files it describes, from the detector's weights and
    under its settings; else a one-line UserError saying what differs."""
    again = "evaluate again without --reuse"
    for file, digest in record["sha256"].items():
        path = folder / file
        if not path.is_file() or sha256_of(path) != digest:
            raise UserError(f"{path}: not the file its record describes (changed, or cut short by a kill); {again}")
    if record["checkpoint"] != checkpoint_identity(Path(detector.info["path"])):
        raise UserError(f"{folder / f'{name}.csv'}: made with other weights than {detector.info['path']}; {again}")
    differ = [f"{k} {record['settings'].get(k)} (asked: {v})" for k, v in inference_settings(detector).items()
              if record["settings"].get(k) != v]
    if differ:
        raise UserError(f"{folder / f'{name}.csv'}: made with {', '.join(differ)}; re-score them with those "
                        f"settings, or {again}")
    return record


def recorded_settings(folder: Path, name: str, asked: dict) -> dict:
    """Return the inference settings to re-score saved predictions with: the ones asked for, each one not asked
    for taken from the predictions' record (they can only be scored as they were made)."""
    record = read_record(folder, name)
    return {k: record["settings"].get(k) if v is None else v for k, v in asked.items()}


def finite(value):
    """Return ``value`` (nested dicts and lists) with NaN as None, for JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.floating | np.integer | np.bool_):
        return value.item()
    return value
