"""Tuning the post-processing on a labelled set: the one search that per-epoch validation and ``evaluate``
both run, so a run's last val figure is evaluate's on the same weights.

A :class:`ValSet` holds every image's candidates (before post-processing) and truth, in the image's own pixels;
:func:`tune` finds the post-processing (score and gate thresholds jointly, then NMS, max boxes and shrink by
coordinate ascent) that maximises the RSNA mAP on it. Training validates with :data:`COARSE` between epochs
(thresholds only, a coarser grid) and with the full :data:`GRID` on its last epoch, as evaluate does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from pneumodet.candidates import Candidates
from pneumodet.metrics import Prediction, rsna_map
from pneumodet.postprocess import PostProcess, image_score, postprocess

GRID = {
    "score_threshold": [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)],
    "nms_iou": [0.01, 0.1, 0.2, 0.3, 0.5],
    "max_boxes": [1, 2, 3, 4],
    "shrink": [0.8, 0.85, 0.875, 0.9, 0.95, 1.0],
}
#: gate thresholds tried (0: no gate), jointly with every score threshold
GATE_GRID = [0.0] + [round(t, 2) for t in np.arange(0.1, 0.91, 0.1)]


@dataclass(frozen=True)
class Search:
    """What :func:`tune` searches: ``grid`` (setting -> values, by coordinate ascent, ``rounds`` times) after the
    joint search of ``gate_grid`` x ``grid["score_threshold"]`` for a gated model."""

    grid: dict = field(default_factory=lambda: dict(GRID))
    gate_grid: tuple = tuple(GATE_GRID)
    rounds: int = 2


FULL = Search()
#: between epochs: the two thresholds only, on a coarser grid (the NMS, max boxes and shrink of the config)
COARSE = Search({"score_threshold": [round(t, 2) for t in np.arange(0.1, 0.91, 0.1)]}, (0.0, 0.2, 0.4, 0.6, 0.8), 1)
#: the score threshold alone (with ``gate=False``: what a model without tuned post-processing can reach)
THRESHOLD = Search({"score_threshold": GRID["score_threshold"]}, (), 1)


@dataclass(frozen=True)
class ValSet:
    """Labelled images with the model's candidates: truth and boxes xyxy in each image's own pixels.

    ``groups``: each image's group for a grouped bootstrap (e.g. a person; None: each image its own)."""

    patient_ids: list[str]
    views: list[str]
    truths: list[np.ndarray]
    raw: list[Candidates]
    groups: list[str] | None = None

    def subset(self, mask) -> ValSet:
        keep = np.flatnonzero(mask)
        pick = [[getattr(self, f)[i] for i in keep] for f in ("patient_ids", "views", "truths", "raw")]
        return ValSet(*pick, None if self.groups is None else [self.groups[i] for i in keep])

    @staticmethod
    def concat(parts: list[ValSet]) -> ValSet:
        joined = [sum((getattr(p, f) for p in parts), []) for f in ("patient_ids", "views", "truths", "raw")]
        groups = None if any(p.groups is None for p in parts) else sum((p.groups for p in parts), [])
        return ValSet(*joined, groups)

    @property
    def has_gate(self) -> bool:
        return bool(self.raw) and not any(math.isnan(c.gate) for c in self.raw)

    @property
    def labels(self) -> np.ndarray:
        """Each image's truth at image level: True where it holds a box."""
        return np.array([len(t) > 0 for t in self.truths], dtype=bool)


def apply(val: ValSet, pp: PostProcess) -> list[Prediction]:
    """Return every image's boxes and scores after ``pp``."""
    return [Prediction(*postprocess(c.boxes_orig_xyxy, c.scores, pp, c.gate)) for c in val.raw]


def score(val: ValSet, pp: PostProcess) -> float:
    """Return the RSNA mAP of ``val`` after ``pp``."""
    return rsna_map(val.truths, apply(val, pp)).rsna_map


def tune(val: ValSet, start: PostProcess, search: Search = FULL, gate: bool = True) -> tuple[PostProcess, float]:
    """Return the post-processing that maximises RSNA mAP on ``val`` and that mAP.

    With a gate (and ``gate``), the gate and score thresholds are searched jointly on a grid first (they trade
    against each other: a strict gate lets a loose box threshold through); then each setting in turn
    (coordinate ascent), ``search.rounds`` times. ``gate=False`` tunes with the gate off (the comparison without
    it). Ties keep the earlier value.
    """
    grid = dict(search.grid)
    if val.has_gate and gate:
        grid["gate_threshold"] = list(search.gate_grid)
        best, best_score = start, score(val, start)
        for g in search.gate_grid:
            for t in search.grid["score_threshold"]:
                candidate = replace(best, gate_threshold=g, score_threshold=t)
                candidate_score = score(val, candidate)
                if candidate_score > best_score + 1e-9:
                    best, best_score = candidate, candidate_score
    else:
        best = replace(start, gate_threshold=0.0)
        best_score = score(val, best)
    for _ in range(search.rounds):
        for name, values in grid.items():
            for value in values:
                candidate = replace(best, **{name: value})
                candidate_score = score(val, candidate)
                if candidate_score > best_score + 1e-9:
                    best, best_score = candidate, candidate_score
    return best, best_score


def image_scores(val: ValSet, pp: PostProcess) -> np.ndarray:
    """Return every image's score: the gate's probability where there is a gate, else its highest box score."""
    return np.array([image_score(c.boxes_orig_xyxy, c.scores, pp, c.gate) for c in val.raw])
