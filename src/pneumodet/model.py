"""``build_model(ModelConfig, image_size)``: torchvision Mask R-CNN with two classes (background, opacity).

Transfer learning (:mod:`pneumodet.weights`): ``coco`` loads torchvision's COCO Mask R-CNN weights and replaces the
box and mask predictors (the seed's "COCO transfer learning"); ``imagenet`` loads backbone weights only; a file
path loads a state_dict (or a pneumodet checkpoint) from disk; ``none`` starts from scratch. Inference runs through
:mod:`pneumodet.forward`, which reads the model and never changes it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from pneumodet.box_loss import use_box_loss
from pneumodet.config import ModelConfig
from pneumodet.errors import UserError
from pneumodet.folding import fold_frozen_batchnorm
from pneumodet.gates import ClassifierGate, ImageGate
from pneumodet.roi_ops import ContextRoIAlign, GatherRoIAlign, TopKeptRPN
from pneumodet.weights import load_weights

CLASS_NAMES = ("background", "opacity")
#: the model returns candidates, not answers: post-processing (predict.nms_iou, max_boxes, threshold) decides,
#: the same way everywhere, so these only need to keep more than any setting it may choose
CANDIDATES_PER_IMAGE = 10
CANDIDATE_NMS_IOU = 0.5


class GatedMaskRCNN(MaskRCNN):
    """torchvision's Mask R-CNN plus an optional image-level gate (:mod:`pneumodet.gates`), with the RPN's proposal
    filtering and the RoI pools of :mod:`pneumodet.roi_ops` (the same proposals and pooled features, faster on the
    CPU, in training too).

    Training adds ``loss_gate`` (binary cross-entropy: has the image any box?) to the loss dict; inference
    adds ``gate`` (the probability) to each image's output. Without a gate it is torchvision's model.
    """

    def __init__(self, *args, gate: ImageGate | ClassifierGate | None = None, gate_loss_weight: float = 1.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.gate_loss_weight = gate, gate_loss_weight
        # torchvision builds its RPN inside and takes no other; the subclass adds no weights and no attribute, so
        # its class is swapped here, once, as the model is built
        self.rpn.__class__ = TopKeptRPN

    def forward(self, images, targets=None):
        if self.gate is None:
            return super().forward(images, targets)
        if self.gate.takes_images:  # its own network, on the images as given
            out = super().forward(images, targets)
            logits = self.gate(torch.stack([im[:1] for im in images])).float()
        else:  # a head on the detector's features: one backbone pass for both
            captured = {}
            hook = self.backbone.register_forward_hook(lambda _m, _i, out: captured.__setitem__("features", out))
            try:
                out = super().forward(images, targets)
            finally:
                hook.remove()
            logits = self.gate(captured["features"]).float()
        if self.training:
            labels = torch.tensor([float(len(t["boxes"]) > 0) for t in targets], device=logits.device)
            out["loss_gate"] = self.gate_loss_weight * nn.functional.binary_cross_entropy_with_logits(logits, labels)
            return out
        for detection, probability in zip(out, torch.sigmoid(logits), strict=True):
            detection["gate"] = probability
        return out


class CacheSizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform, minus the resize when the image already has the cache size; ``per_image``
    scales each image by its own mean and standard deviation instead of the fixed ones."""

    def __init__(self, *args, per_image: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_image = per_image

    def normalize(self, image):
        if not self.per_image:
            return super().normalize(image)
        image = (image - image.mean()) / image.std().clamp_min(1e-3)
        return image.expand(len(self.image_mean), -1, -1)  # grey (1 channel) to the 3 the backbone takes, as fixed does

    def resize(self, image, target=None):
        if tuple(image.shape[-2:]) == (self.min_size[0], self.max_size):
            return image, target
        return super().resize(image, target)


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def tiny_fpn(channels=(24, 48, 96, 160), out_channels: int = 64, depth: int = 1, min_level: int = 2) -> BackboneWithFPN:
    """Return a small plain CNN + FPN (strides 4-32, 64 channels) that trains from scratch on a CPU.

    For the offline demo: no pretrained weights exist for it, and at 128-256 px it runs ~8x faster
    than ResNet-18 FPN, whose 256-channel FPN and RPN at stride 4 dominate the cost. ``depth`` is the number
    of stride-1 convs in each stage after its first (downsampling) one; depth 1 is the original network.
    ``min_level`` 3 leaves the stride-4 stage out of the FPN (P3-P6).
    """
    c1, c2, c3, c4 = channels

    def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        first = [_conv_bn(c_in, c_out, stride)] if stride > 1 else []
        return nn.Sequential(*first, *[_conv_bn(c_out, c_out, 1) for _ in range(depth)])

    body = nn.Sequential(OrderedDict(
        stem=nn.Sequential(_conv_bn(3, c1 // 2, 2), _conv_bn(c1 // 2, c1, 2)),  # 3 channels: the transform's output
        layer1=stage(c1, c1, 1),
        layer2=stage(c1, c2, 2),
        layer3=stage(c2, c3, 2),
        layer4=stage(c3, c4, 2),
    ))
    stages = ["layer1", "layer2", "layer3", "layer4"][min_level - 2:]
    return BackboneWithFPN(body, {name: str(i) for i, name in enumerate(stages)}, list(channels)[min_level - 2:],
                           out_channels)


def _backbone(cfg: ModelConfig, norm_layer) -> nn.Module:
    layers = cfg.trainable_layers
    returned = list(range(cfg.fpn_min_level - 1, 5))  # ResNet stages feeding the FPN: layer1 (C2) is P2's
    if cfg.backbone == "tiny_fpn":
        return tiny_fpn(depth=cfg.tiny_depth, min_level=cfg.fpn_min_level)
    if cfg.backbone in ("resnet50_fpn", "resnet50_fpn_v2"):
        backbone = _resnet_fpn_extractor(resnet50(norm_layer=norm_layer), layers, returned_layers=returned)
    elif cfg.backbone == "resnet18_fpn":
        backbone = _resnet_fpn_extractor(resnet18(norm_layer=norm_layer), layers, returned_layers=returned)
    elif cfg.backbone == "mobilenet_v3_fpn":
        backbone = _mobilenet_extractor(mobilenet_v3_large(norm_layer=norm_layer), True, min(layers, 6))
    else:
        raise UserError(f"unknown model.backbone {cfg.backbone!r}")
    fold_frozen_batchnorm(backbone)  # model.frozen_bn: each BatchNorm folded into its convolution
    return backbone


def _gate(cfg: ModelConfig, channels: int, levels: int) -> nn.Module | None:
    if not cfg.gate:
        return None
    if cfg.gate_backbone == "shared":  # the levels from P3 (stride 8) up
        return ImageGate(channels, levels - 1 if cfg.fpn_min_level == 2 else levels, detach=cfg.gate_detach)
    return ClassifierGate(cfg.gate_weights)


def build_model(cfg: ModelConfig, image_size: int) -> GatedMaskRCNN:
    """Return a Mask R-CNN for (background, opacity) taking [C, image_size, image_size] images in [0, 1]."""
    norm_layer = FrozenBatchNorm2d if cfg.frozen_bn else nn.BatchNorm2d
    backbone = _backbone(cfg, norm_layer)
    levels = 3 if cfg.backbone == "mobilenet_v3_fpn" else 7 - cfg.fpn_min_level  # up to P6 (the FPN's max pool)
    sizes = (tuple(cfg.anchor_sizes),) * 3 if levels == 3 else tuple((s,) for s in cfg.anchor_sizes)
    anchors = AnchorGenerator(sizes, (tuple(cfg.anchor_ratios),) * levels)
    v2 = cfg.backbone == "resnet50_fpn_v2"
    kwargs = {}
    mask_layers = [cfg.mask_head_channels] * cfg.mask_head_convs
    channels = backbone.out_channels
    box_features = 1024
    if cfg.backbone == "tiny_fpn":
        box_features = 256
        kwargs["box_head"] = TwoMLPHead(channels * 7 * 7, box_features)
    if v2:  # the v2 heads (Li et al. 2021): deeper RPN head, conv box head, normalised mask head
        kwargs["box_head"] = FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)
        kwargs["mask_head"] = MaskRCNNHeads(256, mask_layers, 1, norm_layer=nn.BatchNorm2d)
    else:
        kwargs["mask_head"] = MaskRCNNHeads(channels, mask_layers, 1)
    kwargs["box_predictor"] = FastRCNNPredictor(box_features, len(CLASS_NAMES))
    kwargs["mask_predictor"] = MaskRCNNPredictor(cfg.mask_head_channels, cfg.mask_head_channels, len(CLASS_NAMES))
    model = GatedMaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2 if v2 else 1),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.rois_per_image,
        box_positive_fraction=cfg.roi_positive_fraction,
        box_detections_per_img=CANDIDATES_PER_IMAGE,
        box_score_thresh=cfg.min_score,
        box_nms_thresh=CANDIDATE_NMS_IOU,
        gate=_gate(cfg, channels, levels),
        box_roi_pool=(GatherRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2) if cfg.box_context == 1
                      else ContextRoIAlign(["0", "1", "2", "3"], 7, 2, cfg.box_context)),  # torchvision's pools
        mask_roi_pool=GatherRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2),
        gate_loss_weight=cfg.gate_loss_weight,
        **kwargs,
    )
    model.transform = CacheSizeTransform(image_size, image_size, model.transform.image_mean,
                                         model.transform.image_std, per_image=cfg.normalize == "image")
    use_box_loss(model.roi_heads, cfg.box_loss)
    if not cfg.masks:
        model.roi_heads.mask_roi_pool = model.roi_heads.mask_head = model.roi_heads.mask_predictor = None
    load_weights(model, cfg)
    return model


def head_parameters(model: MaskRCNN) -> list[nn.Parameter]:
    """Return the parameters the seed's "heads" stage trains: FPN, RPN and RoI heads."""
    return [p for name, p in model.named_parameters() if not name.startswith("backbone.body.")]
