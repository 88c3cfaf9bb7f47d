"""``model.box_loss``: GIoU / DIoU on the decoded boxes in place of smooth L1, training only."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import distance_box_iou_loss, generalized_box_iou_loss

from pneumodet.box_loss import IOU_LOSS_WEIGHT, GIoULossRoIHeads, giou_fastrcnn_loss, unit_boxes
from pneumodet.errors import UserError
from pneumodet.model import build_model
from tests.conftest import tiny_config

WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's RoI heads' box coder


@pytest.mark.parametrize("weights", [WEIGHTS, (8.0, 12.0, 4.0, 6.0)])  # torchvision's, and one telling x from y
@pytest.mark.parametrize("loss, invariant", [(generalized_box_iou_loss, True), (distance_box_iou_loss, False)])
def test_the_loss_on_a_unit_proposal_equals_the_loss_on_the_real_boxes(loss, invariant, weights):
    """GIoU's is; DIoU's is not (its distance term follows the proposal's aspect ratio), which is why it is not
    offered."""
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(50, 2, generator=generator) * 200
    proposals = torch.cat([corner, corner + 10 + torch.rand(50, 2, generator=generator) * 150], dim=1)
    predicted, target = (torch.randn(50, 4, generator=generator) for _ in range(2))
    coder = BoxCoder(weights)
    real = [coder.decode_single(d, proposals) for d in (predicted, target)]
    want = loss(*real, reduction="none")
    got = loss(unit_boxes(predicted, weights), unit_boxes(target, weights), reduction="none")
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5) == invariant
    assert want.std() > 0.05  # the boxes differ: the comparison is not of zeros


def test_the_stand_in_keeps_the_classification_loss_and_scores_only_the_positive_rois():
    generator = torch.Generator().manual_seed(1)
    labels = [torch.tensor([1, 0, 0, 1]), torch.tensor([0, 1])]
    targets = [torch.randn(4, 4, generator=generator), torch.randn(2, 4, generator=generator)]
    logits = torch.randn(6, 2, generator=generator)
    regression = torch.randn(6, 8, generator=generator)
    classification, box = giou_fastrcnn_loss(WEIGHTS)(logits, regression, labels, targets)
    want_classification, _ = tv_roi_heads.fastrcnn_loss(logits, regression, labels, targets)
    torch.testing.assert_close(classification, want_classification)
    positive = torch.tensor([0, 3, 5])
    predicted = regression.reshape(6, 2, 4)[positive, 1]
    target = torch.cat(targets)[positive]
    want = IOU_LOSS_WEIGHT * generalized_box_iou_loss(unit_boxes(predicted, WEIGHTS), unit_boxes(target, WEIGHTS),
                                                      reduction="sum") / 6
    torch.testing.assert_close(box, want)
    # a perfect regression costs nothing; the background RoIs' regression never counts
    perfect = regression.clone().reshape(6, 2, 4)
    perfect[positive, 1] = target
    assert giou_fastrcnn_loss(WEIGHTS)(logits, perfect.reshape(6, 8), labels, targets)[1] < 1e-6


def _losses(model, images, targets, seed=0):
    torch.manual_seed(seed)  # the RoIs sampled
    return model(images, targets)


def test_a_giou_model_trains_with_it_and_predicts_as_before():
    smooth, giou = (build_model(tiny_config(f"model.box_loss={kind}").model, 64) for kind in ("smooth_l1", "giou"))
    giou.load_state_dict(smooth.state_dict())  # the same weights: the class swap adds none
    assert isinstance(giou.roi_heads, GIoULossRoIHeads) and not isinstance(smooth.roi_heads, GIoULossRoIHeads)
    images = [torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    boxes = torch.tensor([[10.0, 12.0, 40.0, 50.0]])
    targets = [{"boxes": boxes, "labels": torch.ones(1, dtype=torch.int64),
                "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)} for _ in images]
    smooth.train(), giou.train()
    a, b = _losses(smooth, images, targets), _losses(giou, images, targets)
    torch.testing.assert_close(a["loss_classifier"], b["loss_classifier"])  # the same RoIs, the same logits
    assert not torch.isclose(a["loss_box_reg"], b["loss_box_reg"])
    b["loss_box_reg"].backward()  # it trains the box head
    assert giou.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    assert tv_roi_heads.fastrcnn_loss.__module__ == tv_roi_heads.__name__  # torchvision's own, back in place
    smooth.eval(), giou.eval()
    with torch.no_grad():
        for x, y in zip(smooth(images), giou(images), strict=True):
            torch.testing.assert_close(x["boxes"], y["boxes"])
            torch.testing.assert_close(x["scores"], y["scores"])


def test_an_unknown_box_loss_is_one_line():
    with pytest.raises(UserError, match="model.box_loss.*giou"):
        tiny_config("model.box_loss=gio")
