"""``model.box_context``: the box head pools each RoI enlarged about its centre, its boxes still relative to it."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from pneumodet.errors import UserError
from pneumodet.model import build_model
from pneumodet.roi_ops import ContextRoIAlign, GatherRoIAlign, enlarge
from tests.conftest import tiny_config


def test_enlarge_keeps_the_centre_and_scales_the_sides():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]])
    got = enlarge(boxes, 1.5)
    torch.testing.assert_close((got[:, :2] + got[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)
    torch.testing.assert_close(got[:, 2:] - got[:, :2], 1.5 * (boxes[:, 2:] - boxes[:, :2]))


def test_the_context_pool_sees_what_lies_around_the_roi_and_the_plain_pool_does_not():
    features = torch.zeros(1, 3, 32, 32)
    features[:, :, 4:28, 4:28] = 1.0  # a bright ring around the RoI's square ...
    features[:, :, 10:22, 10:22] = 0.0  # ... and nothing inside it (pixel i sits at i)
    x, boxes, sizes = OrderedDict([("0", features)]), [torch.tensor([[10.0, 10.0, 21.0, 21.0]])], [(32, 32)]
    plain = GatherRoIAlign(["0"], output_size=7, sampling_ratio=2)(x, boxes, sizes)
    context = ContextRoIAlign(["0"], 7, 2, 1.5)(x, boxes, sizes)
    assert plain.abs().max() < 1e-6
    assert context[..., 0, :].min() > 0.5 and context[..., 3, 3].abs().max() < 1e-6  # the ring, then the RoI
    torch.testing.assert_close(context, GatherRoIAlign(["0"], output_size=7, sampling_ratio=2)(
        x, [enlarge(boxes[0], 1.5)], sizes))


def test_a_context_model_loads_the_plain_weights_trains_and_pools_otherwise():
    plain, context = (build_model(tiny_config(f"model.box_context={c}").model, 64) for c in (1, 1.5))
    assert isinstance(context.roi_heads.box_roi_pool, ContextRoIAlign)
    assert not isinstance(plain.roi_heads.box_roi_pool, ContextRoIAlign)
    context.load_state_dict(plain.state_dict())  # no weights of its own: a plain run's weights fit
    images = [torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.ones(1, dtype=torch.int64),
                "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)} for _ in images]
    context.train()
    losses = context(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_box_reg"].backward()
    assert context.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    plain.eval()
    with torch.no_grad():  # the same features and proposals, pooled with and without the context
        batch = plain.transform(images)[0]
        features = plain.backbone(batch.tensors)
        proposals = plain.rpn(batch, features)[0]
        pooled = [m.roi_heads.box_roi_pool(features, proposals, batch.image_sizes) for m in (plain, context)]
    assert sum(len(p) for p in proposals) > 0 and not torch.allclose(*pooled)


@pytest.mark.parametrize("value", ["0.5", "4"])
def test_a_context_outside_one_to_three_is_one_line(value):
    with pytest.raises(UserError, match="model.box_context"):
        tiny_config(f"model.box_context={value}")
