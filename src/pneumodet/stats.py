"""Bootstrap intervals: every figure pneumodet reports comes with a 95 % interval over the images (or the
groups) it was measured on. Pure numpy.

A bootstrap resample draws the images (or whole groups of them, e.g. a person's) with replacement; each figure is
recomputed on it. Drawing a unit k times is the same as weighting it k: :func:`resample_weights` gives a
(resamples, images) matrix of such counts, and each statistic here takes those weights, so one matrix serves every
figure of a report and all of them are computed on the same resamples (paired). The interval is the 2.5th and
97.5th percentile of the resampled values (the percentile bootstrap), seeded, so a report is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Resamples:
    """Bootstrap weights for ``n`` images: ``weights`` (R, n), how often each image is in each resample; ``by``
    says what was drawn ("image" or "group") and ``units`` how many of them there were."""

    weights: np.ndarray
    by: str
    units: int

    def describe(self) -> dict:
        return {"resamples": int(len(self.weights)), "by": self.by, "units": self.units, "seed": SEED,
                "level": LEVEL, "method": "percentile"}


def resample_weights(n: int, groups=None, resamples: int = RESAMPLES, seed: int = SEED) -> Resamples:
    """Return :class:`Resamples` for ``n`` images: each resample draws ``n`` images with replacement, or, with
    ``groups`` (a label per image), as many groups as there are, each with all its images."""
    rng = np.random.default_rng(seed)
    if groups is None:
        drawn = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), dtype=np.int64)
        weights = np.stack([np.bincount(row, minlength=n) for row in drawn]) if n else np.zeros((resamples, 0))
        return Resamples(weights.astype(np.float64), "image", n)
    _, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    count = int(index.max()) + 1 if len(index) else 0
    drawn = rng.integers(0, count, size=(resamples, count)) if count else np.zeros((resamples, 0), dtype=np.int64)
    per_group = np.stack([np.bincount(row, minlength=count) for row in drawn]) if count else np.zeros((resamples, 0))
    return Resamples(per_group[:, index].astype(np.float64), "group", count)


def interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """Return [low, high], the percentile interval of the finite ``values`` (None if there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def weighted_mean(values, weights: np.ndarray) -> np.ndarray:
    """Return each resample's mean of ``values`` (NaN entries do not count), weighted by ``weights`` (R, n)."""
    values = np.asarray(values, dtype=np.float64)
    counted = np.isfinite(values)
    total = weights[:, counted].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights[:, counted] @ values[counted] / np.where(total > 0, total, 1), np.nan)


def weighted_rate(hits, among, weights: np.ndarray) -> np.ndarray:
    """Return each resample's share of ``hits`` among the images where ``among`` is true (e.g. sensitivity: hits
    called positive, among the positives); NaN for a resample without any such image."""
    among = np.asarray(among, dtype=bool)
    return weighted_mean(np.where(among, np.asarray(hits, dtype=np.float64), np.nan), weights)


def weighted_auc(labels, scores, weights: np.ndarray) -> np.ndarray:
    """Return each resample's ROC AUC of ``scores`` for binary ``labels`` (ties count half), weighted by
    ``weights`` (R, n): the Mann-Whitney statistic, with every image counted as often as it was drawn."""
    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return np.full(len(weights), np.nan)
    order = np.argsort(scores, kind="stable")
    _, starts = np.unique(scores[order], return_index=True)
    w = weights[:, order]
    positive = labels[order]
    pos = np.add.reduceat(w * positive, starts, axis=1)  # per tie group: weight of positives
    neg = np.add.reduceat(w * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
    numerator = (pos * (below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def with_ci(value, ci, digits: int = 3) -> str:
    """Return '0.754 (0.710–0.790)': a figure and its interval ('n/a' for no figure, the figure alone without an
    interval)."""
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f} ({ci[0]:.{digits}f}–{ci[1]:.{digits}f})" if ci else f"{value:.{digits}f}"
