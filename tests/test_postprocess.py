import numpy as np

from pneumodet.config import PredictConfig
from pneumodet.postprocess import PostProcess, image_score, postprocess


def test_postprocess_threshold_nms_max_and_shrink():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [200, 200, 300, 260], [400, 0, 420, 20]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.2])
    kept, kept_scores = postprocess(boxes, scores, PostProcess(score_threshold=0.5, nms_iou=0.1, max_boxes=3, shrink=1.0))
    assert kept_scores.tolist() == [0.9, 0.7]  # the overlapping 0.8 suppressed, 0.2 below threshold
    kept, _ = postprocess(boxes, scores, PostProcess(0.5, 0.95, 1, shrink=0.5))
    assert kept.tolist() == [[25, 25, 75, 75]]  # one box, shrunk about its centre
    empty, empty_scores = postprocess(np.zeros((0, 4)), np.zeros(0), PostProcess(0.5, 0.1, 3, 1.0))
    assert empty.shape == (0, 4) and empty_scores.shape == (0,)


def test_defaults_are_predict_configs_and_the_image_score_ignores_the_threshold():
    assert PostProcess.from_config(PredictConfig()) == PostProcess(0.78, 0.01, 3, 1.0)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], float)
    assert image_score(boxes, np.array([0.3, 0.6]), PostProcess(0.9, 0.1, 3, 0.5)) == 0.6


def test_settings_are_said_in_words():
    from pneumodet.postprocess import PostProcess

    assert PostProcess(0.5, 0.01, 3, 1.0, 0.0).describe() == \
        "score threshold 0.5, NMS IoU 0.01, at most 3 boxes, no shrink, gate off"
    assert PostProcess(0.35, 0.3, 1, 0.875, 0.2).describe() == \
        "score threshold 0.35, NMS IoU 0.3, at most 1 box, boxes shrunk to 0.875, gate threshold 0.2"
