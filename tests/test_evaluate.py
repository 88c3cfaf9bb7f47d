import json

import numpy as np
import pandas as pd
import pytest

from pneumodet.evaluate import GRID, ValSet, evaluate, tune
from pneumodet.metrics import Prediction, rsna_map
from pneumodet.postprocess import PostProcess


def test_metrics_json_plots_and_predictions(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0 <= metrics["rsna_map"] <= 1 and 0 <= metrics["rsna_map_before_tuning"] <= 1
    assert set(metrics["postprocess"]) == {"score_threshold", "nms_iou", "max_boxes", "shrink"}
    assert len(metrics["per_threshold"]) == 8 and metrics["split"] == "val"
    for key in ("roc_auc", "sensitivity", "specificity", "images", "positives"):
        assert key in metrics["image_level"]
    assert set(metrics["by_view"]) <= {"AP", "PA", "unknown"} and metrics["by_view"]
    for name in ("threshold.png", "roc.png"):
        assert (trained_run / "plots" / name).is_file()
    examples = sorted(p.name for p in (trained_run / "plots" / "val_examples").glob("*.png"))
    assert examples and any("worst-miss" in n for n in examples)
    raw = pd.read_csv(trained_run / "predictions" / "val.csv")
    assert list(raw.columns) == ["patient_id", "score", "x", "y", "width", "height"]


def test_rescoring_saved_predictions_gives_the_same_number(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    first = json.loads((copy / "metrics.json").read_text())
    again = evaluate(copy, reuse_predictions=True, progress=False)
    assert again["rsna_map"] == pytest.approx(first["rsna_map"])


def test_tuning_finds_the_threshold_and_shrink():
    truth = np.array([[10, 10, 50, 50]], float)
    # every prediction is 1.25x too big (shrink 0.8 fixes it); false alarms score 0.3
    big = np.array([[5, 5, 55, 55]], float)
    truths = [truth] * 4 + [np.zeros((0, 4))] * 4
    raw = [(big, np.array([0.9]))] * 4 + [(big, np.array([0.3]))] * 4
    val = ValSet([str(i) for i in range(8)], ["PA"] * 8, truths, raw)
    start = PostProcess(score_threshold=0.05, nms_iou=0.5, max_boxes=3, shrink=1.0)
    tuned, score = tune(val, start)
    assert score == 1.0 and tuned.score_threshold > 0.3 and tuned.shrink == 0.8
    assert 0.8 in GRID["shrink"]
    assert rsna_map(truths, [Prediction(b, s) for b, s in raw]).rsna_map < 0.5
