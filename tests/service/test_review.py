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

    from pneumodet.candidates import Candidates
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

        def boxes_orig_xywh(self, i):
            return np.array([[10, 10, 40, 40]], float) if i == 0 else np.zeros((0, 4))

    items = {it.patient_id: it for it in build_items(Val(), raw, PostProcess(0.5, 0.1, 3, 1.0, gate_threshold=0.5))}
    assert items["a"].outcome == "hit" and items["a"].to_json()["image_score"] == 0.8
    assert items["b"].outcome == "true negative" and len(items["b"].pred_scores) == 0  # the gate removed its box
    ungated = build_items(Val(), raw, PostProcess(0.5, 0.1, 3, 1.0))
    assert {it.patient_id: it.outcome for it in ungated}["b"] == "false alarm"


class EveryOutcome:
    """A val set of six non-square images (200 rows x 800 columns, cached at 64 px): a hit, a partial hit, two
    misses, a false alarm and a true negative; what build_items reads from a PneumoniaDataset."""

    truth = {"hit": [[100, 50, 200, 50]], "partial": [[100, 50, 200, 50]], "miss": [[300, 20, 100, 100]],
             "miss2": [[500, 20, 100, 100]], "alarm": [], "negative": []}

    def __init__(self):
        import pandas as pd

        ids = list(self.truth)
        self.records = pd.DataFrame({"patient_id": ids, "view": ["PA"] * 6, "row": range(6),
                                     "scale_x": [64 / 800] * 6, "scale_y": [64 / 200] * 6})

    def boxes_orig_xywh(self, i):
        return np.array(self.truth[self.records.at[i, "patient_id"]], float).reshape(-1, 4)

    @staticmethod
    def candidates():
        from pneumodet.candidates import Candidates

        box = np.array([[100, 50, 300, 100]], float)  # the truth's, xyxy
        return {"hit": Candidates(box, np.array([0.9])),
                "partial": Candidates(box + [60, 0, 60, 0], np.array([0.8])),  # IoU 0.54 with its truth
                "alarm": Candidates(box, np.array([0.7])), "negative": Candidates(box, np.array([0.1]))}


def test_review_items_run_worst_first_with_every_outcome():
    from pneumodet.service.review import build_items

    items = build_items(EveryOutcome(), EveryOutcome.candidates(), PostProcess(0.5, 0.1, 3, 1.0))
    assert [it.patient_id for it in items] == ["alarm", "miss", "miss2", "partial", "hit", "negative"]
    assert [it.outcome for it in items] == ["false alarm", "miss", "miss", "hit", "hit", "true negative"]
    assert 0 < items[3].score < 1 and items[4].score == 1.0 and items[5].score is None
    assert [it.index for it in items] == list(range(6))


def test_review_detail_gives_boxes_and_size_in_a_non_square_images_own_pixels():
    from pneumodet.service.review import build_items, review_detail

    items = build_items(EveryOutcome(), EveryOutcome.candidates(), PostProcess(0.5, 0.1, 3, 1.0))
    hit = next(it for it in items if it.patient_id == "hit")
    detail = review_detail(hit, (64, 64))
    assert detail["original_size"] == [200, 800]  # rows, columns: a swapped scale gives [800, 200]
    assert detail["truth"] == [[100, 50, 200, 50]] and detail["pred"] == [[100, 50, 200, 50, 0.9]]
