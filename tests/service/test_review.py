import io

import numpy as np
from PIL import Image

from pneumodet.postprocess import PostProcess
from pneumodet.service.review import outcome_of, render_png


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
