import numpy as np
import pytest

from pneumodet.errors import UserError
from pneumodet.io.labels import Annotation, read_labels, write_labels

LABELS = """patientId,x,y,width,height,Target
neg,,,,,0
pos,264.0,152.0,213.0,379.0,1
pos,562.0,152.0,256.0,453.0,1
nosize,,,,,1
zero,10,10,0,50,1
infinite,10,10,inf,50,1
infinite,20,20,-5,50,1
conflict,,,,,0
conflict,100,100,50,50,1
dup,10,10,20,20,1
dup,10,10,20,20,1
"""
CLASSES = """patientId,class
neg,Normal
pos,Lung Opacity
pos,Lung Opacity
nosize,Lung Opacity
zero,Lung Opacity
conflict,Lung Opacity
conflict,Lung Opacity
dup,Lung Opacity
dup,Lung Opacity
extra,Normal
"""


@pytest.fixture
def labels(tmp_path):
    (tmp_path / "labels.csv").write_text(LABELS)
    (tmp_path / "classes.csv").write_text(CLASSES)
    return read_labels(tmp_path / "labels.csv", tmp_path / "classes.csv")


def test_one_annotation_per_image(labels):
    ann = labels.annotations
    # a Target=1 image without one usable box is left out: as a 0-box image it would be trained as a negative
    assert set(ann) == {"neg", "pos", "conflict", "dup"}
    assert ann["neg"].boxes_xywh.shape == (0, 4) and not ann["neg"].positive
    assert ann["neg"].label_class == "Normal"
    assert ann["pos"].boxes_xywh.tolist() == [[264, 152, 213, 379], [562, 152, 256, 453]]
    assert ann["pos"].label_class == "Lung Opacity"


def test_problems_are_collected(labels):
    kinds = {(p.patient_id, p.problem) for p in labels.problems}
    assert ("nosize", "missing box") in kinds
    assert ("zero", "non-positive box size") in kinds
    assert ("infinite", "missing box") in kinds and ("infinite", "non-positive box size") in kinds
    for pid in ("nosize", "zero", "infinite"):
        assert (pid, "positive without a usable box") in kinds and (pid, "class without label") not in kinds
    assert ("conflict", "conflicting target") in kinds
    assert ("dup", "duplicate box") in kinds
    assert ("extra", "class without label") in kinds
    assert ("pos", "conflicting class") not in kinds  # repeated class rows are de-duplicated
    assert labels.annotations["conflict"].boxes_xywh.tolist() == [[100, 100, 50, 50]]
    assert len(labels.annotations["dup"].boxes_xywh) == 1


def test_missing_column_is_a_user_error(tmp_path):
    (tmp_path / "bad.csv").write_text("patientId,x,y\na,1,2\n")
    with pytest.raises(UserError, match="missing column"):
        read_labels(tmp_path / "bad.csv")


def test_spaces_around_commas_and_a_byte_order_mark_are_read(tmp_path):
    (tmp_path / "l.csv").write_bytes(b"\xef\xbb\xbfpatientId, x, y ,width, height, Target\r\n"
                                     b"a, 1, 2, 30, 40, 1\r\nb, , , , , 0\r\n")
    (tmp_path / "c.csv").write_text("patientId, class\na, Lung Opacity\nb, Normal\n")
    labels = read_labels(tmp_path / "l.csv", tmp_path / "c.csv")
    assert labels.problems == []
    assert labels.annotations["a"].boxes_xywh.tolist() == [[1, 2, 30, 40]]
    assert labels.annotations["b"].boxes_xywh.shape == (0, 4) and labels.annotations["b"].label_class == "Normal"


def test_write_then_read_round_trip(tmp_path):
    anns = [Annotation("a", np.array([[1, 2, 3, 4], [5, 6, 7, 8]], float), "Lung Opacity"),
            Annotation("b", np.zeros((0, 4)), "No Lung Opacity / Not Normal")]
    write_labels(anns, tmp_path / "l.csv", tmp_path / "c.csv")
    back = read_labels(tmp_path / "l.csv", tmp_path / "c.csv")
    assert back.problems == []
    assert back.annotations["a"].boxes_xywh.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert back.annotations["b"].label_class == "No Lung Opacity / Not Normal"
    assert (tmp_path / "c.csv").read_text().count("a,Lung Opacity") == 2  # repeated per box, as Kaggle's


def test_rows_that_would_vanish_are_reported(tmp_path):
    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\nneg,,,,,0\nneg,,,,,0\n,,,,,0\n"
                                         ",10,10,20,20,1\nok,10,10,20,20,1\n")
    (tmp_path / "classes.csv").write_text("patientId,class\nneg,Normal\n,Normal\nok,Lung Opacity\n")
    labels = read_labels(tmp_path / "labels.csv", tmp_path / "classes.csv")
    found = [(p.patient_id, p.problem, p.detail) for p in labels.problems]
    assert ("neg", "duplicate row", "the Target=0 row is repeated; counted once") in found
    unnamed = [d for pid, problem, d in found if problem == "missing patientId"]
    assert unnamed == ["labels.csv line 4: row without a patientId; left out",
                       "labels.csv line 5: row without a patientId; left out",
                       "classes.csv line 3: row without a patientId; left out"]
    assert set(labels.annotations) == {"neg", "ok"}
