"""The evaluation report's image-level figures."""

import numpy as np

from pneumodet.assess import operating_points


def test_an_image_scoring_exactly_the_threshold_is_called_positive():
    labels = np.array([True, True, False, False])
    scores = np.array([0.5, 0.9, 0.5, 0.1])
    table = operating_points(labels, scores).set_index("threshold")
    at = table.loc[0.5]
    assert (at["tp"], at["fn"], at["fp"], at["tn"]) == (2, 0, 1, 1)  # both 0.5s called: score >= threshold
    assert at["sensitivity"] == 1.0 and at["specificity"] == 0.5 and at["ppv"] == 2 / 3
    above = table.loc[0.55]
    assert (above["tp"], above["fp"]) == (1, 0)
