"""Bootstrap intervals against an exhaustive enumeration and a closed form; weighted statistics against the
same statistic on the data with each image repeated as often as it was drawn."""

import itertools

import numpy as np
import pytest

from pneumodet.metrics import roc_auc
from pneumodet.stats import (
    interval,
    resample_weights,
    weighted_auc,
    weighted_mean,
    weighted_rate,
)


def test_the_interval_of_a_mean_matches_every_possible_resample_enumerated():
    values = np.array([0.0, 0.2, 0.9, 1.0, 0.5])
    n = len(values)
    exact = np.array([values[list(draw)].mean() for draw in itertools.product(range(n), repeat=n)])  # all 3,125
    want = np.percentile(exact, [2.5, 97.5])
    drawn = resample_weights(n, resamples=40000, seed=1)
    got = interval(weighted_mean(values, drawn.weights))
    assert got == pytest.approx(want, abs=0.02)


def test_the_interval_of_a_proportion_matches_the_normal_closed_form():
    rng = np.random.default_rng(0)
    hits = rng.uniform(0, 1, 2000) < 0.3
    low, high = interval(weighted_mean(hits.astype(float), resample_weights(len(hits)).weights))
    p = hits.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / len(hits))
    assert low == pytest.approx(p - half, abs=0.004) and high == pytest.approx(p + half, abs=0.004)


def test_images_that_do_not_count_are_left_out_of_each_resample_mean():
    values = np.array([1.0, np.nan, 0.0, np.nan])
    weights = np.array([[2.0, 5.0, 1.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    got = weighted_mean(values, weights)
    assert got[0] == pytest.approx(2 / 3) and np.isnan(got[1])
    rate = weighted_rate([1, 0, 1, 1], [True, True, False, False], weights)  # sensitivity-like: among 0 and 1
    assert rate[0] == pytest.approx(2 / 7) and rate[1] == 0.0


def test_a_weighted_auc_is_the_auc_of_the_data_repeated_by_its_weights():
    rng = np.random.default_rng(5)
    labels = rng.uniform(0, 1, 60) < 0.4
    scores = np.round(rng.uniform(0, 1, 60), 1)  # many ties
    weights = resample_weights(60, resamples=20, seed=3).weights
    got = weighted_auc(labels, scores, weights)
    for row, value in zip(weights, got, strict=True):
        repeat = row.astype(int)
        assert value == pytest.approx(roc_auc(np.repeat(labels, repeat), np.repeat(scores, repeat)))
    assert weighted_auc(labels, scores, np.ones((1, 60)))[0] == pytest.approx(roc_auc(labels, scores))


def test_groups_are_drawn_whole():
    groups = ["a", "a", "a", "b", "c", "c"]
    drawn = resample_weights(6, groups=groups, resamples=200, seed=2)
    assert drawn.by == "group" and drawn.units == 3
    assert np.all(drawn.weights[:, 0] == drawn.weights[:, 1]) and np.all(drawn.weights[:, 4] == drawn.weights[:, 5])
    assert np.all(drawn.weights[:, [0, 3, 4]].sum(axis=1) == 3)  # three groups drawn each time
