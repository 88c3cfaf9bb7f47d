"""Box-level metrics against independent implementations: pycocotools for COCO AP, a brute-force FROC."""

import numpy as np
import pytest

from pneumodet.boxmetrics import FROC_RATES, calibration, coco_ap, froc, precision_recall
from pneumodet.metrics import Prediction


def random_set(rng, n_images=40, max_truth=3, max_pred=5):
    """Images with 0-3 truth boxes and 0-5 predictions, some near a truth box, some anywhere; scores distinct."""
    truths, predictions = [], []
    for _ in range(n_images):
        t = rng.integers(0, max_truth + 1)
        xy = rng.uniform(0, 800, (t, 2))
        truth = np.hstack([xy, xy + rng.uniform(40, 200, (t, 2))])
        p = rng.integers(0, max_pred + 1)
        boxes = []
        for _ in range(p):
            if t and rng.random() < 0.6:
                base = truth[rng.integers(0, t)]
                boxes.append(base + rng.normal(0, 25, 4))
            else:
                x, y = rng.uniform(0, 800, 2)
                boxes.append([x, y, x + rng.uniform(40, 200), y + rng.uniform(40, 200)])
        boxes = np.asarray(boxes).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        truths.append(truth.reshape(-1, 4))
        predictions.append(Prediction(boxes, rng.uniform(0, 1, len(boxes))))
    return truths, predictions


def pycocotools_ap(truths, predictions) -> tuple[float, float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (truth, pred) in enumerate(zip(truths, predictions, strict=True), start=1):
        images.append({"id": i, "width": 1024, "height": 1024})
        for box in truth:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": (box[2] - box[0]) * (box[3] - box[1])})
        for box, s in zip(pred.boxes_xyxy, pred.scores, strict=True):
            results.append({"image_id": i, "category_id": 1, "score": float(s),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    truth_api = COCO()
    truth_api.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "opacity"}]}
    truth_api.createIndex()
    found = truth_api.loadRes(results) if results else COCO()
    evaluation = COCOeval(truth_api, found, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats[0], evaluation.stats[1], evaluation.stats[2]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coco_ap_equals_pycocotools(seed, capsys):
    truths, predictions = random_set(np.random.default_rng(seed))
    ours = coco_ap(truths, predictions)
    ap, ap50, ap75 = pycocotools_ap(truths, predictions)
    capsys.readouterr()  # pycocotools prints its summary
    assert ours["ap"] == pytest.approx(ap, abs=1e-9) and ours["ap50"] == pytest.approx(ap50, abs=1e-9)
    assert ours["ap75"] == pytest.approx(ap75, abs=1e-9) and 0.05 < ours["ap50"] < 0.95


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def brute_force_froc(truths, predictions, iou, rates):
    """Every distinct score as a threshold: keep the boxes at or above it, match each image's boxes highest score
    first to the free truth box they overlap most (plain loops), count found truth boxes and false positives."""
    n_truth = sum(len(t) for t in truths)
    points = []
    for threshold in sorted({float(s) for p in predictions for s in p.scores}):
        found = false = 0
        for truth, pred in zip(truths, predictions, strict=True):
            free = list(range(len(truth)))
            for k in sorted(range(len(pred.scores)), key=lambda k: -pred.scores[k]):
                if pred.scores[k] < threshold:
                    continue
                best = max(free, key=lambda j: _iou(pred.boxes_xyxy[k], truth[j]), default=None)
                if best is not None and _iou(pred.boxes_xyxy[k], truth[best]) > iou:
                    free.remove(best)
                    found += 1
                else:
                    false += 1
        points.append((false / len(truths), found / n_truth))
    return [max([s for f, s in points if f <= rate] or [0.0]) for rate in rates]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_froc_equals_a_brute_force_over_thresholds(seed):
    truths, predictions = random_set(np.random.default_rng(10 + seed), n_images=25)
    ours = froc(truths, predictions)
    assert ours["sensitivity"] == pytest.approx(brute_force_froc(truths, predictions, 0.4, FROC_RATES))
    assert ours["mean_sensitivity"] == pytest.approx(np.mean(ours["sensitivity"]))
    assert ours["sensitivity"] == sorted(ours["sensitivity"]) and 0 < ours["sensitivity"][-1] <= 1


def test_froc_counts_a_box_once_and_the_iou_strictly():
    truth = [np.array([[0, 0, 100, 100.0]])]
    # two boxes on one truth box: the second is a false positive; IoU exactly 0.4 is not a hit
    twice = [Prediction(np.array([[0, 0, 100, 100.0], [0, 0, 100, 100.0]]), np.array([0.9, 0.8]))]
    assert froc(truth, twice)["curve"]["sensitivity"] == [1.0, 1.0]
    assert froc(truth, twice)["curve"]["fp_per_image"] == [0.0, 1.0]
    edge = [Prediction(np.array([[0, 0, 40, 100.0]]), np.array([0.9]))]  # IoU 0.4
    assert froc(truth, edge)["sensitivity"] == [0.0] * len(FROC_RATES)


def test_precision_recall_is_monotone_and_its_mean_is_ap50():
    truths, predictions = random_set(np.random.default_rng(7))
    curve = precision_recall(truths, predictions, 0.5)
    precision = np.array(curve["precision"])
    assert np.all(np.diff(precision) <= 1e-12) and curve["ap"] == pytest.approx(coco_ap(truths, predictions)["ap50"])


def test_calibration_of_a_calibrated_and_an_overconfident_score():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 20000)
    calibrated = calibration(p, rng.uniform(0, 1, len(p)) < p)
    overconfident = calibration(np.full(1000, 0.9), np.arange(1000) < 500)
    assert calibrated["ece"] < 0.02 and overconfident["ece"] == pytest.approx(0.4)
    assert sum(b["n"] for b in calibrated["bins"]) == 20000 and overconfident["bins"][9]["observed"] == 0.5
