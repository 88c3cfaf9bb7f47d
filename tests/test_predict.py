import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pneumodet.data.synth import TEST_TRUTH
from pneumodet.io.dicom import read_dicom
from pneumodet.io.layout import TEST_IMAGES
from pneumodet.predict import predict_folder
from tests.conftest import gradient


def test_predict_a_folder_of_odd_files(trained_run, synth_data, tmp_path, make_dicom, capsys):
    """Unreadable, non-square, upper-case suffix; hidden copies, reports and folders named .dcm are no images."""
    images = tmp_path / "images"
    shutil.copytree(synth_data / TEST_IMAGES, images)
    (images / "broken.dcm").write_text("not a dicom at all\n" * 10)
    make_dicom("wide", gradient(256, 512), folder=images)
    expected = sorted(p.stem for p in images.glob("*.dcm"))
    first = images / f"{expected[0]}.dcm"
    first.rename(first.with_suffix(".DCM"))  # an upper-case suffix is still an image
    # none of these is an image: a macOS resource copy, a report predict --dicom-sr wrote, a folder
    shutil.copy(images / f"{expected[1]}.dcm", images / f"._{expected[1]}.dcm")
    shutil.copy(images / f"{expected[1]}.dcm", images / f"{expected[1]}.sr.dcm")
    (images / "folder.dcm").mkdir()
    shutil.copy(images / f"{expected[2]}.dcm", images / f"{expected[2]}.DCM")  # the same patientId twice: one row
    summary = predict_folder(trained_run, images, tmp_path / "out" / "submission.csv", workers=0,
                             overrides={"score_threshold": 0.0, "max_boxes": 4}, progress=False)
    assert summary.images == 8 and summary.unreadable == 1
    said = capsys.readouterr().err
    assert "broken.dcm" in said and f"{expected[2]}.dcm: the same patientId as {expected[2]}.DCM; left out" in said
    sub = pd.read_csv(tmp_path / "out" / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["patientId", "PredictionString"]
    assert sorted(sub["patientId"]) == expected  # each patientId once
    assert sub.set_index("patientId").at["broken", "PredictionString"] == ""
    boxes = pd.read_csv(tmp_path / "out" / "submission.boxes.csv")
    assert list(boxes.columns) == ["patient_id", "score", "x", "y", "width", "height"]
    # every box lies in its own image's pixels; the 512 x 256 image maps back to its size
    for pid, group in boxes.groupby("patient_id"):
        path = images / f"{pid}.dcm"
        height, width = read_dicom(path if path.exists() else path.with_suffix(".DCM")).original_size
        assert (group["x"] >= 0).all() and (group["x"] + group["width"] <= width + 0.1).all()
        assert (group["y"] >= 0).all() and (group["y"] + group["height"] <= height + 0.1).all()
    for text in sub["PredictionString"]:
        values = np.array(text.split(), dtype=float).reshape(-1, 5) if text else np.zeros((0, 5))
        assert (np.diff(values[:, 0]) <= 0).all()  # highest confidence first


def test_cli_predict_then_score(trained_run, synth_data, tmp_path):
    out = tmp_path / "sub.csv"
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "predict", str(trained_run),
                           str(synth_data / TEST_IMAGES), "--out", str(out), "--workers", "0", "--tta"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "score", str(out), "--labels",
                           str(synth_data / TEST_TRUTH)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout)
    assert 0 <= result["rsna_map"] <= 1 and result["images_in_labels"] == 6


def test_cli_score_reports_a_malformed_row(tmp_path):
    (tmp_path / "sub.csv").write_text("patientId,PredictionString\na,0.5 1 2 3\n")
    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\na,,,,,0\n")
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "score", str(tmp_path / "sub.csv"), "--labels",
                           str(tmp_path / "labels.csv")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sub.csv:2 (a)" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_files_cost_only_their_own_rows(trained_run, synth_data, tmp_path):
    clean = tmp_path / "clean"
    shutil.copytree(synth_data / TEST_IMAGES, clean)
    options = {"workers": 0, "overrides": {"score_threshold": 0.0}, "progress": False}
    predict_folder(trained_run, clean, tmp_path / "clean.csv", **options)
    messy = tmp_path / "messy"
    shutil.copytree(clean, messy)
    blob = sorted(clean.glob("*.dcm"))[0].read_bytes()
    (messy / "cut.dcm").write_bytes(blob[: len(blob) // 2])
    header = bytearray(blob)
    at = header.index(b"\x10\x00\x10\x10AS")  # PatientAge's VR made unknown: pydicom fails when it is read
    header[at + 5] = 0xAC
    (messy / "badheader.dcm").write_bytes(bytes(header))
    (messy / "empty.dcm").write_bytes(b"")
    liar = bytearray(blob)  # Rows/Columns claim another size than the JPEG stream holds
    at = liar.index(b"\x28\x00\x10\x00US\x02\x00")
    liar[at + 8: at + 10] = (2048).to_bytes(2, "little")
    (messy / "liar.dcm").write_bytes(bytes(liar))
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "predict", str(trained_run), str(messy), "--out",
                           str(tmp_path / "messy.csv"), "--workers", "1", "--threshold", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for name in ("cut", "badheader", "empty", "liar"):
        assert f"{name}.dcm" in proc.stderr
    got = pd.read_csv(tmp_path / "messy.csv", keep_default_na=False).set_index("patientId")["PredictionString"]
    want = pd.read_csv(tmp_path / "clean.csv", keep_default_na=False).set_index("patientId")["PredictionString"]
    assert set(got.index) == set(want.index) | {"cut", "badheader", "empty", "liar"}
    assert (got[["cut", "badheader", "empty", "liar"]] == "").all()
    assert got[want.index].tolist() == want.tolist() and (want != "").any()


def test_nothing_readable_is_exit_2_with_every_row_written(trained_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.dcm").write_text("junk")
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "predict", str(trained_run), str(images), "--out",
                           str(tmp_path / "sub.csv"), "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "none of the 2 .dcm files could be read" in proc.stderr
    assert pd.read_csv(tmp_path / "sub.csv")["patientId"].tolist() == ["a", "b"]


@pytest.mark.slow
def test_cli_predict_over_two_processes_writes_one_submission_like_one_process(trained_run, synth_data, tmp_path):
    from pneumodet.report.submission import read_submission

    images = tmp_path / "images"
    shutil.copytree(synth_data / TEST_IMAGES, images)
    first = sorted(images.glob("*.dcm"))[0]
    shutil.copy(first, first.with_suffix(".DCM"))  # one patientId twice: left out once, said once
    outputs = {}
    for devices in (1, 2):
        out = tmp_path / "out" / f"sub{devices}.csv"
        proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "predict", str(trained_run),
                               str(images), "--out", str(out), "--workers", "0", "--threshold", "0.0",
                               "--devices", str(devices)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("images/s") == 1  # rank 0 reports, the other process does not
        assert proc.stderr.count("the same patientId as") == 1
        outputs[devices] = read_submission(out)
    assert list(outputs[2]) == list(outputs[1])  # every image, in the same order
    for pid, want in outputs[1].items():
        np.testing.assert_allclose(outputs[2][pid].boxes_xyxy, want.boxes_xyxy, atol=0.15)
        np.testing.assert_allclose(outputs[2][pid].scores, want.scores, atol=1e-3)
    assert sum(len(p.scores) for p in outputs[2].values()) > 0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # nothing half-written left
