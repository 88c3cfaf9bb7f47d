import numpy as np
import pytest

from pneumodet.errors import UserError
from pneumodet.report.submission import (
    format_prediction,
    parse_prediction_string,
    read_boxes,
    read_submission,
    score_submission,
    write_boxes,
    write_submission,
)


def test_format_orders_by_confidence_in_xywh():
    text = format_prediction(np.array([[10, 20, 40, 80], [100, 100, 150, 130]]), [0.3, 0.9])
    assert text == "0.9000 100.0 100.0 50.0 30.0 0.3000 10.0 20.0 30.0 60.0"
    assert format_prediction(np.zeros((0, 4)), []) == ""


def test_write_and_read_round_trip(tmp_path):
    results = {"a": (np.array([[10.0, 20.0, 40.0, 80.0]]), np.array([0.75])), "b": (np.zeros((0, 4)), np.zeros(0))}
    path = write_submission(tmp_path / "sub.csv", results)
    lines = path.read_text().splitlines()
    assert lines == ["patientId,PredictionString", "a,0.7500 10.0 20.0 30.0 60.0", "b,"]
    parsed = read_submission(path)
    assert parsed["a"].boxes_xyxy.tolist() == [[10, 20, 40, 80]] and parsed["a"].scores.tolist() == [0.75]
    assert len(parsed["b"].scores) == 0
    write_boxes(tmp_path / "boxes.csv", results)
    back = read_boxes(tmp_path / "boxes.csv")
    assert set(back) == {"a"} and np.allclose(back["a"][0], results["a"][0])


@pytest.mark.parametrize("text, message", [
    ("0.5 1 2 3", "not a multiple of 5"),
    ("0.5 1 2 -3 4", "negative width or height"),
    ("0.5 1 two 3 4", "non-numeric value 'two'"),
    ("0.5 1 2 nan 4", "non-finite"),
])
def test_malformed_prediction_strings_name_the_row(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(f"patientId,PredictionString\nok,0.9 1 2 3 4\nbad-one,{text}\n")
    with pytest.raises(UserError) as info:
        read_submission(path)
    assert message in str(info.value) and "bad.csv:3 (bad-one)" in str(info.value)


def test_bad_files(tmp_path):
    (tmp_path / "cols.csv").write_text("id,pred\na,\n")
    with pytest.raises(UserError, match="expected columns patientId,PredictionString"):
        read_submission(tmp_path / "cols.csv")
    (tmp_path / "dup.csv").write_text("patientId,PredictionString\na,\na,\n")
    with pytest.raises(UserError, match="appears twice"):
        read_submission(tmp_path / "dup.csv")
    with pytest.raises(UserError, match="not found"):
        read_submission(tmp_path / "missing.csv")
    assert parse_prediction_string("", "x").scores.size == 0


def test_score_against_kaggle_labels(tmp_path):
    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\n"
                                         "pos,10,10,20,20,1\nneg,,,,,0\nquiet,,,,,0\nmissing,5,5,10,10,1\n")
    (tmp_path / "sub.csv").write_text("patientId,PredictionString\npos,0.9 10 10 20 20\nneg,0.5 0 0 5 5\n"
                                      "quiet,\nextra,0.4 1 1 2 2\n")
    result = score_submission(tmp_path / "sub.csv", tmp_path / "labels.csv")
    # pos 1.0, neg 0 (false alarm), quiet left out, missing 0 (no prediction) -> 1/3
    assert result["rsna_map"] == pytest.approx(1 / 3) and result["n_images"] == 3
    assert result["missing_from_submission"] == 1 and result["not_in_labels"] == 1
    assert set(result["per_threshold"]) == {"0.40", "0.45", "0.50", "0.55", "0.60", "0.65", "0.70", "0.75"}


def test_score_says_when_the_submission_and_the_labels_name_other_images(tmp_path, capsys):
    from pneumodet.cli import main

    labels = "patientId,x,y,width,height,Target\n" + "".join(f"p{i},,,,,0\n" for i in range(300))
    (tmp_path / "labels.csv").write_text(labels)
    (tmp_path / "sub.csv").write_text("patientId,PredictionString\np0,\nq1,0.9 1 1 5 5\nq2,\n")
    assert main(["score", str(tmp_path / "sub.csv"), "--labels", str(tmp_path / "labels.csv")]) == 0
    err = capsys.readouterr().err
    assert "no row for 299 of the 300 labelled images" in err and "2 row(s) for images the labels do not have" in err
    assert main(["score", str(tmp_path / "sub.csv"), "--labels", str(tmp_path / "labels.csv"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no row for 299" in err
    (tmp_path / "full.csv").write_text("patientId,PredictionString\n" + "".join(f"p{i},\n" for i in range(300)))
    assert main(["score", str(tmp_path / "full.csv"), "--labels", str(tmp_path / "labels.csv"), "--strict"]) == 0
    assert capsys.readouterr().err == ""


def test_score_against_another_submission_gives_the_paired_difference(tmp_path, capsys):
    from pneumodet.cli import main

    n = 40  # 20 positives; A finds all of them, B only the first 10; both silent on the negatives
    labels = "patientId,x,y,width,height,Target\n" + "".join(
        f"p{i},10,10,20,20,1\n" if i < 20 else f"p{i},,,,,0\n" for i in range(n))
    (tmp_path / "labels.csv").write_text(labels)
    (tmp_path / "a.csv").write_text("patientId,PredictionString\n" + "".join(
        f"p{i},0.9 10 10 20 20\n" if i < 20 else f"p{i},\n" for i in range(n)))
    (tmp_path / "b.csv").write_text("patientId,PredictionString\n" + "".join(
        f"p{i},0.9 10 10 20 20\n" if i < 10 else f"p{i},\n" for i in range(n - 1)))  # and no row for the last
    result = score_submission(tmp_path / "a.csv", tmp_path / "labels.csv", against=tmp_path / "b.csv")
    other = result["against"]
    assert result["rsna_map"] == pytest.approx(1.0) and other["rsna_map"] == pytest.approx(0.5)
    assert other["difference"] == pytest.approx(0.5) and other["missing_from_submission"] == 1
    low, high = other["difference_ci"]
    assert 0.2 < low < 0.5 < high < 0.8  # paired: each resample scores both on the same images
    # A against itself: no difference on any resample
    same = score_submission(tmp_path / "a.csv", tmp_path / "labels.csv", against=tmp_path / "a.csv")["against"]
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0]
    args = ["score", str(tmp_path / "a.csv"), "--labels", str(tmp_path / "labels.csv"), "--against"]
    assert main([*args, str(tmp_path / "b.csv")]) == 0
    assert "b.csv has no row for 1 of the labelled images" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "b.csv"), "--strict"]) == 2
    assert main([*args, str(tmp_path / "nothing.csv")]) == 2
