"""``TorchBackend``: a trained Mask R-CNN's inference pass, with every setting an argument.

torchvision's ``model(images)`` reads its settings from the model (the transform's input size, the RoI heads' NMS),
so applying a setting there means changing a model other threads may be using. This is the same pass, step for
step (transform, backbone and RPN head, proposals, RoI box head, detections, boxes mapped back, the gate), with the
input size, box voting, box refinement and bf16 passed in and nothing of the model changed: one backend serves
threads with different settings. The mask branch never runs (boxes and scores are all pneumodet reports).

A backend is chosen once per model when a Detector is loaded (as Ultralytics' AutoBackend is): this one runs it all
in PyTorch; :class:`pneumodet.onnx_runtime.OnnxBackend` runs the dense layers and the box head in ONNX Runtime.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import _resize_image_and_masks, resize_boxes
from torchvision.ops import boxes as box_ops

from pneumodet.candidates import CacheCandidates

#: the RoI heads keep every detection above their score threshold before box voting merges them
EVERY_BOX = 1 << 30


class TorchBackend:
    """Run a model built by :func:`pneumodet.model.build_model` (any torchvision Mask R-CNN with 2 classes) in
    PyTorch. ``device`` moves it there and ``channels_last`` lays its weights out NHWC, once, here; the model is put
    in eval mode (its RPN keeps the test-time number of proposals only then)."""

    name = "torch"

    def __init__(self, model, device: str | torch.device | None = None, channels_last: bool = False):
        if device is not None:
            model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        self.device = next(model.parameters()).device if device is None else torch.device(device)

    def dense(self, tensors: torch.Tensor) -> tuple[OrderedDict, list[torch.Tensor], list[torch.Tensor]]:
        """Return (FPN features by level name, objectness per level, box deltas per level) of a batch of
        normalised (N, 3, H, W) images."""
        features = self.model.backbone(tensors)
        objectness, deltas = self.model.rpn.head(list(features.values()))
        return features, objectness, deltas

    def box_head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (class logits (R, 2), box deltas (R, 8)) of the RoI features the box pool gave (R, C, 7, 7)."""
        heads = self.model.roi_heads
        return heads.box_predictor(heads.box_head(pooled))

    def candidates(self, images: list[torch.Tensor], size_px: int, *, box_refine: int = 0, box_vote: bool = False,
                   bf16: bool = False) -> list[CacheCandidates]:
        """Return per image the model's candidates in the pixels of the float [C, H, W] images in [0, 1] it was given
        (cache pixels), the model run at ``size_px`` (each image resized to it, the boxes mapped back).

        ``box_vote``: each kept box becomes the score-weighted mean of the boxes its NMS merged into it;
        ``box_refine``: passes of the box head over its own detections; ``bf16``: bf16 autocast.
        """
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        with torch.inference_mode(), autocast:
            images = [im.to(self.device, non_blocking=True) for im in images]
            batch = _transform(self.model.transform, images, size_px)
            features, objectness, deltas = self.dense(batch.tensors)
            proposals = _proposals(self.model.rpn, batch, features, objectness, deltas)
            boxes, scores = self._detections(features, proposals, batch.image_sizes, box_refine, box_vote)
            gates = self._gates(images, features)
        out = []
        for b, s, g, resized, image in zip(boxes, scores, gates, batch.image_sizes, images, strict=True):
            b = resize_boxes(b, resized, tuple(image.shape[-2:]))
            out.append(CacheCandidates(b.float().cpu().numpy().astype(np.float64), s.float().cpu().numpy(), g))
        return out

    def _detections(self, features, proposals, image_sizes, box_refine: int, box_vote: bool):
        heads = self.model.roi_heads
        class_logits, box_regression = self.box_head(heads.box_roi_pool(features, proposals, image_sizes))
        if box_vote:
            found = decode_detections(heads, class_logits, box_regression, proposals, image_sizes, 1.0, EVERY_BOX)
            boxes, scores, labels = vote_boxes(*found, heads.nms_thresh, heads.detections_per_img)
        else:
            boxes, scores, labels = decode_detections(heads, class_logits, box_regression, proposals, image_sizes,
                                                      heads.nms_thresh, heads.detections_per_img)
        for _ in range(box_refine):
            boxes, scores = self._refine(features, boxes, scores, labels, image_sizes)
        return boxes, scores

    def _refine(self, features, boxes, scores, labels, image_sizes):
        """Return one refinement pass's (boxes, scores) per image: the box head run again on the features under each
        detection; each box moves halfway to where the head's regression puts it and its score is averaged with
        the head's new one (iterative box regression; Cascade R-CNN averages its stages' scores so)."""
        counts = [len(b) for b in boxes]
        if not sum(counts):
            return boxes, scores
        heads = self.model.roi_heads
        class_logits, box_regression = self.box_head(heads.box_roi_pool(features, boxes, image_sizes))
        rows = torch.arange(sum(counts), device=class_logits.device)
        classes = torch.cat(labels)
        moved = heads.box_coder.decode(box_regression.float(), boxes)[rows, classes]
        rescored = torch.softmax(class_logits.float(), -1)[rows, classes]
        out_boxes, out_scores = [], []
        for b, s, m, r, shape in zip(boxes, scores, moved.split(counts), rescored.split(counts), image_sizes,
                                     strict=True):
            out_boxes.append((b + box_ops.clip_boxes_to_image(m, shape).to(b.dtype)) / 2)
            out_scores.append((s + r.to(s.dtype)) / 2)
        return out_boxes, out_scores

    def _gates(self, images: list[torch.Tensor], features: OrderedDict) -> list[float]:
        """Return each image's gate probability (NaN for a model without a gate)."""
        gate = getattr(self.model, "gate", None)
        if gate is None:
            return [math.nan] * len(images)
        # a classifier sees the images as given; a head sees the detector's features (one backbone pass for both)
        logits = gate(torch.stack([im[:1] for im in images])) if gate.takes_images else gate(features)
        return [float(p) for p in torch.sigmoid(logits.float())]


