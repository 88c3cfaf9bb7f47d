"""The box head's regression loss (``model.box_loss``): torchvision's smooth L1 on the encoded deltas, or GIoU
(Rezatofighi et al. 2019) on the boxes they decode to, as mmdetection trains Faster R-CNN with
``reg_decoded_bbox``.

The RSNA metric counts a box only at IoU 0.4 to 0.75, and most of the mAP a run loses is lost at the high end
(make demo's and the variants' per-threshold precision falls by half from 0.4 to 0.75): a loss on the overlap
itself aims at that. The GIoU of two boxes decoded from one proposal does not depend on the proposal (a shift and
an axis-aligned scaling, the same for both boxes, scale every area alike), so the deltas are decoded against a
unit proposal and torchvision's loss function keeps its inputs. DIoU is not offered: its centre distance over the
enclosing diagonal changes with the proposal's aspect ratio, so it would need the proposals themselves.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import generalized_box_iou_loss

#: the GIoU loss's weight: mmdetection's for GIoU in Faster R-CNN, which also divides by every sampled RoI
IOU_LOSS_WEIGHT = 10.0
#: torchvision's BoxCoder clamps the decoded log-size at this (boxes at most 1000/16 times the proposal)
MAX_LOG_SIZE = math.log(1000.0 / 16)


def unit_boxes(deltas: torch.Tensor, weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Return the (N, 4) xyxy boxes that (N, 4) encoded deltas give on a unit proposal centred at 0."""
    wx, wy, ww, wh = weights
    cx, cy = deltas[:, 0] / wx, deltas[:, 1] / wy
    w = torch.exp(torch.clamp(deltas[:, 2] / ww, max=MAX_LOG_SIZE))
    h = torch.exp(torch.clamp(deltas[:, 3] / wh, max=MAX_LOG_SIZE))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def giou_fastrcnn_loss(weights: tuple[float, float, float, float]):
    """Return a stand-in for torchvision's ``fastrcnn_loss``: the same classification loss, and the GIoU loss between
    each positive RoI's predicted and target boxes, summed, times IOU_LOSS_WEIGHT, over the RoIs sampled."""

    def loss(class_logits, box_regression, labels, regression_targets):
        labels, targets = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        classification = F.cross_entropy(class_logits, labels)
        positive = torch.where(labels > 0)[0]
        predicted = box_regression.reshape(len(class_logits), -1, 4)[positive, labels[positive]]
        box = generalized_box_iou_loss(unit_boxes(predicted.float(), weights),
                                       unit_boxes(targets[positive].float(), weights), reduction="sum")
        return classification, IOU_LOSS_WEIGHT * box / labels.numel()

    return loss


_SWAP = threading.Lock()  # the loss is looked up in torchvision's module: one training forward swaps it at a time


@contextmanager
def _fastrcnn_loss(replacement):
    with _SWAP:
        original = tv_roi_heads.fastrcnn_loss
        tv_roi_heads.fastrcnn_loss = replacement
        try:
            yield
        finally:
            tv_roi_heads.fastrcnn_loss = original


class GIoULossRoIHeads(RoIHeads):
    """torchvision's RoI heads (a model's class is swapped in place; no weights) whose training forward computes
    the box loss as GIoU; inference is torchvision's."""

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        with _fastrcnn_loss(giou_fastrcnn_loss(self.box_coder.weights)):
            return super().forward(features, proposals, image_shapes, targets)


def use_box_loss(roi_heads: RoIHeads, kind: str) -> None:
    """Make ``roi_heads`` train with ``kind`` (smooth_l1: torchvision's, unchanged)."""
    if kind == "giou":
        roi_heads.__class__ = GIoULossRoIHeads
