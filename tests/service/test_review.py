import io

import numpy as np
from PIL import Image

from pneumodet.metrics import outcome_of
from pneumodet.postprocess import PostProcess
from pneumodet.service.review import render_png


def test_outcomes():
    truth = np.array([[10, 10, 50, 50]], float)
    none = np.zeros((0, 4))
    assert outcome_of(none, none, np.zeros(0)) == ("true negative", None)
    assert outcome_of(none, truth, np.array([0.9])) == ("false alarm", 0.0)
    assert outcome_of(truth, none, np.zeros(0)) == ("miss", 0.0)
    assert outcome_of(truth, truth, np.array([0.9])) == ("hit", 1.0)
    assert PostProcess(0.5, 0.1, 3, 1.0)  # review applies the run's post-processing (see test_api)


def test_boxes_are_drawn_where_they_are_in_the_image():
    pixels = np.zeros((200, 400), np.uint8)  # wide image; the PNG is 512 wide, so x1.28 in both axes
    png = render_png(pixels, truth_xyxy=[[0, 0, 100, 50]], pred_xyxy=[[200, 100, 300, 150]], pred_scores=[0.9])
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (256, 512, 3)
    green = (image[..., 1] > 150) & (image[..., 0] < 100)
    red = (image[..., 0] > 150) & (image[..., 1] < 100)
    ys, xs = np.nonzero(green)
    assert abs(xs.max() - 128) <= 3 and abs(ys.max() - 64) <= 3
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - 256) <= 3 and abs(ys.min() - 128) <= 3


def test_review_applies_the_gate_and_shows_the_image_score(tmp_path):
    import pandas as pd

    from pneumodet.postprocess import Candidates
    from pneumodet.report.submission import write_boxes, write_gates
    from pneumodet.service.review import build_items, load_val_predictions

    box = np.array([[10, 10, 50, 50]], float)
    write_boxes(tmp_path / "val.csv", {"a": (box, np.array([0.9])), "b": (box, np.array([0.9]))})
    write_gates(tmp_path / "val.gate.csv", {"a": 0.8, "b": 0.2})
    raw = load_val_predictions(tmp_path / "val.csv")
    assert raw["a"].gate == 0.8 and isinstance(raw["b"], Candidates)

    class Val:  # the two columns and the truth build_items reads from a PneumoniaDataset
        records = pd.DataFrame({"patient_id": ["a", "b"], "view": ["PA", "AP"], "row": [0, 1],
                                "scale_x": [1.0, 1.0], "scale_y": [1.0, 1.0]})

        def boxes_xywh(self, i):
            return np.array([[10, 10, 40, 40]], float) if i == 0 else np.zeros((0, 4))

    items = {it.patient_id: it for it in build_items(Val(), raw, PostProcess(0.5, 0.1, 3, 1.0, gate_threshold=0.5))}
    assert items["a"].outcome == "hit" and items["a"].to_json()["image_score"] == 0.8
    assert items["b"].outcome == "true negative" and len(items["b"].pred_scores) == 0  # the gate removed its box
    ungated = build_items(Val(), raw, PostProcess(0.5, 0.1, 3, 1.0))
    assert {it.patient_id: it.outcome for it in ungated}["b"] == "false alarm"
