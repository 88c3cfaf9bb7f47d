"""The explicit inference pass: torchvision's answer, settings as arguments, and a model nobody changes."""

import threading

import numpy as np
import pytest
import torch

from pneumodet.config import ModelConfig
from pneumodet.forward import TorchBackend, decode_detections, vote_boxes
from pneumodet.model import CANDIDATE_NMS_IOU, CANDIDATES_PER_IMAGE, build_model

SIZE = 64


def _model(gate: bool = False, backbone: str = "tiny_fpn"):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, weights="none", frozen_bn=False, min_score=0.0, gate=gate),
                       SIZE).eval()


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("backbone", "gate"), [("tiny_fpn", False), ("tiny_fpn", True), ("resnet18_fpn", True)])
def test_the_pass_gives_torchvisions_boxes_scores_and_gate(backbone, gate):
    model = _model(gate, backbone)
    images = [torch.rand(1, SIZE, SIZE) for _ in range(2)]
    with torch.no_grad():
        expected = model(images)
    found = TorchBackend(model).candidates(images, SIZE)
    for want, got in zip(expected, found, strict=True):
        assert len(got.scores) > 0
        assert np.array_equal(want["boxes"].numpy(), got.boxes_cache_xyxy.astype(np.float32))
        assert np.array_equal(want["scores"].numpy(), got.scores)
        assert np.isnan(got.gate) if not gate else np.isclose(float(want["gate"]), got.gate)


def test_another_input_size_maps_the_boxes_back_to_the_images_pixels():
    """At 1.5x the model sees a 96 px image; its boxes come back in the 64 px image's pixels."""
    model, image = _model(), torch.rand(1, SIZE, SIZE)
    found = TorchBackend(model).candidates([image], 96)[0]
    resized = torch.nn.functional.interpolate(image[None], size=(96, 96), mode="bilinear", align_corners=False)[0]
    direct = TorchBackend(model).candidates([resized], 96)[0]
    assert np.allclose(found.boxes_cache_xyxy, direct.boxes_cache_xyxy * SIZE / 96, atol=1e-3)
    assert found.boxes_cache_xyxy.max() <= SIZE


def test_box_refinement_reruns_the_box_head_on_its_own_detections():
    """One refining pass: each detection moves halfway to the box head's regression from it, its score to the mean
    of the two; the model is unchanged, and training never refines."""
    model = _model()
    before_state = _state(model)
    images = [torch.rand(1, SIZE, SIZE) for _ in range(2)]
    backend = TorchBackend(model)
    plain, refined = backend.candidates(images, SIZE), backend.candidates(images, SIZE, box_refine=1)
    with torch.no_grad():
        batch = model.transform(images)[0]
        features = model.backbone(batch.tensors)
        heads = model.roi_heads
        boxes = [torch.as_tensor(c.boxes_cache_xyxy, dtype=torch.float32) for c in plain]
        logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, batch.image_sizes)))
    moved = heads.box_coder.decode(deltas, boxes)[:, 1].clamp(0, SIZE)
    score = torch.softmax(logits, -1)[:, 1]
    expected = (torch.cat(boxes) + moved) / 2
    assert (expected - torch.cat(boxes)).abs().max() > 1e-3  # the head's second look does move them
    got = torch.as_tensor(np.concatenate([c.boxes_cache_xyxy for c in refined]), dtype=torch.float32)
    torch.testing.assert_close(got, expected)
    plain_scores = torch.as_tensor(np.concatenate([c.scores for c in plain]))
    torch.testing.assert_close(torch.as_tensor(np.concatenate([c.scores for c in refined])), (plain_scores + score) / 2)
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())


