import numpy as np
import pytest

from pneumodet.metrics import (
    THRESHOLDS,
    Prediction,
    image_precisions,
    roc_auc,
    rsna_map,
)

T = np.array([[0, 0, 10, 10]], dtype=float)


def pred(boxes, scores):
    return Prediction(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float))


def test_thresholds_are_the_challenges():
    assert THRESHOLDS.tolist() == [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]


def test_perfect_prediction_scores_one():
    score = rsna_map([T, T * 3], [pred(T, [0.9]), pred(T * 3, [0.5])])
    assert score.rsna_map == 1.0 and score.n_images == 2


def test_empty_truth_and_no_prediction_is_left_out():
    score = rsna_map([T, np.zeros((0, 4))], [pred(T, [0.9]), Prediction.empty()])
    assert score.n_images == 1 and score.rsna_map == 1.0
    assert np.isnan(score.per_image[1])
    assert rsna_map([np.zeros((0, 4))], [Prediction.empty()]).rsna_map == 0.0  # nothing counts


def test_empty_truth_with_a_prediction_scores_zero_and_counts():
    score = rsna_map([T, np.zeros((0, 4))], [pred(T, [0.9]), pred(T, [0.1])])
    assert score.n_images == 2 and score.rsna_map == 0.5


def test_missed_truth_scores_zero():
    assert image_precisions(T, np.zeros((0, 4)), []).tolist() == [0.0] * 8


def test_predictions_are_taken_by_descending_confidence():
    truths = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], float)
    p1, p2 = [0.5, 0, 10.5, 10], [-3, 0, 7, 10]  # p1 fits both truths, p2 only the first (IoU 0.54)
    # p1 first: it takes truth 1, p2 finds nothing left -> 1 TP, 1 FP, 1 FN at 0.40
    assert image_precisions(truths, [p1, p2], [0.9, 0.8])[0] == pytest.approx(1 / 3)
    # p2 first: it takes truth 1, p1 takes truth 2 -> 2 TP at 0.40
    assert image_precisions(truths, [p1, p2], [0.8, 0.9])[0] == pytest.approx(1.0)
    # the input order does not matter, only the scores
    assert np.array_equal(image_precisions(truths, [p2, p1], [0.9, 0.8]),
                          image_precisions(truths, [p1, p2], [0.8, 0.9]))


def test_iou_must_be_strictly_above_the_threshold():
    half = [[0, 0, 10, 5]]  # IoU exactly 0.5
    precisions = image_precisions(T, half, [1.0])
    assert precisions.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # 0.40, 0.45 match; 0.50 (not above) does not
    assert rsna_map([T], [pred(half, [1.0])]).rsna_map == pytest.approx(0.25)


def test_several_boxes_per_image():
    truths = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    preds = pred([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7])
    assert rsna_map([truths], [preds]).rsna_map == pytest.approx(2 / 3)  # 2 TP, 1 FP, 0 FN
    two_on_one = pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])
    assert rsna_map([T], [two_on_one]).rsna_map == pytest.approx(1 / 2)  # a truth matches once


def test_zero_area_boxes_never_match():
    assert image_precisions(T, [[5, 5, 5, 5]], [0.9]).tolist() == [0.0] * 8
    assert image_precisions([[5, 5, 5, 9]], [[5, 5, 5, 9]], [0.9]).tolist() == [0.0] * 8


def test_per_threshold_precision_and_mean():
    boxes = [[0, 0, 10, 7]]  # IoU 0.7: matches up to 0.65
    score = rsna_map([T], [pred(boxes, [1])])
    assert score.per_threshold == {"0.40": 1, "0.45": 1, "0.50": 1, "0.55": 1, "0.60": 1, "0.65": 1,
                                   "0.70": 0, "0.75": 0}
    assert score.rsna_map == pytest.approx(6 / 8)


def test_roc_auc():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == 0.75
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def _reference_image_score(truth_xywh: np.ndarray, pred_xywh: np.ndarray, scores: np.ndarray) -> float | None:
    """The widely used public RSNA kernel's rule (Yicheng Chen, Kaggle "mean-average-precision-metric"),
    written out independently here: boxes in x, y, w, h; for each threshold, each truth in turn takes the
    first prediction (by descending score) not yet taken whose IoU is >= t; precision = TP / (TP + FN + FP).
    Written in plain loops, with nothing shared with pneumodet.metrics."""
    if len(truth_xywh) == 0 and len(pred_xywh) == 0:
        return None
    ranked = [pred_xywh[i] for i in sorted(range(len(scores)), key=lambda i: -scores[i])]

    def overlap(a, b) -> float:
        left, top = max(a[0], b[0]), max(a[1], b[1])
        right, bottom = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
        if right <= left or bottom <= top:
            return 0.0
        inter = (right - left) * (bottom - top)
        return inter / (a[2] * a[3] + b[2] * b[3] - inter)

    total = 0.0
    for t in [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]:
        taken: set[int] = set()
        tp = fn = 0
        for box in truth_xywh:
            hit = next((j for j, p in enumerate(ranked) if j not in taken and overlap(box, p) >= t), None)
            if hit is None:
                fn += 1
            else:
                taken.add(hit)
                tp += 1
        total += tp / (tp + fn + len(ranked) - len(taken))
    return total / 8


def test_agrees_with_the_public_kernel_on_random_submissions():
    rng = np.random.default_rng(11)
    truths, predictions, reference = [], [], []
    for _ in range(600):
        n_truth = rng.choice([0, 0, 1, 2, 3])
        truth = []
        while len(truth) < n_truth:  # as in the real data: one image's boxes do not overlap
            w, h = rng.uniform(40, 300, 2)
            box = np.array([rng.uniform(0, 1024 - w), rng.uniform(0, 1024 - h), w, h])
            if all(box[0] + box[2] <= b[0] or b[0] + b[2] <= box[0] or box[1] + box[3] <= b[1]
                   or b[1] + b[3] <= box[1] for b in truth):
                truth.append(box)
        preds = [b + rng.normal(0, 0.15, 4) * np.array([b[2], b[3], b[2], b[3]]) for b in truth
                 if rng.random() < 0.8]  # near misses and near hits around each truth
        preds += [np.array([*rng.uniform(0, 800, 2), *rng.uniform(40, 300, 2)]) for _ in range(rng.integers(0, 3))]
        preds = [np.array([p[0], p[1], max(p[2], 5.0), max(p[3], 5.0)]) for p in preds]
        scores = rng.uniform(0, 1, len(preds))
        truth_xywh = np.asarray(truth).reshape(-1, 4)
        pred_xywh = np.asarray(preds).reshape(-1, 4)
        truths.append(truth_xywh)
        predictions.append(Prediction.from_xywh(pred_xywh, scores))
        reference.append(_reference_image_score(truth_xywh, pred_xywh, scores))
    ours = rsna_map([np.c_[t[:, :2], t[:, :2] + t[:, 2:]] for t in truths], predictions)
    counted = [r for r in reference if r is not None]
    assert ours.n_images == len(counted) > 400
    mismatched = [i for i, r in enumerate(reference) if r is not None and not np.isclose(ours.per_image[i], r)]
    assert not mismatched, mismatched[:5]
    assert np.isclose(ours.rsna_map, np.mean(counted))
    assert 0.1 < ours.rsna_map < 0.9  # a submission with real hits, misses and false alarms
