"""roi_ops must give torchvision's results: RoIAlign to float rounding, the RPN's NMS index for index."""

from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import batched_nms, roi_align
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import MultiScaleRoIAlign

from pneumodet.config import ModelConfig
from pneumodet.model import build_model
from pneumodet.roi_ops import GatherRoIAlign, TopKeptRPN, roi_align_gather, top_kept_nms


def _rois(generator, count: int, batch: int, size: float) -> torch.Tensor:
    """(count, 5) RoIs over a size × size image: ordinary boxes, boxes under a pixel wide, boxes past the
    edges (even past the -1 / size limits torchvision's sampling treats as empty) and boxes on the far border."""
    xy = torch.rand(count, 2, generator=generator) * size
    wh = torch.rand(count, 2, generator=generator) * size / 2
    wh[: count // 5] *= 0.01
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[count // 5: count // 3] += torch.tensor([-0.6, -0.6, 0.4, 0.4]) * size
    boxes[-3:] = torch.tensor([[size - 1.0, size - 1.0, size, size], [0.0, 0.0, size, size],
                               [size - 0.2, 2.0, size + 3.0, 9.0]])
    index = torch.randint(0, batch, (count, 1), generator=generator).float()
    return torch.cat([index, boxes], 1)


@pytest.mark.parametrize(("height", "width", "scale", "output", "sampling"),
                         [(64, 64, 1 / 4, 7, 2), (13, 21, 1 / 16, 7, 2), (32, 32, 1 / 8, 14, 2), (16, 16, 1 / 4, 5, 3)])
def test_gathered_roi_align_is_torchvisions(height, width, scale, output, sampling):
    generator = torch.Generator().manual_seed(height)
    features = torch.randn(3, 8, height, width, generator=generator)
    rois = _rois(generator, 60, 3, max(height, width) / scale)
    expected = roi_align(features, rois, output, spatial_scale=scale, sampling_ratio=sampling, aligned=False)
    got = roi_align_gather(features, rois, (output, output), scale, sampling)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # channels-last features (a view whose rows are contiguous) and no RoIs at all
    torch.testing.assert_close(roi_align_gather(features.to(memory_format=torch.channels_last), rois,
                                                (output, output), scale, sampling), expected, atol=1e-5, rtol=1e-5)
    assert roi_align_gather(features, rois[:0], (output, output), scale, sampling).shape == (0, 8, output, output)
    first = rois[rois[:, 0] == 0]  # one image alone (its own table path)
    torch.testing.assert_close(roi_align_gather(features[:1], first, (output, output), scale, sampling),
                               expected[rois[:, 0] == 0], atol=1e-5, rtol=1e-5)


def test_multiscale_pooling_and_its_gradient_are_torchvisions():
    generator = torch.Generator().manual_seed(1)
    features = OrderedDict((str(i), torch.randn(2, 4, 64 >> i, 64 >> i, generator=generator)) for i in range(4))
    boxes = [_rois(generator, 40, 1, 256)[:, 1:].clamp(0, 256) for _ in range(2)]
    boxes = [torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2] + 1)], 1) for b in boxes]
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    pooled, grads = [], []
    for cls in (MultiScaleRoIAlign, GatherRoIAlign):
        pool.__class__ = cls
        leaves = OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())
        out = pool(leaves, boxes, [(256, 256)] * 2)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        pooled.append(out.detach())
        # a level no box maps to gets no gradient here and a zero one from torchvision: the same update
        grads.append([torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves.values()])
    torch.testing.assert_close(pooled[1], pooled[0], atol=1e-5, rtol=1e-5)
    assert sum(bool(g.abs().sum() > 0) for g in grads[0]) == 3  # P5 takes boxes over 448 px: none in 256
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top", [1, 5, 12, 40, 1000])
def test_top_kept_nms_is_batched_nms_cut_to_top(top):
    generator = torch.Generator().manual_seed(top)
    # 30 objects, each under many near-copies of one box (what the RPN proposes and NMS suppresses), in three
    # groups as the RPN's levels: the highest-scored 2 × top boxes keep fewer than top (top 40), so it must look further
    cluster = torch.randint(0, 30, (900,), generator=generator)
    centre = (torch.rand(30, 2, generator=generator) * 200)[cluster] + torch.randn(900, 2, generator=generator)
    size = (10 + torch.rand(30, 2, generator=generator) * 40)[cluster] * (1 + 0.05 * torch.randn(900, 1,
                                                                                                generator=generator))
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    scores = torch.rand(900, generator=generator)
    for groups in (torch.randint(0, 3, (900,), generator=generator), torch.zeros(900, dtype=torch.int64)):
        for iou in (0.3, 0.7):
            expected = batched_nms(boxes, scores, groups, iou)[:top]
            assert torch.equal(top_kept_nms(boxes, scores, groups, iou, top), expected)
    assert top_kept_nms(boxes[:0], scores[:0], groups[:0], 0.7, top).shape == (0,)


