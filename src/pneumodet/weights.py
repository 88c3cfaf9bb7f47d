"""Pretrained weights: torchvision's COCO and ImageNet files (fetched into the torch.hub cache, failing in under a
second offline), the synthetic-pretrained weights pneumodet packages (``synth``: :mod:`pneumodet.pretrain`), and
a state_dict or checkpoint file from disk, loaded into a freshly built model."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN

from pneumodet.config import ModelConfig
from pneumodet.errors import UserError

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
#: predictor layers replaced for the two-class task (never loaded from COCO)
PREDICTOR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


#: ``model.weights: synth``: demo.yaml's model trained on 2,000 synthetic films of the variants recipes are chosen
#: on, by ``pneumodet pretrain --config demo`` (:mod:`pneumodet.pretrain`); how, in the .json beside it
SYNTH_WEIGHTS = Path(__file__).parent / "pretrained" / "synth-tiny_fpn-256.pt"


def synth_weights_file(backbone: str) -> Path:
    """Return the packaged synthetic-pretrained weights for ``backbone``, or a one-line UserError."""
    if backbone != "tiny_fpn" or not SYNTH_WEIGHTS.is_file():
        raise UserError(f"model.weights=synth: pneumodet packages synthetic-pretrained weights for tiny_fpn only "
                        f"(got model.backbone={backbone}); make them with pneumodet pretrain --config YOURS "
                        "--out FILE and set model.weights=FILE")
    return SYNTH_WEIGHTS


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


def load_weights(model: MaskRCNN, cfg: ModelConfig) -> None:
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
        if weights == "synth":
            weights = str(synth_weights_file(cfg.backbone))
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
