"""What a model says about an image before post-processing, with the pixel space of its boxes in its type:
:class:`CacheCandidates` in the model's square input, :class:`Candidates` in the image's own pixels. One place
converts the first into the second (:meth:`CacheCandidates.to_original`). numpy only: ``score`` reads them without
torch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from pneumodet.boxes import cache_to_original_xyxy


class Candidates(NamedTuple):
    """One image's raw output in its own pixels: every candidate box before post-processing, and the gate's
    probability. What evaluate saves, tunes on and scores, and what the Detector post-processes."""

    boxes_orig_xyxy: np.ndarray  # (N, 4) float, in the DICOM's Rows x Columns pixels
    scores: np.ndarray  # (N,)
    gate: float = math.nan  # the image-level gate's probability of any opacity; NaN: the model has no gate

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 4)), np.zeros(0))


class CacheCandidates(NamedTuple):
    """One image's raw output as the model gives it: boxes in the pixels of its (cache-sized) input."""

    boxes_cache_xyxy: np.ndarray  # (N, 4) float, in the model's square input of image_size pixels
    scores: np.ndarray  # (N,)
    gate: float = math.nan

    def to_original(self, cache_px: int, original_size: tuple[int, int]) -> Candidates:
        """Return these candidates in the image's own pixels: the one place a box leaves cache pixels.

        ``cache_px``: the model's input size; ``original_size``: the image's (height, width)."""
        return Candidates(cache_to_original_xyxy(self.boxes_cache_xyxy, cache_px, original_size), self.scores,
                          self.gate)
