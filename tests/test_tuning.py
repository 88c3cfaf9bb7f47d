"""Tuning on a labelled set: the search, and which setting wins a tie."""

import numpy as np

from pneumodet.candidates import Candidates
from pneumodet.postprocess import PostProcess
from pneumodet.tuning import Search, ValSet, score, tune

TRUTH = np.array([[100.0, 100.0, 300.0, 300.0]])


def _val() -> ValSet:
    """A positive found at 0.9 with a weaker false box at 0.2, and a negative with a box at 0.25: any score
    threshold in (0.25, 0.9] scores 1.0."""
    return ValSet(["p", "n"], ["PA", "PA"], [TRUTH, np.zeros((0, 4))],
                  [Candidates(np.r_[TRUTH, [[500.0, 500.0, 600.0, 600.0]]], np.array([0.9, 0.2])),
                   Candidates(np.array([[50.0, 50.0, 150.0, 150.0]]), np.array([0.25]))])


def test_a_tie_keeps_the_setting_already_held():
    """Every threshold from 0.3 to 0.9 scores 1.0: the search keeps the one it started from, not the last it tried,
    so the tuned settings move only for a better score."""
    search = Search({"score_threshold": [0.3, 0.5, 0.7, 0.9]}, (), 1)
    start = PostProcess(0.5, 0.1, 3, 1.0)
    best, best_score = tune(_val(), start, search, gate=False)
    assert best_score == 1.0 and best == start
    best, _ = tune(_val(), PostProcess(0.1, 0.1, 3, 1.0), search, gate=False)  # 0.1 keeps false boxes: 0.3 wins
    assert best.score_threshold == 0.3


def test_the_search_finds_the_threshold_that_drops_the_false_boxes():
    val = _val()
    start = PostProcess(0.1, 0.1, 3, 1.0)
    assert score(val, start) < 1.0
    best, best_score = tune(val, start, Search({"score_threshold": [0.1, 0.2, 0.3]}, (), 1), gate=False)
    assert best.score_threshold == 0.3 and best_score == 1.0