def test_top_kept_nms_decides_each_level_without_coordinate_offsets():
    # two boxes of the fifth level at IoU 0.7 within float rounding: batched_nms shifts each level's boxes by
    # level × (largest coordinate + 1) to run one NMS, and that rounding keeps both; NMS level by level, which
    # pneumodet's RPN has run since its NMS was cut short (what its runs trained with), suppresses the second
    boxes = torch.tensor([[24.223501205444336, 81.5468978881836, 123.53956604003906, 129.3721466064453],
                          [41.749847412109375, 81.5468978881836, 141.06591796875, 129.3721466064453]])
    scores, levels = torch.tensor([0.9, 0.8]), torch.tensor([4, 4])
    assert len(batched_nms(boxes, scores, levels, 0.7)) == 2 and len(box_ops.nms(boxes, scores, 0.7)) == 1
    assert top_kept_nms(boxes, scores, levels, 0.7, 10).tolist() == [0]


def test_every_model_proposes_and_pools_as_torchvision_does():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18_fpn", weights="none", rpn_post_nms_test=50), 128).eval()
    assert isinstance(model.rpn, TopKeptRPN) and isinstance(model.roi_heads.box_roi_pool, GatherRoIAlign)
    assert isinstance(model.roi_heads.mask_roi_pool, GatherRoIAlign)
    images = [torch.rand(1, 128, 128) for _ in range(2)]
    with torch.no_grad():
        got = model(images)
        model.rpn.__class__ = RegionProposalNetwork
        model.roi_heads.box_roi_pool.__class__ = MultiScaleRoIAlign
        model.roi_heads.mask_roi_pool.__class__ = MultiScaleRoIAlign
        expected = model(images)
    for mine, theirs in zip(got, expected, strict=True):
        assert len(theirs["boxes"]) > 0
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(mine["scores"], theirs["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(mine["masks"], theirs["masks"], atol=1e-4, rtol=0)


def test_off_the_cpu_both_ops_are_torchvisions(monkeypatch):
    """On another device (here ``meta``, which any machine has) the CPU gather and the cut-short NMS must hand the
    work to torchvision's own (CUDA) path, not mix CPU index tensors with the device's."""
    calls = []
    monkeypatch.setattr(MultiScaleRoIAlign, "forward", lambda self, *a: calls.append("pool") or "torchvision's")
    monkeypatch.setattr(RegionProposalNetwork, "filter_proposals",
                        lambda self, *a: calls.append("rpn") or "torchvision's")
    pool = GatherRoIAlign(["0"], 7, 2)
    for device in ("meta", "cpu"):
        features = OrderedDict([("0", torch.zeros(1, 4, 16, 16, device=device))])
        boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0]], device=device)]
        got = pool(features, boxes, [(64, 64)])
        assert (got == "torchvision's") == (device == "meta")
    model = build_model(ModelConfig(backbone="tiny_fpn", weights="none"), 64)
    proposals = torch.zeros(1, 6, 4, device="meta")
    assert model.rpn.filter_proposals(proposals, torch.zeros(1, 6, device="meta"), [(64, 64)], [6]) == "torchvision's"
    assert calls == ["pool", "rpn"]
