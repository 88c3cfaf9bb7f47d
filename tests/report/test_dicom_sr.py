import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from pneumodet.io.layout import TEST_IMAGES
from pneumodet.report.dicom_sr import build_sr, read_sr_boxes, rectangle, source_header, sr_path, write_sr
from pneumodet.report.submission import read_boxes
from tests.conftest import gradient


def test_rectangle_is_a_closed_polyline_in_column_row_order():
    points = rectangle([10, 20, 110, 70])
    assert points.tolist() == [[10, 20], [110, 20], [110, 70], [10, 70], [10, 20]]


def test_sr_round_trips_boxes_scores_and_references(make_dicom, tmp_path):
    source = make_dicom("abc", gradient(300, 400), tags={"PatientAge": "51", "PatientSex": "F"})
    boxes = np.array([[10.5, 20.0, 200.0, 150.25], [250.0, 30.0, 390.0, 290.0]])
    out = write_sr(source, tmp_path / "sr" / "abc.sr.dcm", boxes, np.array([0.91, 0.42]), 0.95, run_name="demo")
    got_boxes, got_scores, image_score, refs = read_sr_boxes(out)
    np.testing.assert_allclose(got_boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(got_scores, [0.91, 0.42])
    assert image_score == pytest.approx(0.95)
    original = pydicom.dcmread(source)
    assert refs == {k: str(original[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    sr = pydicom.dcmread(out)
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == original.StudyInstanceUID and sr.PatientID == "abc"
    assert sr.SeriesInstanceUID != original.SeriesInstanceUID and sr.SOPInstanceUID != original.SOPInstanceUID
    text = str(sr)
    assert "pneumodet" in text and "Imaging Measurement Report" in text
    assert not list((tmp_path / "sr").glob(".*"))  # no temporary file left


def test_an_image_without_boxes_still_reports_its_image_score(make_dicom, tmp_path):
    source = make_dicom("neg")
    out = write_sr(source, tmp_path / "neg.sr.dcm", np.zeros((0, 4)), np.zeros(0), 0.03)
    boxes, scores, image_score, _ = read_sr_boxes(out)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and image_score == pytest.approx(0.03)


def test_a_dicom_without_uids_gets_new_ones_and_says_so(make_dicom, tmp_path):
    path = make_dicom("nouid")
    ds = pydicom.dcmread(path)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        del ds[keyword]
    ds.save_as(path)
    said = []
    header = source_header(path, said.append)
    assert len(said) == 1 and "StudyInstanceUID" in said[0] and "SOPClassUID" in said[0]
    assert pydicom.uid.UID(header.StudyInstanceUID).is_valid
    out = write_sr(path, tmp_path / "nouid.sr.dcm", np.array([[1, 2, 30, 40]]), np.array([0.8]), 0.8,
                   warn=said.append)
    sr = pydicom.dcmread(out)
    assert sr.Modality == "SR" and pydicom.uid.UID(sr.StudyInstanceUID).is_valid
    boxes, _, _, refs = read_sr_boxes(out)
    np.testing.assert_allclose(boxes, [[1, 2, 30, 40]])
    assert all(pydicom.uid.UID(uid).is_valid for uid in refs.values())


def test_a_box_at_the_image_corner_is_a_valid_region(make_dicom):
    sr = build_sr(source_header(make_dicom("edge")), np.array([[0.0, 0.0, 64.0, 64.0]]), np.array([0.5]), 0.5)
    assert sr.Modality == "SR"


@pytest.mark.slow
def test_cli_predict_writes_an_sr_per_image_matching_the_submission(trained_run, synth_data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(synth_data / TEST_IMAGES, images)
    (images / "broken.dcm").write_text("not a dicom\n")
    out, reports = tmp_path / "sub.csv", tmp_path / "sr"
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "predict", str(trained_run), str(images),
                           "--out", str(out), "--workers", "0", "--threshold", "0.0", "--max-boxes", "3",
                           "--dicom-sr", str(reports)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DICOM Structured Reports" in proc.stdout
    predicted = read_boxes(out.with_name("sub.boxes.csv"))
    readable = sorted(p.stem for p in images.glob("*.dcm") if p.stem != "broken")
    assert sorted(p.name for p in reports.iterdir()) == sorted(f"{pid}.sr.dcm" for pid in readable)
    assert sum(len(s) for _, s in predicted.values()) > 0  # threshold 0: the comparison is not vacuous
    for pid in readable:
        boxes, scores, image_score, refs = read_sr_boxes(sr_path(reports, pid))
        want_boxes, want_scores = predicted.get(pid, (np.zeros((0, 4)), np.zeros(0)))
        np.testing.assert_allclose(boxes, want_boxes, atol=0.11)  # boxes.csv rounds x, y, w, h to 0.1 px
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert 0.0 <= image_score <= 1.0
        assert refs["SOPInstanceUID"] == pydicom.dcmread(images / f"{pid}.dcm").SOPInstanceUID


@pytest.mark.parametrize("tags, keyword", [({"StudyDate": "2020-01-01"}, "StudyDate"), ({"StudyTime": "25:99"}, "StudyTime"),
                                           ({"PatientSex": "X"}, "PatientSex"), ({"PatientBirthDate": "19xx"},
                                                                                 "PatientBirthDate")])
def test_a_header_value_dicom_refuses_is_left_empty_and_named(make_dicom, tmp_path, tags, keyword):
    # real archives hold such values; highdicom refuses to copy them, and the SR is still worth writing
    source = make_dicom("odd", tags=tags)
    said = []
    out = write_sr(source, tmp_path / "odd.sr.dcm", np.array([[1, 2, 30, 40]]), np.array([0.7]), 0.7, warn=said.append)
    assert len(said) == 1 and keyword in said[0]
    assert pydicom.dcmread(out).get(keyword, "") == ""
    np.testing.assert_allclose(read_sr_boxes(out)[0], [[1, 2, 30, 40]])
