import numpy as np
import pytest
import torch

from pneumodet.predict import Predictor, fuse_boxes, to_original


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
    (boxes, scores, gate), = Predictor(model, 64, hflip_tta=True)([image])
    # plain: [0,0,10,10]; flipped sees the corner on the right -> [54,..] -> unflipped [0,0,10,10]
    assert np.allclose(boxes, [[0, 0, 10, 10]]) and np.allclose(scores, [0.8])
    assert model.roi_heads.nms_thresh == 0.1 and model.roi_heads.detections_per_img == 3  # restored


class Sized(torch.nn.Module):
    """A stand-in detector whose transform resizes: its box grows with the size it runs at (as a real model's
    boxes differ between sizes), given in the input's pixels (as torchvision's transform maps them back)."""

    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        self.transform = SimpleNamespace(min_size=(64,), max_size=64)
        self.roi_heads = Fixed().roi_heads
        self.sizes = []

    def forward(self, images):
        size = self.transform.min_size[0]
        self.sizes.append(size)
        side = 32 + size / 16  # 36 px at 64, 38 px at 96: IoU 0.9, one finding
        return [{"boxes": torch.tensor([[0.0, 0.0, side, side]]), "scores": torch.tensor([size / 100])}
                for _ in images]


def test_scale_tta_runs_each_size_and_fuses_them():
    model, image = Sized(), torch.zeros(1, 64, 64)
    found = Predictor(model, 64, scales=(1.0, 1.5))([image])[0]
    assert model.sizes == [64, 96] and model.transform.min_size == (64,) and model.transform.max_size == 64
    side = (36 * 0.64 + 38 * 0.96) / (0.64 + 0.96)  # the score-weighted mean of the two sizes' boxes
    assert np.allclose(found.boxes_xyxy, [[0, 0, side, side]]) and np.allclose(found.scores, [0.8])
    model.sizes.clear()
    found = Predictor(model, 64, hflip_tta=True, scales=(1.0, 1.5))([image])[0]
    assert model.sizes == [64, 64, 96, 96]  # each size, plain and flipped
    # this stand-in ignores the image, so its flipped passes give a mirrored box: two findings, each in 2 of 4 passes
    assert np.allclose(found.boxes_xyxy, [[0, 0, side, side], [64 - side, 0, 64, side]])
    assert np.allclose(found.scores, [(0.64 + 0.96) / 4] * 2)
    assert np.allclose(Predictor(model, 64)([image])[0].boxes_xyxy, [[0, 0, 36, 36]])  # one size: one plain pass


def test_fusion_never_merges_two_boxes_of_one_pass_and_stays_within_0_1():
    # two plain boxes at IoU 0.49 and one flipped box between them: before, all three merged into 1.275
    plain = (np.array([[0, 0, 100, 100], [34.2, 0, 134.2, 100]], float), np.array([0.9, 0.85]))
    flipped = (np.array([[17, 0, 117, 100]], float), np.array([0.8]))
    boxes, scores = fuse_boxes([plain, flipped])
    assert len(boxes) == 2 and (scores <= 1).all() and (scores >= 0).all()
    assert np.isclose(scores[0], (0.9 + 0.8) / 2) and np.isclose(scores[1], 0.85 / 2)
    # many overlapping boxes from one pass stay separate findings
    one_pass = (np.array([[0, 0, 10, 10]] * 5, float), np.array([0.99, 0.98, 0.97, 0.96, 0.95]))
    boxes, scores = fuse_boxes([one_pass, (np.zeros((0, 4)), np.zeros(0))])
    assert len(boxes) == 5 and scores.max() <= 0.5


def test_found_scoring_keeps_a_box_on_one_sets_scale():
    a = (np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), np.array([0.8, 0.6]))
    b = (np.array([[2, 0, 12, 10]], float), np.array([0.4]))
    c = (np.zeros((0, 4)), np.zeros(0))
    boxes, scores = fuse_boxes([a, b, c], score="found")
    assert np.allclose(scores, [0.6, 0.6])  # (0.8 + 0.4) / 2 models that found it; 0.6 / 1
    assert np.allclose(fuse_boxes([a, b, c])[1], [0.4, 0.2])  # the average over all three sets
    assert np.allclose(boxes[0], fuse_boxes([a, b, c])[0][0])  # the same fused box either way
    with pytest.raises(ValueError):
        fuse_boxes([a], score="max")


def test_the_predictor_votes_boxes_only_while_it_runs_and_only_where_the_model_can():
    """predict.box_vote reaches the model's RoI heads for the call, and is theirs again after it; a model with
    other RoI heads (a stand-in, another library's) predicts with its own NMS instead of failing."""
    from pneumodet.config import ModelConfig
    from pneumodet.model import build_model, swapped

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny_fpn", weights="none", min_score=0.0), 64).eval()
    image = torch.rand(1, 64, 64)
    voted, plain = Predictor(model, 64, box_vote=True)([image])[0], Predictor(model, 64)([image])[0]
    assert model.roi_heads.box_vote is False
    with torch.no_grad(), swapped(model.roi_heads, box_vote=True):
        expected = model([image])[0]
    assert np.allclose(voted.boxes_xyxy, expected["boxes"].numpy()) and len(voted.scores) > 1
    assert not np.allclose(voted.boxes_xyxy, plain.boxes_xyxy)  # an untrained model's boxes overlap: votes move them
    assert np.allclose(voted.scores, plain.scores)
    assert Predictor(Fixed(), 64, box_vote=True).box_vote is False
