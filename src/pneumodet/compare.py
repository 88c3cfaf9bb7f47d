"""``pneumodet compare A B``: is one detector better than another on the same images, beyond chance?

A and B are report folders written by ``evaluate``: a run (its val report) or an external report
(``RUN/external/NAME``), e.g. a folds ensemble and one of its folds on the same external set. Their per-image
tables (``report/per_image.csv``) are joined on patientId, and each figure's difference A - B is bootstrapped over
the images they share, both systems on the same resamples (the paired bootstrap), by group where both tables
have groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.errors import UserError
from pneumodet.metrics import roc_auc
from pneumodet.stats import interval, resample_weights, weighted_auc, weighted_mean

PER_IMAGE = Path("report") / "per_image.csv"


def read_per_image(folder: str | Path) -> pd.DataFrame:
    """Return a report folder's per-image table; a one-line UserError naming what to run if it has none."""
    path = Path(folder) / PER_IMAGE
    if not path.is_file():
        raise UserError(f"{folder}: no {PER_IMAGE} (evaluate the run, or score an external set with pneumodet "
                        "evaluate RUN --data CACHE --split all, first)")
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "group": str})
        table["rsna_score"], table["image_score"], table["truth_boxes"]  # noqa: B018 (present, or KeyError)
    except (ValueError, KeyError, pd.errors.ParserError):
        raise UserError(f"{path}: not a per-image table pneumodet wrote; evaluate again") from None
    return table


def compare(a: str | Path, b: str | Path) -> dict:
    """Return each report's RSNA mAP and image-level ROC AUC on the images both scored, and the paired bootstrap
    difference A - B of each, with 95 % intervals."""
    first, second = read_per_image(a), read_per_image(b)
    joined = first.merge(second, on="patient_id", suffixes=("_a", "_b"))
    if joined.empty:
        raise UserError(f"{a} and {b} share no image: compare reports on the same set (e.g. two runs' reports on "
                        "one external set)")
    if (joined["truth_boxes_a"] != joined["truth_boxes_b"]).any():
        raise UserError(f"{a} and {b} disagree on the truth of some images: they were scored against different "
                        "labels")
    groups = joined["group_a"] if "group_a" in joined and "group_b" in joined else None
    resamples = resample_weights(len(joined), groups)
    weights = resamples.weights
    labels = joined["truth_boxes_a"].to_numpy() > 0
    out = {"a": str(a), "b": str(b), "images": int(len(joined)), "only_in_a": int(len(first) - len(joined)),
           "only_in_b": int(len(second) - len(joined)), "bootstrap": resamples.describe()}
    for name, column, statistic, resampled in (
            ("rsna_map", "rsna_score", lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan,
             lambda v: weighted_mean(v, weights)),
            ("roc_auc", "image_score", lambda v: roc_auc(labels, v), lambda v: weighted_auc(labels, v, weights))):
        va, vb = joined[f"{column}_a"].to_numpy(float), joined[f"{column}_b"].to_numpy(float)
        ra, rb = resampled(va), resampled(vb)
        difference = statistic(va) - statistic(vb)
        out[name] = {"a": statistic(va), "a_ci": interval(ra), "b": statistic(vb), "b_ci": interval(rb),
                     "difference": difference, "difference_ci": interval(ra - rb)}
    return out