def _transform(transform, images: list[torch.Tensor], size_px: int) -> ImageList:
    """Return the images normalised, resized to ``size_px`` where they are not that size, and batched: what the
    model's transform does with its input size set to ``size_px``."""
    prepared = []
    for image in images:
        image = transform.normalize(image)
        if tuple(image.shape[-2:]) != (size_px, size_px):
            image, _ = _resize_image_and_masks(image, float(size_px), float(size_px), None, transform.fixed_size)
        prepared.append(image)
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in prepared]
    return ImageList(transform.batch_images(prepared, size_divisible=transform.size_divisible), sizes)


def _proposals(rpn, batch: ImageList, features: OrderedDict, objectness, deltas) -> list[torch.Tensor]:
    """Return the RPN's proposals (R_i, 4) per image from its head's outputs (torchvision's test-time path)."""
    anchors = rpn.anchor_generator(batch, list(features.values()))
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    boxes, _ = rpn.filter_proposals(proposals, objectness, batch.image_sizes, per_level)
    return boxes


def decode_detections(heads, class_logits, box_regression, proposals, image_sizes, nms_iou: float, per_image: int):
    """Return (boxes, scores, labels) per image from the box predictor's outputs: torchvision's
    ``RoIHeads.postprocess_detections`` with its NMS IoU and detections per image as arguments."""
    counts = [len(p) for p in proposals]
    pred_boxes = heads.box_coder.decode(box_regression, proposals).split(counts, 0)
    pred_scores = torch.softmax(class_logits, -1).split(counts, 0)
    classes = class_logits.shape[-1]
    out_boxes, out_scores, out_labels = [], [], []
    for boxes, scores, shape in zip(pred_boxes, pred_scores, image_sizes, strict=True):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        labels = torch.arange(classes, device=class_logits.device).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, nms_iou)[:per_image]
        out_boxes.append(boxes[keep])
        out_scores.append(scores[keep])
        out_labels.append(labels[keep])
    return out_boxes, out_scores, out_labels


def vote_boxes(boxes, scores, labels, nms_iou: float, per_image: int):
    """Return (boxes, scores, labels) per image after NMS at ``nms_iou`` with box voting: each kept box is the
    score-weighted mean of the boxes of its class that overlap it above ``nms_iou`` (its own included), its score
    unchanged; so two near-equal boxes give about the same box whichever of them NMS keeps."""
    out_boxes, out_scores, out_labels = [], [], []
    for b, s, lab in zip(boxes, scores, labels, strict=True):
        keep = box_ops.batched_nms(b, s, lab, nms_iou)[:per_image]
        weights = (box_ops.box_iou(b[keep], b) > nms_iou) & (lab[keep, None] == lab[None])
        weights = weights * s.float()[None]
        # summed, not multiplied as matrices: bf16 autocast would round the coordinates to a pixel or so
        voted = (weights[:, :, None] * b.float()[None]).sum(1) / weights.sum(1)[:, None]
        out_boxes.append(voted.to(b.dtype))
        out_scores.append(s[keep])
        out_labels.append(lab[keep])
    return out_boxes, out_scores, out_labels
