import numpy as np
import torch

from pneumodet.predict import PostProcess, Predictor, fuse_boxes, postprocess, to_original


def test_postprocess_threshold_nms_max_and_shrink():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [200, 200, 300, 260], [400, 0, 420, 20]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.2])
    kept, kept_scores = postprocess(boxes, scores, PostProcess(score_threshold=0.5, nms_iou=0.1, max_boxes=3))
    assert kept_scores.tolist() == [0.9, 0.7]  # the overlapping 0.8 suppressed, 0.2 below threshold
    kept, _ = postprocess(boxes, scores, PostProcess(0.5, 0.95, 1, shrink=0.5))
    assert kept.tolist() == [[25, 25, 75, 75]]  # one box, shrunk about its centre
    empty, empty_scores = postprocess(np.zeros((0, 4)), np.zeros(0), PostProcess())
    assert empty.shape == (0, 4) and empty_scores.shape == (0,)


def test_fusion_averages_agreeing_boxes_and_discounts_lonely_ones():
    a = (np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), np.array([0.8, 0.6]))
    b = (np.array([[2, 0, 12, 10]], float), np.array([0.4]))
    boxes, scores = fuse_boxes([a, b])
    assert np.allclose(boxes[0], [(0 * 0.8 + 2 * 0.4) / 1.2, 0, (10 * 0.8 + 12 * 0.4) / 1.2, 10])
    assert np.allclose(scores, [0.6, 0.3])  # (0.8 + 0.4) / 2, and 0.6 / 2 for the box one pass missed


def test_mapping_back_to_original_pixels():
    # a 1024 x 512 (width x height) image cached at 256: scale x 1/4, y 1/2
    boxes = to_original([[10, 20, 100, 300]], 0.25, 0.5, 512, 1024)
    assert boxes.tolist() == [[40, 40, 400, 512]]  # clipped to the image height


class Fixed(torch.nn.Module):
    """A stand-in detector: one box near the left edge, whatever the image."""

    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        self.roi_heads = SimpleNamespace(nms_thresh=0.1, detections_per_img=3, mask_roi_pool=None, mask_head=None,
                                         mask_predictor=None)

    def forward(self, images):
        out = []
        for image in images:
            left = float(image[0, 0, 0] > 0.5)  # the flipped image has its bright corner on the right
            box = [0, 0, 10, 10] if left else [54, 0, 64, 10]
            out.append({"boxes": torch.tensor([box], dtype=torch.float32), "scores": torch.tensor([0.8])})
        return out


def test_flip_tta_unflips_and_fuses():
    image = torch.zeros(1, 64, 64)
    image[0, 0, 0] = 1.0
    model = Fixed()
    (boxes, scores), = Predictor(model, 64, hflip_tta=True)([image])
    # plain: [0,0,10,10]; flipped sees the corner on the right -> [54,..] -> unflipped [0,0,10,10]
    assert np.allclose(boxes, [[0, 0, 10, 10]]) and np.allclose(scores, [0.8])
    assert model.roi_heads.nms_thresh == 0.1 and model.roi_heads.detections_per_img == 3  # restored
