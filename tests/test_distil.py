"""``pneumodet distil``: which images a teacher is sure of, and the student's cache built from them."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from pneumodet.data.cache import open_cache, read_for_cache, to_cache_size
from pneumodet.data.dataset import PneumoniaDataset
from pneumodet.detector import Detection, load_detector
from pneumodet.distil import MIN_SCORE, default_negative_below, distil, pseudo_label
from pneumodet.errors import UserError
from pneumodet.io.dicom import folder_images
from pneumodet.postprocess import PostProcess
from pneumodet.predict import predict_files
from tests.conftest import TINY_SIZE, tiny_config


def found(scores, image_score=0.5, gate=math.nan):
    boxes = np.array([[10.0 * i, 10.0, 10.0 * i + 50, 80.0] for i in range(len(scores))]).reshape(-1, 4)
    return Detection("p", boxes, np.asarray(scores, dtype=float), image_score, (100, 200), gate)


def test_an_image_is_a_label_only_where_the_teacher_is_sure_of_all_of_it():
    kind, boxes, scores = pseudo_label(found([0.97, 0.93]), 0.9, 0.2)
    assert kind == "positive" and len(boxes) == 2 and list(scores) == [0.97, 0.93]
    assert pseudo_label(found([0.97, 0.6]), 0.9, 0.2)[0] == "unsure"  # one box it kept without being sure
    assert pseudo_label(found([0.9]), 0.9, 0.2)[0] == "positive"  # at the score itself
    assert pseudo_label(found([], image_score=0.1), 0.9, 0.2)[0] == "negative"
    assert pseudo_label(found([], image_score=0.3), 0.9, 0.2)[0] == "unsure"  # no box, yet not clearly negative
    assert pseudo_label(found([], image_score=math.nan), 0.9, 0.2)[0] == "unsure"


def test_negative_below_is_half_the_threshold_that_makes_an_image_positive():
    assert default_negative_below(PostProcess(0.6, 0.1, 3, 1.0, gate_threshold=0.4)) == pytest.approx(0.2)
    assert default_negative_below(PostProcess(0.6, 0.1, 3, 1.0, gate_threshold=0.0)) == pytest.approx(0.3)
    from pneumodet.cli import build_parser

    distil_parser = build_parser()._subparsers._group_actions[0].choices["distil"]
    assert distil_parser.get_default("min_score") == MIN_SCORE  # the command's default is the module's


@pytest.fixture
def teacher(trained_run, synth_data, tmp_path):
    """The tiny run, copied, with a score threshold that lets some test images keep boxes and others none, and the
    min score (between two of the images' lowest kept scores) that makes some of them sure and the others not."""
    run = tmp_path / "teacher"
    shutil.copytree(trained_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    files = folder_images(synth_data / "stage_2_test_images")[0]
    detector = load_detector(run, overrides={"score_threshold": 0.0, "gate_threshold": 0.0, "max_boxes": 3})
    top = sorted(float(f.scores.max()) for f in predict_files(detector, files, 0, progress=False)[0].values())
    threshold = (top[1] + top[2]) / 2  # the two lowest-scoring images keep no box
    metrics["postprocess"].update(score_threshold=threshold, gate_threshold=0.0, max_boxes=3)
    (run / "metrics.json").write_text(json.dumps(metrics))
    kept = predict_files(load_detector(run), files, 0, progress=False)[0]
    lows = sorted({float(f.scores.min()) for f in kept.values() if len(f.scores)})
    assert len(lows) >= 2, "the tiny run's scores no longer spread enough for this test"
    return run, kept, (lows[0] + lows[1]) / 2


def test_the_student_cache_holds_the_labelled_cache_and_the_images_the_teacher_is_sure_of(
        teacher, tiny_cache, synth_data, tmp_path):
    run, kept, min_score = teacher
    out = tmp_path / "student"
    result = distil(run, synth_data / "stage_2_test_images", tiny_cache, out, min_score=min_score, negative_below=1.0,
                    workers=0, progress=False)
    expect = {pid: pseudo_label(f, min_score, 1.0)[0] for pid, f in kept.items()}
    positives = {p for p, k in expect.items() if k == "positive"}
    negatives = {p for p, k in expect.items() if k == "negative"}
    assert positives and negatives and len(positives) + len(negatives) < len(expect)  # every verdict occurs
    assert (result.positives, result.negatives, result.left_out) == (
        len(positives), len(negatives), len(expect) - len(positives) - len(negatives))

    labelled, student = open_cache(tiny_cache, TINY_SIZE), open_cache(out, TINY_SIZE)
    n = labelled.pixels.shape[0]
    np.testing.assert_array_equal(student.pixels[:n], labelled.pixels)  # the labelled images, unchanged
    pd.testing.assert_frame_equal(student.images.iloc[: len(labelled.images)], labelled.images, check_dtype=False)
    added = student.images.iloc[len(labelled.images):]
    assert set(added["patient_id"]) == positives | negatives
    for row in added.itertuples():  # each added image's pixels, as the cache makes them, and its teacher's boxes
        image = read_for_cache(synth_data / "stage_2_test_images" / f"{row.patient_id}.dcm", TINY_SIZE)
        np.testing.assert_array_equal(student.pixels[row.row], to_cache_size(image.pixels, TINY_SIZE))
        boxes = student.boxes.loc[student.boxes["patient_id"] == row.patient_id, ["x", "y", "width", "height"]]
        want = kept[row.patient_id].boxes_orig_xywh if row.patient_id in positives else np.zeros((0, 4))
        np.testing.assert_allclose(boxes.to_numpy(float), want, atol=0.051)
        assert row.n_boxes == len(want)

    split = pd.read_csv(out / "split.csv", dtype=str)
    before = pd.read_csv(tiny_cache / "split.csv", dtype=str)
    pd.testing.assert_frame_equal(split.iloc[: len(before)].drop(columns="source"), before)
    new = split.iloc[len(before):]
    assert set(new["split"]) == {"train"} and set(new["fold"]) == {"-1"} and set(new["source"]) == {"pseudo"}
    # the student trains on the added images and is tuned on the labelled val only
    val = PneumoniaDataset(out, TINY_SIZE, "val")
    assert set(val.records["patient_id"]) == set(before.loc[before["split"] == "val", "patient_id"])
    assert set(PneumoniaDataset(out, TINY_SIZE, "train").records["patient_id"]) >= positives | negatives
    labels = pd.read_csv(out / "pseudo_labels.csv")
    assert set(labels["patientId"]) == set(expect)  # every verdict, the unsure ones too
    assert set(labels.loc[labels["kind"] == "positive", "patientId"]) == positives
    record = json.loads((out / "distil.json").read_text())
    assert record["min_score"] == min_score and record["positives"] == len(positives)


def test_the_student_trains_on_the_cache_and_its_folds_train_the_added_images_everywhere(
        teacher, tiny_cache, synth_data, tmp_path):
    from pneumodet.data.split import fold_split
    from pneumodet.training.train import fold_table, train

    run, _, min_score = teacher
    out = tmp_path / "student"
    distil(run, synth_data / "stage_2_test_images", tiny_cache, out, min_score=min_score, negative_below=1.0,
           workers=0, progress=False)
    table = fold_table(out, 5)  # the labelled images' 5 folds; the added ones are in none of them
    added = set(table.loc[table["source"] == "pseudo", "patient_id"])
    for fold in range(5):
        split = fold_split(table, fold)
        assert set(split.loc[split["split"] == "val", "patient_id"]).isdisjoint(added)
    result = train(tiny_config("train.limit_val_batches=0"), out, run=tmp_path / "student-run", progress=False)
    trained_on = pd.read_csv(result.run / "split.csv", dtype=str)
    assert added <= set(trained_on.loc[trained_on["split"] == "train", "patient_id"])


def test_distil_refuses_what_it_cannot_use(trained_run, tiny_cache, synth_data, tmp_path):
    with pytest.raises(UserError, match="another folder"):
        distil(trained_run, synth_data / "stage_2_test_images", tiny_cache, tiny_cache, progress=False)
    with pytest.raises(UserError, match="already labelled"):  # the labelled images themselves
        distil(trained_run, synth_data / "stage_2_train_images", tiny_cache, tmp_path / "s", progress=False)
    with pytest.raises(UserError, match="sure of none"):  # the barely trained run keeps no box at 0.9
        distil(trained_run, synth_data / "stage_2_test_images", tiny_cache, tmp_path / "s", negative_below=0.0,
               workers=0, progress=False)
    assert not (tmp_path / "s" / "train-64px").exists()
    shutil.copytree(tiny_cache, tmp_path / "other", symlinks=True)
    with pytest.raises(UserError, match="prepare wrote"):  # another prepared cache is never written over
        distil(trained_run, synth_data / "stage_2_test_images", tiny_cache, tmp_path / "other", progress=False)


def test_a_second_distil_replaces_the_first_whole_and_an_unreadable_file_is_left_out(
        teacher, tiny_cache, synth_data, tmp_path, capsys):
    run, kept, min_score = teacher
    images, out = tmp_path / "images", tmp_path / "student"
    shutil.copytree(synth_data / "stage_2_test_images", images)
    distil(run, images, tiny_cache, out, min_score=min_score, negative_below=1.0, workers=0, progress=False)
    first = set(pd.read_csv(out / "split.csv", dtype=str).query("source == 'pseudo'")["patient_id"])
    (images / "broken.dcm").write_bytes(b"not a dicom")
    second = distil(run, images, tiny_cache, out, min_score=0.0001, negative_below=0.0, workers=0, progress=False)
    assert "distil: broken.dcm:" in capsys.readouterr().err and second.unreadable == 1
    split = pd.read_csv(out / "split.csv", dtype=str)
    added = set(split.loc[split["source"] == "pseudo", "patient_id"])
    assert added == {pid for pid, f in kept.items() if len(f.scores)} and added != first  # the second rule's
    student = open_cache(out, TINY_SIZE)
    assert set(student.images["patient_id"]) == set(split["patient_id"])  # cache and split agree
    assert json.loads((out / "distil.json").read_text())["negatives"] == 0


def test_the_command_says_what_it_added_and_how_to_train_the_student(teacher, tiny_cache, synth_data, tmp_path,
                                                                      capsys):
    from pneumodet.cli import main

    run, _, min_score = teacher
    out = tmp_path / "student"
    args = ["distil", str(run), str(synth_data / "stage_2_test_images"), "--data", str(tiny_cache), "--workers", "0"]
    assert main([*args, "--out", str(out), "--min-score", f"{min_score:.9f}", "--negative-below", "1"]) == 0
    said = capsys.readouterr().out
    record = json.loads((out / "distil.json").read_text())
    assert f"{record['positives']} pseudo-positive" in said and f"{record['negatives']} pseudo-negative" in said
    assert f"pneumodet train --config CONFIG --data {out}" in said
    assert main([*args, "--out", str(tiny_cache)]) == 2  # the labelled cache itself: one line, nothing written
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit, match="2"):  # out of (0, 1]: argparse's usage line and error
        main([*args, "--out", str(tmp_path / "x"), "--min-score", "0"])