def _kept(vote: bool, scores: list[float], per_image: int = CANDIDATES_PER_IMAGE):
    """Return (boxes, scores, proposals): what the RoI heads of a tiny model keep from four proposals scored
    ``scores`` (the box head's output given directly: zero regression, so each proposal is its own box)."""
    heads = build_model(ModelConfig(backbone="tiny_fpn", weights="none"), SIZE).roi_heads
    proposals = torch.tensor([[10.0, 10.0, 30.0, 40.0],  # A
                              [12.0, 10.0, 30.0, 44.0],  # B: IoU 0.80 with A, NMS merges them
                              [22.0, 30.0, 40.0, 60.0],  # overlaps A, IoU 0.08: a box of its own
                              [45.0, 5.0, 60.0, 20.0]])  # far from all
    p = torch.tensor(scores)
    logits = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], 1)  # softmax gives p for the opacity
    args = (heads, logits, torch.zeros(len(p), 8), [proposals], [(SIZE, SIZE)])
    if vote:
        boxes, kept, labels = vote_boxes(*decode_detections(*args, 1.0, 1 << 30), CANDIDATE_NMS_IOU, per_image)
    else:
        boxes, kept, labels = decode_detections(*args, CANDIDATE_NMS_IOU, per_image)
    assert (labels[0] == 1).all()
    return boxes[0], kept[0], proposals


def test_box_voting_averages_the_boxes_nms_merged_so_a_near_tie_does_not_flip_the_box():
    """With box voting each kept box is the score-weighted mean of the boxes its NMS suppressed (itself included);
    scores, the boxes kept and their number are NMS's. Without it, a score change in the fourth digit swaps
    which of two near-equal boxes comes out: the change int8 or another CPU makes."""
    plain, plain_scores, proposals = _kept(False, [0.9000, 0.8999, 0.7, 0.6])
    voted, voted_scores, _ = _kept(True, [0.9000, 0.8999, 0.7, 0.6])
    torch.testing.assert_close(voted_scores, plain_scores)
    torch.testing.assert_close(plain, proposals[[0, 2, 3]])
    merged = (0.9 * proposals[0] + 0.8999 * proposals[1]) / (0.9 + 0.8999)
    torch.testing.assert_close(voted, torch.stack([merged, proposals[2], proposals[3]]))  # the others alone
    flipped, _, _ = _kept(False, [0.8999, 0.9000, 0.7, 0.6])
    assert (flipped[0] - plain[0]).abs().max() >= 2  # NMS now keeps B: the box jumps
    voted_flipped, _, _ = _kept(True, [0.8999, 0.9000, 0.7, 0.6])
    assert (voted_flipped[0] - voted[0]).abs().max() < 1e-3  # the vote barely moves
    few, _, _ = _kept(True, [0.9000, 0.8999, 0.7, 0.6], per_image=2)
    torch.testing.assert_close(few, voted[:2])  # detections_per_img still caps them


def test_voting_through_the_pass_moves_boxes_but_not_scores():
    model, image = _model(), torch.rand(1, SIZE, SIZE)
    backend = TorchBackend(model)
    voted, plain = backend.candidates([image], SIZE, box_vote=True)[0], backend.candidates([image], SIZE)[0]
    assert len(voted.scores) > 1 and np.allclose(voted.scores, plain.scores)
    assert not np.allclose(voted.boxes_cache_xyxy, plain.boxes_cache_xyxy)  # an untrained model's boxes overlap


def test_one_backend_shared_by_threads_gives_each_caller_its_own_settings():
    """Threads with different settings (input size, voting, refinement) at once get what each gets alone: no
    setting lives in the model, so none leaks from one call into another."""
    model = _model(gate=True)
    backend = TorchBackend(model)
    images = [torch.rand(1, SIZE, SIZE) for _ in range(2)]
    asks = [dict(size_px=SIZE), dict(size_px=96), dict(size_px=SIZE, box_vote=True), dict(size_px=SIZE, box_refine=2),
            dict(size_px=80, box_vote=True, box_refine=1)]
    alone = [backend.candidates(images, **ask) for ask in asks]
    assert len({round(float(found[0].boxes_cache_xyxy.sum()), 3) for found in alone}) == len(asks)  # all differ
    results, errors = {}, []
    start = threading.Barrier(len(asks) * 2)

    def call(i: int, key: int):
        try:
            start.wait()
            for _ in range(3):
                results.setdefault(key, []).append(backend.candidates(images, **asks[i]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i % len(asks), i)) for i in range(len(asks) * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for key, runs in results.items():
        for found in runs:
            for got, want in zip(found, alone[key % len(asks)], strict=True):
                assert np.array_equal(got.boxes_cache_xyxy, want.boxes_cache_xyxy)
                assert np.array_equal(got.scores, want.scores) and got.gate == want.gate
