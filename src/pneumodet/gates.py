"""Image-level gates: does an image hold any opacity? The winners' classifier gating, as a head on the detector's
features (:class:`ImageGate`) or as a separate classifier (:class:`ClassifierGate`). Each takes what its
``takes_images`` says (the model's input images, or its FPN features) and returns a logit per image.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from pneumodet.errors import UserError
from pneumodet.weights import fetch_weights


class ImageGate(nn.Module):
    """Image-level classifier on the detector's FPN features: does the image hold any opacity?

    The winners' gate, as a head on the shared backbone (one forward pass): a 3x3 conv on each coarse FPN
    level (the last ``levels``: P3 and up), global mean and max pooling, one linear layer; returns a logit per image.
    With ``detach`` its loss stops at the features: the detector trains exactly as it would without a gate.
    """

    takes_images = False  # it takes the FPN features

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

    takes_images = True  # its own network, on the images as given

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
