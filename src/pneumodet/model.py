"""``build_model(ModelConfig, image_size)``: torchvision Mask R-CNN with two classes (background, opacity).

Transfer learning: ``coco`` loads torchvision's COCO Mask R-CNN weights and replaces the box and
mask predictors (the seed's "COCO transfer learning"); ``imagenet`` loads backbone weights only; a
file path loads a state_dict (or a pneumodet checkpoint) from disk; ``none`` starts from scratch.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from pathlib import Path

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
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import MultiScaleRoIAlign

from pneumodet.config import ModelConfig
from pneumodet.errors import UserError
from pneumodet.roi_ops import GatherRoIAlign, TopKeptRPN

CLASS_NAMES = ("background", "opacity")
WEIGHT_URLS = {
    ("resnet50_fpn", "coco"): "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    ("resnet50_fpn_v2", "coco"): "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
    ("mobilenet_v3_fpn", "coco"):
        "https://download.pytorch.org/models/fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
    ("resnet50_fpn", "imagenet"): "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    ("resnet50_fpn_v2", "imagenet"): "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ("resnet18_fpn", "imagenet"): "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ("mobilenet_v3_fpn", "imagenet"): "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
}
#: the model returns candidates, not answers: post-processing (predict.nms_iou, max_boxes, threshold) decides,
#: the same way everywhere, so these only need to keep more than any setting it may choose
CANDIDATES_PER_IMAGE = 10
CANDIDATE_NMS_IOU = 0.5
#: predictor layers replaced for the two-class task (never loaded from COCO)
PREDICTOR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


class ImageGate(nn.Module):
    """Image-level classifier on the detector's FPN features: does the image hold any opacity?

    The winners' gate, as a head on the shared backbone (one forward pass): a 3x3 conv on each coarse FPN
    level (the last ``levels``: P3 and up), global mean and max pooling, one linear layer; returns a logit per image.
    With ``detach`` its loss stops at the features: the detector trains exactly as it would without a gate.
    """

    def __init__(self, channels: int, levels: int, hidden: int = 128, detach: bool = True):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(2 * hidden * levels, 1)
        self.levels, self.detach = levels, detach

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for x in list(features.values())[-self.levels:]:
            x = self.conv(x.detach() if self.detach else x)
            parts += [x.mean((2, 3)), x.amax((2, 3))]
        return self.fc(torch.cat(parts, 1)).squeeze(1)


#: torchxrayvision's DenseNet-121 trained on 8 chest X-ray sets (NIH, PadChest, CheXpert, MIMIC, RSNA, ...)
XRV_WEIGHTS = "densenet121-res224-all"
XRV_HOST = "github.com"  # where torchxrayvision downloads its weights from


class ClassifierGate(nn.Module):
    """A separate image classifier as the gate: DenseNet-121 on the whole image at 224 px, one input channel.

    ``weights``: ``xrv`` (torchxrayvision's chest X-ray weights, the strongest start for a chest X-ray
    classifier; the optional ``xrv`` extra), ``imagenet`` (torchvision's, first conv summed to one channel)
    or ``none``. Takes the model's input images (float [0, 1]); returns a logit per image.
    """

    def __init__(self, weights: str = "none", input_px: int = 224):
        super().__init__()
        from torchvision.models import densenet121

        self.input_px, self.weights = input_px, weights
        if weights == "xrv":
            self.features = _xrv_features()
        else:
            net = densenet121()
            if weights == "imagenet":
                state = fetch_weights("https://download.pytorch.org/models/densenet121-a639ec97.pth")
                net.load_state_dict(_densenet_keys(state))
            conv = net.features.conv0
            one = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
            one.weight.data = conv.weight.data.sum(1, keepdim=True)
            net.features.conv0 = one
            self.features = net.features
        self.fc = nn.Linear(1024, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(images[:, :1], size=(self.input_px, self.input_px), mode="bilinear",
                                      align_corners=False)
        if self.weights == "xrv":
            x = x * 2048 - 1024  # torchxrayvision's input range
        elif self.weights == "imagenet":
            x = (x - 0.449) / 0.226  # ImageNet's mean and std, averaged over the channels
        x = nn.functional.relu(self.features(x))
        return self.fc(x.mean((2, 3))).squeeze(1)


def _densenet_keys(state: dict) -> dict:
    """Return torchvision's DenseNet state_dict with its old 'norm.1'-style keys renamed ('norm1')."""
    import re

    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for key, value in state.items():
        match = pattern.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _xrv_features() -> nn.Module:
    """Return torchxrayvision's DenseNet-121 feature extractor with its chest X-ray weights."""
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise UserError("model.gate_weights=xrv needs torchxrayvision: pip install 'pneumodet[xrv]'") from None
    from pneumodet.network import can_reach

    cached = Path.home() / ".torchxrayvision" / "models_data"
    if not any(cached.glob("*densenet121*")) and not can_reach(XRV_HOST, 443, timeout_s=0.8):
        raise UserError(f"offline: cannot download torchxrayvision's {XRV_WEIGHTS} weights; place them in {cached} "
                        "or use model.gate_weights=imagenet or none")
    return xrv.models.DenseNet(weights=XRV_WEIGHTS).features


class RefiningRoIHeads(RoIHeads):
    """torchvision's RoI heads plus, at inference, ``refine_passes`` passes of the box head over its own detections.

    Each pass pools the features under each detected box, runs the box head and predictor on them again, moves
    the box halfway to where the head's regression puts it, and averages its score with the head's new score for
    it (iterative box regression; Cascade R-CNN averages its stages' scores the same way). The head regressed
    from proposals that were near a box; from its own detections, which are nearer, it corrects what was left.
    The mask branch, when it runs, sees the refined boxes. Training and ``refine_passes=0`` are torchvision's.
    """

    refine_passes = 0
    box_vote = False
    _features = None  # the batch's features while a refining forward runs

    def forward(self, features, proposals, image_shapes, targets=None):
        self._features = None if self.training or not self.refine_passes else features
        try:
            return super().forward(features, proposals, image_shapes, targets)
        finally:
            self._features = None

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        if self.box_vote:
            boxes, scores, labels = self._voted(class_logits, box_regression, proposals, image_shapes)
        else:
            boxes, scores, labels = super().postprocess_detections(class_logits, box_regression, proposals,
                                                                   image_shapes)
        for _ in range(self.refine_passes if self._features is not None else 0):
            boxes, scores = self._refine(boxes, scores, labels, image_shapes)
        return boxes, scores, labels

    def _voted(self, class_logits, box_regression, proposals, image_shapes):
        """torchvision's detections with each kept box replaced by the score-weighted mean of the boxes of its
        class that overlap it above the NMS IoU (its own included; box voting): two near-equal boxes give about
        the same box whichever of them NMS keeps."""
        nms_iou, per_image = self.nms_thresh, self.detections_per_img
        with swapped(self, nms_thresh=1.0, detections_per_img=1 << 30):  # every box above the score threshold
            found = super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, labels in zip(*found, strict=True):
            keep = box_ops.batched_nms(boxes, scores, labels, nms_iou)[:per_image]
            weights = (box_ops.box_iou(boxes[keep], boxes) > nms_iou) & (labels[keep, None] == labels[None])
            weights = weights * scores.float()[None]
            # summed, not multiplied as matrices: bf16 autocast would round the coordinates to a pixel or so
            voted = (weights[:, :, None] * boxes.float()[None]).sum(1) / weights.sum(1)[:, None]
            out_boxes.append(voted.to(boxes.dtype))
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels

    def _refine(self, boxes, scores, labels, image_shapes):
        """Return one pass's (boxes (N_i, 4) xyxy, scores (N_i,)) per image from the detections of the last."""
        counts = [len(b) for b in boxes]
        if not sum(counts):
            return boxes, scores
        class_logits, box_regression = self.box_predictor(self.box_head(
            self.box_roi_pool(self._features, boxes, image_shapes)))
        rows = torch.arange(sum(counts), device=class_logits.device)
        classes = torch.cat(labels)
        moved = self.box_coder.decode(box_regression.float(), boxes)[rows, classes]
        rescored = torch.softmax(class_logits.float(), -1)[rows, classes]
        out_boxes, out_scores = [], []
        for b, s, m, r, shape in zip(boxes, scores, moved.split(counts), rescored.split(counts), image_shapes,
                                     strict=True):
            out_boxes.append((b + box_ops.clip_boxes_to_image(m, shape).to(b.dtype)) / 2)
            out_scores.append((s + r.to(s.dtype)) / 2)
        return out_boxes, out_scores


class GatedMaskRCNN(MaskRCNN):
    """torchvision's Mask R-CNN plus an optional :class:`ImageGate` on the backbone's features, and
    :class:`RefiningRoIHeads` (``roi_heads.refine_passes`` 0, torchvision's inference, unless a Predictor sets it).

    Training adds ``loss_gate`` (binary cross-entropy: has the image any box?) to the loss dict; inference
    adds ``gate`` (the probability) to each image's output. Without a gate it is torchvision's model.
    """

    def __init__(self, *args, gate: ImageGate | ClassifierGate | None = None, gate_loss_weight: float = 1.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.gate_loss_weight = gate, gate_loss_weight
        # torchvision builds its RoIHeads inside; the subclass adds no weights, so every run's checkpoint loads
        self.roi_heads.__class__ = RefiningRoIHeads
        # the same proposals and pooled features, computed faster on the CPU (roi_ops), in training too
        self.rpn.__class__ = TopKeptRPN
        for pool in (self.roi_heads.box_roi_pool, self.roi_heads.mask_roi_pool):
            if type(pool) is MultiScaleRoIAlign:
                pool.__class__ = GatherRoIAlign

    def forward(self, images, targets=None):
        if self.gate is None:
            return super().forward(images, targets)
        if isinstance(self.gate, ClassifierGate):  # its own network, on the images as given
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


def weights_file(url: str) -> Path:
    """Return where torch.hub keeps the file for ``url`` (``$TORCH_HOME/hub/checkpoints/NAME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def fetch_weights(url: str) -> dict:
    """Return the state_dict at ``url``, from the torch.hub cache or downloaded; fail fast offline."""
    from pneumodet.network import can_reach

    path = weights_file(url)
    if not path.is_file():
        if not can_reach("download.pytorch.org", 443, timeout_s=0.8):
            raise UserError(f"offline: cannot download {Path(url).name}; place it at {path} "
                            f"(from {url}) or use model.weights=none")
        torch.hub.download_url_to_file(url, str(path.with_suffix(".part")), progress=True)
        path.with_suffix(".part").replace(path)
    return torch.load(path, map_location="cpu", weights_only=True)


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


class FoldedConv2d(nn.Conv2d):
    """A bias-free convolution followed by a frozen BatchNorm, run as one convolution: the BatchNorm's scale
    multiplies the weights and its shift is the bias. The same function (to float rounding) and the same
    gradient for the weights, without a pass over the activations for the BatchNorm (and under bf16 autocast,
    without the float32 copy a frozen BatchNorm's float32 scale made of each activation). The class of an
    existing module is swapped: its weights and state_dict keys stay where they were."""

    def forward(self, x):
        bn = self.__dict__["folded_bn"]
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BatchNorm whose scale and shift a :class:`FoldedConv2d` before it applies: here, the identity."""

    def forward(self, x):
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold each frozen BatchNorm into the convolution that feeds it; return how many were folded.

    Pairs are found where the order is certain: ``convK`` then ``bnK`` in one module (ResNet's stem and
    blocks), or a convolution then a BatchNorm next to each other in an ``nn.Sequential`` (downsample branches,
    MobileNet's blocks)."""
    folded = 0
    for parent in module.modules():
        children = dict(parent.named_children())
        pairs = [(c, children.get("bn" + name[4:])) for name, c in children.items() if name.startswith("conv")]
        if isinstance(parent, nn.Sequential):
            ordered = list(children.values())
            pairs += list(zip(ordered, ordered[1:], strict=False))
        for conv, bn in pairs:
            if (type(conv) is nn.Conv2d and type(bn) is FrozenBatchNorm2d and conv.bias is None
                    and conv.padding_mode == "zeros" and conv.out_channels == bn.weight.numel()):
                conv.__class__, bn.__class__ = FoldedConv2d, FoldedFrozenBatchNorm2d
                conv.__dict__["folded_bn"] = bn  # not a submodule: the state_dict keeps bn where it was
                folded += 1
    return folded


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
        gate_loss_weight=cfg.gate_loss_weight,
        **kwargs,
    )
    model.transform = CacheSizeTransform(image_size, image_size, model.transform.image_mean,
                                         model.transform.image_std, per_image=cfg.normalize == "image")
    if not cfg.masks:
        model.roi_heads.mask_roi_pool = model.roi_heads.mask_head = model.roi_heads.mask_predictor = None
    _load_weights(model, cfg)
    return model


def _load_weights(model: MaskRCNN, cfg: ModelConfig) -> None:
    weights = cfg.weights
    if weights == "none":
        return
    if weights in ("coco", "imagenet"):
        url = WEIGHT_URLS.get((cfg.backbone, weights))
        if url is None:
            raise UserError(f"no {weights} weights for model.backbone={cfg.backbone}; use imagenet or none")
        state = fetch_weights(url)
        if weights == "imagenet":
            target = model.backbone.body
            state = {k.removeprefix("features."): v for k, v in state.items()} \
                if cfg.backbone == "mobilenet_v3_fpn" else state
        else:
            target = model
            state = _shift_fpn_blocks(state, cfg.fpn_min_level - 2)
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"model.weights: {path} not found (use coco, imagenet, none or a file)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            state = {k.removeprefix("model."): v for k, v in state.items()}
        except Exception as exc:  # not a torch file, a damaged one, or not a mapping of tensors
            raise UserError(f"model.weights={path}: not a weights file torch can read ({type(exc).__name__}); use "
                            "coco, imagenet, none or a state_dict / checkpoint file") from None
        target = model
    own = target.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
              and not k.startswith(PREDICTOR_PREFIXES if weights == "coco" else ())}
    if not usable:
        raise UserError(f"model.weights={weights}: no tensor matches model.backbone={cfg.backbone}")
    target.load_state_dict(usable, strict=False)


def _shift_fpn_blocks(state: dict, dropped: int) -> dict:
    """Renumber a full-FPN state's FPN blocks for an FPN without its ``dropped`` finest levels (torchvision numbers
    them from the finest: COCO's block 1, for C3, is block 0 of an FPN that starts at P3); drop the others."""
    if not dropped:
        return state
    pattern = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.)(\d+)\.")
    shifted = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match is None:
            shifted[key] = value
        elif int(match[2]) >= dropped:
            shifted[f"{match[1]}{int(match[2]) - dropped}.{key[match.end():]}"] = value
    return shifted


@contextlib.contextmanager
def swapped(obj, **values):
    """Within the block, ``obj``'s attributes named in ``values`` hold those values; after it, what they held."""
    before = {name: getattr(obj, name) for name in values}
    for name, value in values.items():
        setattr(obj, name, value)
    try:
        yield obj
    finally:
        for name, value in before.items():
            setattr(obj, name, value)


@contextlib.contextmanager
def boxes_only(model: MaskRCNN):
    """Within the block, inference skips the mask branch (boxes and scores are all we report)."""
    with swapped(model.roi_heads, mask_roi_pool=None, mask_head=None, mask_predictor=None):
        yield model


def head_parameters(model: MaskRCNN) -> list[nn.Parameter]:
    """Return the parameters the seed's "heads" stage trains: FPN, RPN and RoI heads."""
    return [p for name, p in model.named_parameters() if not name.startswith("backbone.body.")]
