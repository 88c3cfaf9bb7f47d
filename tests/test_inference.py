import numpy as np
import pytest
import torch

from pneumodet.candidates import CacheCandidates
from pneumodet.inference import fuse_boxes, fuse_candidates, tta_candidates
from pneumodet.settings import InferenceSettings


def test_fusion_averages_agreeing_boxes_and_discounts_lonely_ones():
    a = (np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), np.array([0.8, 0.6]))
    b = (np.array([[2, 0, 12, 10]], float), np.array([0.4]))
    boxes, scores = fuse_boxes([a, b])
    assert np.allclose(boxes[0], [(0 * 0.8 + 2 * 0.4) / 1.2, 0, (10 * 0.8 + 12 * 0.4) / 1.2, 10])
    assert np.allclose(scores, [0.6, 0.3])  # (0.8 + 0.4) / 2, and 0.6 / 2 for the box one pass missed


def test_mapping_back_to_original_pixels():
    # a 1024 x 512 (width x height) image cached at 256: x by 4, y by 2
    found = CacheCandidates(np.array([[10, 20, 100, 300]], float), np.array([0.5])).to_original(256, (512, 1024))
    assert found.boxes_orig_xyxy.tolist() == [[40, 40, 400, 512]]  # clipped to the image height


class Fixed:
    """A stand-in backend: one box near the left edge, whatever the image; records the sizes it ran at."""

    def __init__(self, grows: bool = False):
        self.sizes, self.grows = [], grows

    def candidates(self, images, size_px, box_refine=0, box_vote=False, bf16=False):
        self.sizes.append(size_px)
        out = []
        for image in images:
            if self.grows:  # a box that grows with the size it runs at (as a real model's boxes differ between
                # sizes), given in the input's pixels: 36 px at 64, 38 px at 96: IoU 0.9, one finding
                side = 32 + size_px / 16
                out.append(CacheCandidates(np.array([[0.0, 0.0, side, side]]), np.array([size_px / 100])))
                continue
            left = float(image[0, 0, 0] > 0.5)  # the flipped image has its bright corner on the right
            box = [0, 0, 10, 10] if left else [54, 0, 64, 10]
            out.append(CacheCandidates(np.array([box], float), np.array([0.8])))
        return out


def test_flip_tta_unflips_and_fuses():
    image = torch.zeros(1, 64, 64)
    image[0, 0, 0] = 1.0
    (boxes, scores, gate), = tta_candidates(Fixed(), [image], 64, InferenceSettings(hflip_tta=True))
    # plain: [0,0,10,10]; flipped sees the corner on the right -> [54,..] -> unflipped [0,0,10,10]
    assert np.allclose(boxes, [[0, 0, 10, 10]]) and np.allclose(scores, [0.8])


def test_scale_tta_runs_each_size_and_fuses_them():
    backend, image = Fixed(grows=True), torch.zeros(1, 64, 64)
    scaled = InferenceSettings(hflip_tta=True, tta_scales=(1.0, 1.5))
    found = tta_candidates(backend, [image], 64, scaled)[0]
    assert backend.sizes == [64, 64, 96, 96]  # each size, plain and flipped
    side = (36 * 0.64 + 38 * 0.96) / (0.64 + 0.96)  # the score-weighted mean of the two sizes' boxes
    # this stand-in ignores the image, so its flipped passes give a mirrored box: two findings, each in 2 of 4 passes
    assert np.allclose(found.boxes_cache_xyxy, [[0, 0, side, side], [64 - side, 0, 64, side]])
    assert np.allclose(found.scores, [(0.64 + 0.96) / 4] * 2)
    backend.sizes.clear()
    plain = tta_candidates(backend, [image], 64, InferenceSettings(tta_scales=(1.0, 1.5)))[0]
    assert backend.sizes == [64] and np.allclose(plain.boxes_cache_xyxy, [[0, 0, 36, 36]])  # no TTA: one pass


def test_candidates_of_two_box_spaces_are_never_fused():
    """A fused box is the mean of boxes in one pixel space: cache and original candidates refuse to mix."""
    cache = CacheCandidates(np.array([[0, 0, 10, 10]], float), np.array([0.9]))
    original = cache.to_original(64, (128, 256))
    assert np.allclose(original.boxes_orig_xyxy, [[0, 0, 40, 20]])  # x by 256/64, y by 128/64
    assert type(fuse_candidates([cache, cache])) is CacheCandidates
    with pytest.raises(TypeError, match="different spaces"):
        fuse_candidates([cache, original])


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


def test_a_callers_settings_are_checked_as_the_configs_are():
    from pneumodet.config import ConfigError

    assert InferenceSettings().but(box_refine=2, tta_scales=[1.0, 1.5]).tta_scales == (1.0, 1.5)
    with pytest.raises(ConfigError, match="predict.box_refine must be in"):
        InferenceSettings().but(box_refine=-1)
    with pytest.raises(ConfigError, match="predict.tta_scales must be in"):
        InferenceSettings(tta_scales=(1.0, 9.0))
    with pytest.raises(ConfigError, match="at least one value"):
        InferenceSettings(tta_scales=())
