import json

import numpy as np
import pandas as pd
import pytest

from pneumodet.candidates import Candidates
from pneumodet.config_files import dump_config
from pneumodet.evaluate import evaluate
from pneumodet.metrics import Prediction, rsna_map
from pneumodet.postprocess import PostProcess
from pneumodet.runs import RunPaths
from pneumodet.settings import InferenceSettings
from pneumodet.tuning import GRID, ValSet, tune
from tests.conftest import tiny_config


def test_metrics_json_plots_and_predictions(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0 <= metrics["rsna_map"] <= 1 and 0 <= metrics["rsna_map_before_tuning"] <= 1
    low, high = metrics["rsna_map_ci"]
    assert low <= metrics["rsna_map"] <= high and metrics["bootstrap"]["resamples"] >= 1000
    assert set(metrics["postprocess"]) == {"score_threshold", "nms_iou", "max_boxes", "shrink", "gate_threshold"}
    assert len(metrics["per_threshold"]) == 8 and metrics["split"] == "val" and metrics["tuned_on"] == "val"
    for key in ("roc_auc", "roc_auc_ci", "sensitivity", "sensitivity_ci", "specificity", "ppv", "npv", "images",
                "positives", "gate_roc_auc", "max_box_roc_auc", "tp", "fp", "fn", "tn", "call"):
        assert key in metrics["image_level"]
    level = metrics["image_level"]
    assert level["tp"] + level["fp"] + level["fn"] + level["tn"] == metrics["n_images"]
    assert level["tp"] + level["fn"] == level["positives"]
    for view in metrics["by_view"].values():
        assert "gate_roc_auc" in view and "max_box_roc_auc" in view and "rsna_map_ci" in view
    assert set(metrics["box_level"]["froc"]["fp_per_image"]) == {0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0}
    assert {"ap", "ap50", "ap75"} == set(metrics["box_level"]["coco"])
    assert metrics["calibration"]["gate"]["items"] == metrics["n_images"]
    # the run has a gate: evaluate also reports the same tuning with the gate off, and saves the gate's scores
    assert 0 <= metrics["rsna_map_without_gate"] <= metrics["rsna_map"] + 1e-9
    gates = pd.read_csv(trained_run / "predictions" / "val.gate.csv")
    assert list(gates.columns) == ["patient_id", "gate"] and gates["gate"].between(0, 1).all()
    assert set(metrics["by_view"]) <= {"AP", "PA", "unknown"} and metrics["by_view"]
    for name in ("threshold.png", "roc.png", "froc.png", "precision_recall.png", "calibration.png"):
        assert (trained_run / "plots" / name).is_file()
    per_image = pd.read_csv(trained_run / "report" / "per_image.csv", dtype={"patient_id": str})
    assert len(per_image) == metrics["n_images"] and set(per_image["outcome"]) <= {"miss", "hit", "false alarm",
                                                                                   "true negative"}
    for table in ("operating_points", "froc", "precision_recall", "calibration"):
        assert len(pd.read_csv(trained_run / "report" / f"{table}.csv"))
    # examples are named by the image's own outcome, the one the review page gives it
    outcome = dict(zip(per_image["patient_id"], per_image["outcome"], strict=True))
    examples = sorted((trained_run / "plots" / "val_examples").glob("*.png"))
    assert examples
    for path in examples:
        assert path.stem.split("-", 1)[1].replace("-", " ") in outcome.values()
    raw = pd.read_csv(trained_run / "predictions" / "val.csv")
    assert list(raw.columns) == ["patient_id", "score", "x", "y", "width", "height"]


def test_rescoring_saved_predictions_gives_the_same_number(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    first = json.loads((copy / "metrics.json").read_text())
    again = evaluate(copy, reuse_predictions=True, progress=False)
    # saved with every digit: the same figures, not nearly the same (0.1 px rounding once moved make demo's 0.866
    # to 0.868)
    assert again["rsna_map"] == first["rsna_map"] and again["rsna_map_ci"] == first["rsna_map_ci"]
    assert again["postprocess"] == first["postprocess"] and again["image_level"] == first["image_level"]


def test_tuning_finds_the_threshold_and_shrink():
    truth = np.array([[10, 10, 50, 50]], float)
    # every prediction is 1.25x too big (shrink 0.8 fixes it); false alarms score 0.3
    big = np.array([[5, 5, 55, 55]], float)
    truths = [truth] * 4 + [np.zeros((0, 4))] * 4
    raw = [Candidates(big, np.array([0.9]))] * 4 + [Candidates(big, np.array([0.3]))] * 4
    val = ValSet([str(i) for i in range(8)], ["PA"] * 8, truths, raw)
    start = PostProcess(score_threshold=0.05, nms_iou=0.5, max_boxes=3, shrink=1.0)
    tuned, score = tune(val, start)
    assert score == 1.0 and tuned.score_threshold > 0.3 and tuned.shrink == 0.8
    assert 0.8 in GRID["shrink"]
    assert rsna_map(truths, [Prediction(b, s) for b, s, _ in raw]).rsna_map < 0.5


def test_gate_and_box_thresholds_are_tuned_jointly():
    # box scores cannot tell the images apart (every false alarm scores as high as a true box); the gate can
    truth = np.array([[10, 10, 50, 50]], float)
    truths = [truth] * 4 + [np.zeros((0, 4))] * 4
    raw = [Candidates(truth, np.array([0.6]), 0.8)] * 4 + [Candidates(truth, np.array([0.6]), 0.3)] * 4
    val = ValSet([str(i) for i in range(8)], ["PA"] * 8, truths, raw)
    start = PostProcess(score_threshold=0.5, nms_iou=0.5, max_boxes=3, shrink=1.0)
    without, without_score = tune(val, start, gate=False)
    tuned, score = tune(val, start)
    assert without.gate_threshold == 0.0 and without_score == pytest.approx(0.5)
    assert score == 1.0 and 0.3 < tuned.gate_threshold <= 0.8
    # a model without a gate (NaN) is never gated, whatever the threshold
    no_gate = ValSet(val.patient_ids, val.views, truths, [Candidates(c.boxes_orig_xyxy, c.scores) for c in raw])
    assert not no_gate.has_gate and tune(no_gate, start)[0].gate_threshold == 0.0


def test_out_of_fold_tuning_uses_every_fold(tmp_path, monkeypatch):
    """evaluate on a folds folder tunes on the union of the folds' val predictions (not on one fold)."""
    import pneumodet.evaluate as ev

    truth = np.array([[10, 10, 50, 50]], float)
    # fold 1 alone: box scores 0.9 right, 0.3 wrong; fold 2 alone: 0.5 right, 0.2 wrong. Only a threshold in
    # (0.3, 0.5] is right on both, and out-of-fold tuning must find one there.
    parts = {
        "fold-1": ValSet(["a", "b"], ["PA", "PA"], [truth, np.zeros((0, 4))],
                         [Candidates(truth, np.array([0.9])), Candidates(truth, np.array([0.3]))]),
        "fold-2": ValSet(["c", "d"], ["PA", "PA"], [truth, np.zeros((0, 4))],
                         [Candidates(truth, np.array([0.5])), Candidates(truth, np.array([0.2]))]),
    }

    class FakeDetector:
        def __init__(self, run, hflip_tta=None, tta_scales=None, box_refine=None, box_vote=None, use_tuning=True):
            assert not use_tuning  # evaluate starts from the config, never from a metrics.json it may be repairing
            self.name, self.config = run.name, tiny_config()
            self.settings = InferenceSettings.from_config(self.config.predict).but(
                hflip_tta=hflip_tta, tta_scales=tta_scales, box_refine=box_refine, box_vote=box_vote)
            self.info = {"path": str(run / "weights" / "best.ckpt"), "epoch": 1}
            self.paths = RunPaths(run)

    monkeypatch.setattr(ev, "load_detector", FakeDetector)
    monkeypatch.setattr(ev, "run_dataset", lambda paths, *a: paths.root.name)
    monkeypatch.setattr(ev, "run_split", lambda paths: None)
    monkeypatch.setattr(ev, "candidates_of", lambda detector, dataset, *a, **k: (parts[dataset].raw, {}))
    monkeypatch.setattr(ev, "labelled_set", lambda dataset, raw, groups: parts[dataset])
    folds = tmp_path / "folds"
    for name in parts:
        (folds / name / "weights").mkdir(parents=True)
        (folds / name / "weights" / "best.ckpt").write_bytes(b"")
        dump_config(tiny_config(), folds / name / "config.yaml")
    (folds / "folds.json").write_text(json.dumps({"folds": 2, "runs": list(parts)}))
    result = evaluate(folds, progress=False)
    assert result["split"] == "out-of-fold" and result["n_images"] == 4
    assert 0.3 < result["postprocess"]["score_threshold"] <= 0.5 and result["rsna_map"] == 1.0
    assert [f["rsna_map"] for f in result["folds"]] == [1.0, 1.0]
    assert json.loads((folds / "metrics.json").read_text())["postprocess"] == result["postprocess"]


def test_evaluate_records_flip_tta_and_predict_follows_it(trained_run, tmp_path):
    import shutil

    from pneumodet.detector import load_detector

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    assert load_detector(copy).settings.hflip_tta is False
    with pytest.warns(UserWarning, match="trained without flips"):  # the tiny run trains without flips
        result = evaluate(copy, progress=False, hflip_tta=True)
    assert result["hflip_tta"] is True and json.loads((copy / "metrics.json").read_text())["hflip_tta"] is True
    with pytest.warns(UserWarning, match="trained without flips"):
        assert load_detector(copy).settings.hflip_tta is True  # thresholds tuned with TTA are used with TTA
    assert load_detector(copy, hflip_tta=False).settings.hflip_tta is False  # unless told otherwise
    assert evaluate(copy, progress=False)["hflip_tta"] is False  # evaluate starts from the config again


@pytest.mark.filterwarnings("ignore:.*trained without flips")  # the tiny run trains without them
def test_evaluate_records_tta_sizes_and_predict_follows_them(trained_run, tmp_path):
    import shutil

    from pneumodet.detector import load_detector

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    assert load_detector(copy, hflip_tta=True).settings.scales == (1.0,)  # the config's: one size
    result = evaluate(copy, progress=False, hflip_tta=True, tta_scales=(1.0, 1.5))
    assert result["tta_scales"] == [1.0, 1.5] == json.loads((copy / "metrics.json").read_text())["tta_scales"]
    assert load_detector(copy).settings.scales == (1.0, 1.5)  # tuned with both sizes, predicted with both
    assert load_detector(copy, hflip_tta=False).settings.scales == (1.0,)  # no TTA: one size


def test_evaluate_records_box_refinement_and_predict_follows_it(trained_run, tmp_path, synth_data):
    import shutil

    from pneumodet.detector import image_tensor, load_detector
    from pneumodet.io.layout import TEST_IMAGES

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    assert load_detector(copy).settings.box_refine == 0  # the config's
    result = evaluate(copy, progress=False, box_refine=2)
    assert result["box_refine"] == 2 == json.loads((copy / "metrics.json").read_text())["box_refine"]
    refined, plain = load_detector(copy), load_detector(copy, box_refine=0)  # tuned with 2 passes, predicted so
    assert [refined.settings.box_refine, plain.settings.box_refine] == [2, 0]
    image = plain.read(sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0])
    tensor = image_tensor(image.pixels, plain.image_size)
    (moved,), (still,) = (d.candidates([tensor], [image.original_size]) for d in (refined, plain))
    assert len(moved.scores) == len(still.scores) > 0
    assert np.abs(moved.boxes_orig_xyxy - still.boxes_orig_xyxy).max() > 0.01  # the passes did run
    assert evaluate(copy, progress=False)["box_refine"] == 0  # evaluate starts from the config again


def test_evaluate_records_box_voting_and_predict_follows_it(trained_run, tmp_path, synth_data):
    import shutil

    from pneumodet.detector import image_tensor, load_detector
    from pneumodet.io.layout import TEST_IMAGES

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    assert load_detector(copy).settings.box_vote is True  # the config's default
    result = evaluate(copy, progress=False, box_vote=False)
    assert result["box_vote"] is False is json.loads((copy / "metrics.json").read_text())["box_vote"]
    plain, voted = load_detector(copy), load_detector(copy, box_vote=True)  # tuned without voting, predicted so
    assert [plain.settings.box_vote, voted.settings.box_vote] == [False, True]
    moved = 0.0
    for path in sorted((synth_data / TEST_IMAGES).glob("*.dcm")):
        image = plain.read(path)
        tensor = image_tensor(image.pixels, plain.image_size)
        (a,), (b,) = (d.candidates([tensor], [image.original_size]) for d in (plain, voted))
        assert np.allclose(a.scores, b.scores)  # voting moves boxes, never scores
        moved = max(moved, float(np.abs(a.boxes_orig_xyxy - b.boxes_orig_xyxy).max(initial=0)))
    assert moved > 0.01  # the votes did run
    assert evaluate(copy, progress=False)["box_vote"] is True  # evaluate starts from the config again
