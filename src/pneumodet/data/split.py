"""Image-level train/val split: deterministic for a seed, stratified, and grouped.

In RSNA a ``patientId`` names an image, not a person. ``groups`` maps image -> group (e.g. the
real person); a group never straddles the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pneumodet.errors import UserError


def read_groups(path: str | Path) -> dict[str, str]:
    """Return patient_id -> group from a CSV with columns patientId (or patient_id) and group."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str)
    except FileNotFoundError:
        raise UserError(f"{path}: groups file not found") from None
    except Exception as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    id_column = next((c for c in ("patientId", "patient_id") if c in frame.columns), None)
    if id_column is None or "group" not in frame.columns:
        raise UserError(f"{path}: needs columns patientId,group (found {','.join(frame.columns)})")
    frame = frame.dropna(subset=[id_column, "group"])
    return dict(zip(frame[id_column].str.strip(), frame["group"].str.strip(), strict=True))


def _groups_by_stratum(images: pd.DataFrame, groups: dict[str, str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (images with a group column, one row per group with its stratum and size)."""
    frame = images[["patient_id", "label_class", "view"]].copy()
    frame["label_class"] = frame["label_class"].astype(object).fillna("unknown").astype(str)
    frame["view"] = frame["view"].fillna("unknown").astype(str)
    groups = groups or {}
    frame["group"] = [groups.get(pid, f"image:{pid}") for pid in frame["patient_id"]]
    # most positive class first: "Lung Opacity" < "No Lung Opacity / Not Normal" < "Normal"
    per_group = frame.sort_values(["group", "label_class", "view"]).groupby("group", sort=True).agg(
        label_class=("label_class", "first"), view=("view", "first"), size=("patient_id", "size"))
    per_group["stratum"] = per_group["label_class"] + "|" + per_group["view"]
    return frame, per_group


def assign_folds(images: pd.DataFrame, k: int, seed: int = 0, groups: dict[str, str] | None = None) -> pd.Series:
    """Return each image's fold (0 .. k-1), aligned with ``images``: stratified by (class, view) and grouped
    (a group's images share a fold), with folds of near-equal size in every stratum."""
    if k < 2:
        raise UserError(f"--folds must be at least 2, got {k}")
    frame, per_group = _groups_by_stratum(images, groups)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    totals = np.zeros(k)
    for _, stratum in per_group.groupby("stratum", sort=True):
        counts = np.zeros(k)
        names = stratum.index.to_numpy()
        for name in names[rng.permutation(len(names))]:
            fold = int(np.lexsort((np.arange(k), totals, counts))[0])  # fewest here, then fewest overall
            fold_of[name] = fold
            size = int(stratum.at[name, "size"])
            counts[fold] += size
            totals[fold] += size
    return pd.Series([fold_of[g] for g in frame["group"]], index=images.index, name="fold")


def split_images(
    images: pd.DataFrame,
    val_fraction: float = 0.1,
    seed: int = 0,
    groups: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Return (patient_id, split) with split in {"train", "val"}.

    ``images`` has columns patient_id, label_class and view. Strata are (class, view) of each
    group (a group's class is that of its most positive image). Images without a group are their
    own group. The fractional remainder carries from stratum to stratum so the val share is close
    to ``val_fraction`` even for small sets.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    frame, per_group = _groups_by_stratum(images, groups)
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    carry = 0.0
    for _, stratum in per_group.groupby("stratum", sort=True):
        names = stratum.index.to_numpy()
        order = rng.permutation(len(names))
        target = val_fraction * stratum["size"].sum() + carry
        taken = 0
        for name in names[order]:
            size = int(stratum.at[name, "size"])
            if taken + size / 2 <= target:
                val_groups.add(name)
                taken += size
        carry = target - taken
    frame["split"] = np.where(frame["group"].isin(val_groups), "val", "train")
    return frame[["patient_id", "split"]].reset_index(drop=True)


def fold_split(table: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Return the (patient_id, split) table of one fold: its images are val, every other image train (fold -1, an
    image ``distil`` added, trains in every fold)."""
    out = pd.DataFrame({"patient_id": table["patient_id"],
                        "split": np.where(table["fold"].astype(int) == fold, "val", "train")})
    if "group" in table.columns:  # evaluate's intervals resample whole groups
        out["group"] = table["group"].to_numpy()
    return out
