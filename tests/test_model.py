
import copy
from dataclasses import replace

import pytest
import torch

from pneumodet.config import ModelConfig
from pneumodet.errors import UserError
from pneumodet.model import CANDIDATE_NMS_IOU, CANDIDATES_PER_IMAGE, build_model, head_parameters

SIZE = 64


def _batch():
    images = [torch.rand(1, SIZE, SIZE), torch.rand(1, SIZE, SIZE)]
    masks = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    masks[0, 10:40, 5:30] = 1
    targets = [{"boxes": torch.tensor([[5.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8)}]  # a negative image
    return images, targets


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "mobilenet_v3_fpn", "resnet50_fpn", "resnet50_fpn_v2"])
def test_every_backbone_trains_and_detects(backbone):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, weights="none", frozen_bn=False, min_score=0.0)
    model = build_model(cfg, SIZE)
    model.train()
    losses = model(*_batch())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections = model(_batch()[0])
    assert len(detections) == 2
    for det in detections:
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= CANDIDATES_PER_IMAGE
        assert (det["labels"] == 1).all()
        assert det["boxes"].min() >= 0 and det["boxes"].max() <= SIZE


def test_tiny_depth_adds_convs_and_keeps_depth_1_loadable():
    """depth 1 is the network earlier runs saved (same weight names); deeper stages add stride-1 convs."""
    base = build_model(ModelConfig(backbone="tiny_fpn", weights="none", frozen_bn=False), SIZE)
    deep = build_model(ModelConfig(backbone="tiny_fpn", weights="none", frozen_bn=False, tiny_depth=3), SIZE)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in model.backbone.body.modules()) for model in (base, deep)]
    assert convs == [2 + 1 + 2 * 3, 2 + 3 + 4 * 3]
    assert "backbone.body.layer1.0.0.weight" in base.state_dict()
    assert "backbone.body.layer2.1.0.weight" in base.state_dict()
    assert "backbone.body.layer2.2.0.weight" not in base.state_dict()
    assert "backbone.body.layer2.3.0.weight" in deep.state_dict()
    deep.train()
    losses = deep(*_batch())
    assert all(torch.isfinite(v) for v in losses.values())


def test_speed_settings_reach_torchvision():
    cfg = ModelConfig(backbone="resnet18_fpn", weights="none", rois_per_image=16, rpn_post_nms_train=123,
                      rpn_post_nms_test=45, masks=False)
    model = build_model(cfg, 96)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert model.rpn._post_nms_top_n == {"training": 123, "testing": 45}
    # candidates, not answers: post-processing (predict.*) applies NMS and max boxes the same way everywhere
    assert model.roi_heads.detections_per_img == CANDIDATES_PER_IMAGE
    assert model.roi_heads.nms_thresh == CANDIDATE_NMS_IOU
    assert not model.roi_heads.has_mask()
    assert model.transform.min_size == (96,) and model.transform.max_size == 96


def test_cache_sized_images_are_not_resized_again():
    model = build_model(ModelConfig(backbone="resnet18_fpn", weights="none"), SIZE)
    image = torch.rand(1, SIZE, SIZE)
    same, _ = model.transform.resize(image, None)
    assert same is image
    other, _ = model.transform.resize(torch.rand(1, 32, 48), None)
    assert max(other.shape[-2:]) == SIZE


@pytest.mark.parametrize("normalize", ["fixed", "image"])
def test_per_image_normalisation_ignores_exposure_and_contrast(normalize):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny_fpn", weights="none", frozen_bn=False, min_score=0.0,
                                    normalize=normalize), SIZE).eval()
    image = torch.rand(1, SIZE, SIZE) * 0.5 + 0.25  # grey, as the cache holds it
    darker = 0.6 * image + 0.05  # another exposure and contrast of the same film
    with torch.no_grad():
        a, b = model.transform([image, darker])[0].tensors
        model([image, darker])  # the backbone gets the 3 channels it takes
    assert a.shape == (3, SIZE, SIZE)
    if normalize == "image":
        assert torch.allclose(a, b, atol=1e-4)
        assert abs(float(a.mean())) < 1e-4 and abs(float(a.std()) - 1) < 1e-3
    else:  # ImageNet's fixed mean and std: what pretrained weights expect, so exposure shows through
        assert not torch.allclose(a, b, atol=0.1)
        assert torch.allclose(a[0], (image[0] - 0.485) / 0.229, atol=1e-5)


def test_weights_from_a_file(tmp_path):
    cfg = ModelConfig(backbone="resnet18_fpn", weights="none")
    torch.manual_seed(1)
    source = build_model(cfg, SIZE)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.ckpt")
    torch.manual_seed(2)
    loaded = build_model(ModelConfig(backbone="resnet18_fpn", weights=str(tmp_path / "w.ckpt")), SIZE)
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="not found"):
        build_model(ModelConfig(backbone="resnet18_fpn", weights=str(tmp_path / "nope.pth")), SIZE)


