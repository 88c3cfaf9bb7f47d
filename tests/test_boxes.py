import numpy as np
import pytest

from pneumodet import boxes


def test_xywh_xyxy_round_trip():
    b = np.array([[10, 20, 30, 40], [0, 0, 1, 1]], dtype=float)
    xyxy = boxes.xywh_to_xyxy(b)
    assert xyxy.tolist() == [[10, 20, 40, 60], [0, 0, 1, 1]]
    assert np.allclose(boxes.xyxy_to_xywh(xyxy), b)


def test_empty_boxes_keep_shape():
    assert boxes.xywh_to_xyxy([]).shape == (0, 4)
    assert boxes.iou_xyxy([], [[0, 0, 1, 1]]).shape == (0, 1)


def test_iou_values():
    a = [[0, 0, 10, 10]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 8]]
    iou = boxes.iou_xyxy(a, b)[0]
    assert iou[0] == pytest.approx(1.0)
    assert iou[1] == pytest.approx(50 / 150)
    assert iou[2] == 0.0
    assert iou[3] == 0.0  # zero-area box


def test_scale_and_clip():
    b = boxes.scale_boxes([[100, 200, 300, 400]], 0.25, 0.5)
    assert b.tolist() == [[25, 100, 75, 200]]
    assert boxes.clip_xyxy([[-5, -5, 70, 20]], 50, 60).tolist() == [[0, 0, 60, 20]]


def test_shrink_keeps_centre():
    shrunk = boxes.shrink_xyxy([[0, 0, 100, 200]], 0.5)
    assert shrunk.tolist() == [[25, 50, 75, 150]]


def test_masks_fill_the_box():
    masks = boxes.boxes_to_masks([[2, 3, 6, 8]], 10, 10)
    assert masks.shape == (1, 10, 10) and masks.dtype == np.uint8
    assert masks.sum() == 4 * 5
    assert masks[0, 3, 2] == 1 and masks[0, 2, 2] == 0 and masks[0, 8, 5] == 0


def test_ellipse_mask_is_smaller_than_rectangle():
    rect = boxes.boxes_to_masks([[0, 0, 40, 20]], 32, 48)
    ellipse = boxes.boxes_to_masks([[0, 0, 40, 20]], 32, 48, shape="ellipse")
    assert 0.7 < ellipse.sum() / rect.sum() < 0.85  # pi/4 of the box
    assert ellipse[0, 0, 0] == 0 and ellipse[0, 10, 20] == 1
    with pytest.raises(ValueError):
        boxes.boxes_to_masks([[0, 0, 1, 1]], 4, 4, shape="star")
