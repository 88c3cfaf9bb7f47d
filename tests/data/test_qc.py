import json

import numpy as np
import pandas as pd

from pneumodet.data.qc import check_boxes, match_files, summarise, write_qc
from pneumodet.io.labels import Annotation, Problem


def test_boxes_are_clipped_or_dropped_and_each_is_reported():
    annotation = Annotation("p", np.array([[900, 100, 300, 200], [10, 10, 20, 20], [1100, 10, 50, 50]], float))
    clipped, problems = check_boxes(annotation, height=512, width=1024)
    assert clipped.boxes_xywh.tolist() == [[900, 100, 124, 200], [10, 10, 20, 20]]
    assert [p.problem for p in problems] == ["box outside image", "box outside image"]
    assert problems[0].detail.endswith("clipped") and problems[1].detail.endswith("dropped")
    negative = Annotation("n", np.zeros((0, 4)))
    assert check_boxes(negative, 10, 10) == (negative, [])


def test_labels_and_files_are_matched_both_ways(tmp_path):
    annotations = {pid: Annotation(pid, np.zeros((0, 4))) for pid in ("a", "b", "broken")}
    files = {pid: tmp_path / f"{pid}.dcm" for pid in ("a", "extra", "broken", "extra-broken")}
    problems = match_files(annotations, files, unreadable={"broken", "extra-broken"})
    assert [(p.patient_id, p.problem) for p in problems] == [("b", "label without image"),
                                                             ("extra", "image without label")]


def test_summary_counts_and_files(tmp_path):
    images = pd.DataFrame({"original_height": [1024, 512], "original_width": [1024, 1024], "n_boxes": [2, 0],
                           "view": ["AP", None], "photometric": ["MONOCHROME2"] * 2,
                           "transfer_syntax": ["1.2.840.10008.1.2.4.50"] * 2, "label_class": ["Lung Opacity", "Normal"]})
    boxes = pd.DataFrame({"patient_id": ["a", "a"]})
    problems = [Problem("x", "unreadable file", "truncated"), Problem("y", "unreadable file", "not DICOM")]
    summary = summarise(images, boxes, problems, n_files=4, n_readable=2)
    assert (summary["images"], summary["readable"], summary["usable"], summary["positives"], summary["boxes"]) == (
        4, 2, 2, 1, 2)
    assert summary["views"] == {"AP": 1, "unknown": 1} and summary["sizes"] == {"1024x1024": 1, "1024x512": 1}
    assert summary["problems"] == {"unreadable file": 2}
    csv_path, json_path = write_qc(tmp_path, problems, summary, "_test")
    assert csv_path.name == "qc_test.csv" and json.loads(json_path.read_text()) == summary
    assert pd.read_csv(csv_path, dtype=str).fillna("").values.tolist() == [["x", "", "unreadable file", "truncated"],
                                                                           ["y", "", "unreadable file", "not DICOM"]]