def test_offline_download_fails_fast_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("pneumodet.network.can_reach", lambda *a, **k: False)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download while offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(UserError) as info:
        build_model(ModelConfig(backbone="resnet50_fpn", weights="coco"), SIZE)
    message = str(info.value)
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in message and str(tmp_path) in message
    with pytest.raises(UserError, match="no coco weights"):
        build_model(ModelConfig(backbone="resnet18_fpn", weights="coco"), SIZE)


def _coco_in_hub_cache(tmp_path, monkeypatch, seed: int):
    """Put a random COCO-shaped Mask R-CNN state_dict where torch.hub looks (TORCH_HOME=tmp_path); return the model."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(seed)
    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(coco.state_dict(), tmp_path / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    return coco


def test_coco_weights_from_the_hub_cache_replace_the_predictors(tmp_path, monkeypatch):
    """A COCO-shaped state_dict placed where torch.hub looks is loaded; the 91-class predictors are not."""
    coco = _coco_in_hub_cache(tmp_path, monkeypatch, seed=3)
    model = build_model(ModelConfig(backbone="resnet50_fpn", weights="coco"), SIZE)
    ours, theirs = model.state_dict(), coco.state_dict()
    assert torch.equal(ours["backbone.body.layer1.0.conv1.weight"], theirs["backbone.body.layer1.0.conv1.weight"])
    assert torch.equal(ours["rpn.head.conv.0.0.weight"], theirs["rpn.head.conv.0.0.weight"])
    assert ours["roi_heads.box_predictor.cls_score.weight"].shape == (2, 1024)
    assert ours["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 2


@pytest.mark.parametrize("backbone", ["tiny_fpn", "resnet18_fpn"])
def test_an_fpn_from_p3_drops_the_stride_4_level(backbone):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, weights="none", frozen_bn=False, min_score=0.0, gate=True)
    full = build_model(cfg, SIZE)
    p3 = build_model(replace(cfg, fpn_min_level=3, anchor_sizes=(32, 64, 128, 256)), SIZE)
    image = torch.rand(1, 3, SIZE, SIZE)
    strides = [[SIZE // f.shape[-1] for f in model.backbone(image).values()] for model in (full, p3)]
    assert strides == [[4, 8, 16, 32, 64], [8, 16, 32, 64]]
    assert p3.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,))
    assert p3.gate.levels == full.gate.levels == 4  # the gate sees P3-P6 either way
    p3.train()
    losses = p3(*_batch())
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_gate" in losses
    sum(losses.values()).backward()
    p3.eval()
    with torch.no_grad():
        assert len(p3(_batch()[0])) == 2


def test_coco_weights_fill_an_fpn_from_p3_level_by_level(tmp_path, monkeypatch):
    """torchvision numbers the FPN's blocks from its finest level: COCO's block k + 1 is block k without P2."""
    coco = _coco_in_hub_cache(tmp_path, monkeypatch, seed=4)
    model = build_model(ModelConfig(backbone="resnet50_fpn", weights="coco", fpn_min_level=3,
                                    anchor_sizes=(32, 64, 128, 256)), SIZE)
    ours, theirs = model.state_dict(), coco.state_dict()
    for kind in ("inner", "layer"):
        for level in range(3):  # P3, P4, P5
            key = f"backbone.fpn.{kind}_blocks.{level}.0.weight"
            assert torch.equal(ours[key], theirs[f"backbone.fpn.{kind}_blocks.{level + 1}.0.weight"]), key
        assert f"backbone.fpn.{kind}_blocks.3.0.weight" not in ours
    assert torch.equal(ours["backbone.body.layer2.0.conv1.weight"], theirs["backbone.body.layer2.0.conv1.weight"])
    assert torch.equal(ours["rpn.head.conv.0.0.weight"], theirs["rpn.head.conv.0.0.weight"])


def test_heads_are_everything_but_the_backbone_body():
    model = build_model(ModelConfig(backbone="resnet18_fpn", weights="none"), SIZE)
    heads = {id(p) for p in head_parameters(model)}
    named = dict(model.named_parameters())
    assert id(named["backbone.fpn.inner_blocks.0.0.weight"]) in heads
    assert id(named["roi_heads.box_predictor.cls_score.weight"]) in heads
    assert id(named["backbone.body.conv1.weight"]) not in heads


@pytest.mark.parametrize("backbone", ["tiny_fpn", "mobilenet_v3_fpn"])
def test_the_gate_learns_which_images_hold_an_opacity(backbone):
    """The gate is trained on positives and negatives alike, through the shared backbone, and learns."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, weights="none", frozen_bn=False, gate=True,
                                    gate_detach=False), SIZE)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert "loss_gate" in losses and torch.isfinite(losses["loss_gate"])
    losses["loss_gate"].backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad and p.ndim == 4]
    assert grads[0] is not None and float(grads[0].abs().sum()) > 0  # multi-task: the gate trains the backbone
    detached = build_model(ModelConfig(backbone=backbone, weights="none", frozen_bn=False, gate=True), SIZE)
    detached.train()
    detached(images, targets)["loss_gate"].backward()
    assert all(p.grad is None for p in detached.backbone.parameters())  # default: the detector is left alone
    assert detached.gate.fc.weight.grad.abs().sum() > 0
    if backbone != "tiny_fpn":
        return
    model.zero_grad()
    # the positive holds a bright square, the negative none: a few steps on the gate loss separate them
    images = [torch.zeros(1, SIZE, SIZE), torch.zeros(1, SIZE, SIZE)]
    images[0][0, 10:40, 5:30] = 1.0
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for module in model.modules():  # BatchNorm statistics of two images say nothing: keep them fixed
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    for _ in range(30):
        optimizer.zero_grad()
        model(images, targets)["loss_gate"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        positive, negative = (float(d["gate"]) for d in model(images))
    assert 0 <= negative < 0.5 < positive <= 1


def test_without_a_gate_the_model_is_torchvisions():
    model = build_model(ModelConfig(backbone="tiny_fpn", weights="none"), SIZE)
    assert model.gate is None
    model.train()
    assert "loss_gate" not in model(*_batch())
    model.eval()
    with torch.no_grad():
        assert all("gate" not in d for d in model(_batch()[0]))


def test_a_separate_densenet_gate_trains_beside_the_detector():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tiny_fpn", weights="none", gate=True, gate_backbone="densenet121")
    model = build_model(cfg, SIZE)
    model.train()
    losses = model(*_batch())
    assert torch.isfinite(losses["loss_gate"])
    losses["loss_gate"].backward()
    assert model.gate.features.conv0.weight.grad.abs().sum() > 0
    assert model.gate.features.conv0.in_channels == 1  # radiographs have one channel
    model.eval()
    with torch.no_grad():
        assert all(0 <= float(d["gate"]) <= 1 for d in model(_batch()[0]))


def test_xrv_gate_weights_fail_in_one_line_without_the_extra_or_offline(monkeypatch):
    import builtins
    import sys
    import types

    real_import = builtins.__import__

    def no_xrv(name, *args, **kwargs):
        if name == "torchxrayvision":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    cfg = ModelConfig(backbone="tiny_fpn", weights="none", gate=True, gate_backbone="densenet121", gate_weights="xrv")
    monkeypatch.setattr(builtins, "__import__", no_xrv)
    with pytest.raises(UserError, match=r"pip install 'pneumodet\[xrv\]'"):
        build_model(cfg, SIZE)
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.setitem(sys.modules, "torchxrayvision", types.ModuleType("torchxrayvision"))
    monkeypatch.setattr("pneumodet.network.can_reach", lambda *a, **k: False)
    monkeypatch.setenv("HOME", "/nonexistent")
    with pytest.raises(UserError, match="offline"):
        build_model(cfg, SIZE)


@pytest.mark.parametrize("backbone", ["resnet50_fpn", "resnet18_fpn", "mobilenet_v3_fpn"])
def test_frozen_batchnorm_folded_into_its_convolution_computes_the_same(backbone):
    from torchvision.ops.misc import FrozenBatchNorm2d

    from pneumodet.folding import FoldedConv2d, FoldedFrozenBatchNorm2d

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, weights="none", trainable_layers=5), SIZE)
    folded = [m for m in model.backbone.modules() if isinstance(m, FoldedFrozenBatchNorm2d)]
    assert folded and not [m for m in model.modules() if type(m) is FrozenBatchNorm2d]
    for bn in folded:  # statistics a trained network would hold, not the identity a new one does
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(model)
    for module in reference.modules():  # torchvision's modules again: a convolution, then a frozen BatchNorm
        if isinstance(module, FoldedConv2d):
            module.__class__ = torch.nn.Conv2d
        elif isinstance(module, FoldedFrozenBatchNorm2d):
            module.__class__ = FrozenBatchNorm2d
    assert reference.state_dict().keys() == model.state_dict().keys()
    images = torch.rand(2, 3, SIZE, SIZE)
    outputs = [net.backbone(images) for net in (model, reference)]
    for level, value in outputs[1].items():
        torch.testing.assert_close(outputs[0][level], value, atol=1e-4, rtol=1e-4)
    for out in outputs:
        sum(v.square().sum() for v in out.values()).backward()
    convs = [(a, b) for a, b in zip(model.backbone.modules(), reference.backbone.modules(), strict=True)
             if isinstance(a, FoldedConv2d) and a.weight.requires_grad]
    assert len(convs) >= 20
    for mine, theirs in convs:  # to float rounding, against the largest element of each gradient
        scale = theirs.weight.grad.abs().max()
        torch.testing.assert_close(mine.weight.grad / scale, theirs.weight.grad / scale, atol=1e-4, rtol=0)
