"""Augmentation with torchvision.transforms.v2 functionals: random ops on (image, target) pairs.

Each ``Rand*`` op draws its parameters from torch's RNG (seeded per worker by the DataLoader),
applies them to the image, boxes and masks together, and remembers what it did in ``last`` — the
augmentation gallery titles each panel with that, not with the op's name.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from pneumodet.config import AugmentConfig

MIN_BOX_PX = 2.0  # a box narrower or shorter than this after a transform is dropped with its mask
MIN_VISIBLE = 0.25  # ... and so is a box that kept less than this share of its area


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


class RandAffine:
    """Scale, translate, rotate and shear together (imgaug's Affine, the seed's ranges by default)."""

    def __init__(self, scale=(0.98, 1.04), translate=(0.02, 0.04), rotate_deg=2.0, shear_deg=1.0):
        self.scale, self.translate, self.rotate, self.shear = scale, translate, rotate_deg, shear_deg
        self.last = ""

    def sample(self, height: int, width: int) -> dict:
        return {"angle": _uniform(-self.rotate, self.rotate),
                "translate": [round(_uniform(-self.translate[0], self.translate[0]) * width),
                              round(_uniform(-self.translate[1], self.translate[1]) * height)],
                "scale": _uniform(*self.scale),
                "shear": [_uniform(-self.shear, self.shear), _uniform(-self.shear, self.shear)]}

    def apply(self, image, target, p: dict):
        self.last = describe_affine(p)
        height, width = image.shape[-2:]
        image = F.affine(image, **p, interpolation=F.InterpolationMode.BILINEAR)
        if len(target["boxes"]):
            original_area = _area(target["boxes"])
            boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
            boxes = F.affine(boxes, **p)
            masks = F.affine(tv_tensors.Mask(target["masks"]), **p)
            target = _keep_visible({**target, "boxes": boxes.as_subclass(torch.Tensor),
                                    "masks": masks.as_subclass(torch.Tensor)}, original_area)
        return image, target

    def __call__(self, image, target):
        return self.apply(image, target, self.sample(*image.shape[-2:]))

    def ends(self) -> list:
        """Return scale, translate, rotate and shear each on its own at both ends of its range (for the
        augmentation gallery)."""
        (low, high), (tx, ty), r, s = self.scale, self.translate, self.rotate, self.shear
        return [FixedAffine(scale=low), FixedAffine(scale=high), FixedAffine(translate=(-tx, -ty)),
                FixedAffine(translate=(tx, ty)), FixedAffine(angle=-r), FixedAffine(angle=r),
                FixedAffine(shear=(-s, -s)), FixedAffine(shear=(s, s))]


class FixedAffine(RandAffine):
    """One affine with given parameters (``translate`` as fractions of the width and height): a gallery panel."""

    def __init__(self, scale: float = 1.0, translate=(0.0, 0.0), angle: float = 0.0, shear=(0.0, 0.0)):
        super().__init__()
        self.fixed = {"scale": scale, "translate": translate, "angle": angle, "shear": list(shear)}

    def sample(self, height: int, width: int) -> dict:
        tx, ty = self.fixed["translate"]
        return {**self.fixed, "translate": [round(tx * width), round(ty * height)]}


def describe_affine(p: dict) -> str:
    """Return what an affine did, naming only the parts that did something."""
    parts = []
    if p["scale"] != 1.0:
        parts.append(f"scale {p['scale']:.3f}")
    if any(p["translate"]):
        parts.append(f"translate ({p['translate'][0]:+d}, {p['translate'][1]:+d}) px")
    if p["angle"]:
        parts.append(f"rotate {p['angle']:+.2f}°")
    if any(p["shear"]):
        parts.append(f"shear ({p['shear'][0]:+.2f}°, {p['shear'][1]:+.2f}°)")
    return "affine: " + (", ".join(parts) or "identity")


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _keep_visible(target: dict, original_area: torch.Tensor) -> dict:
    boxes = target["boxes"]
    wide = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_PX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_PX)
    keep = wide & (_area(boxes) >= MIN_VISIBLE * original_area)
    if keep.all():
        return target
    return {**target, "boxes": boxes[keep], "labels": target["labels"][keep], "masks": target["masks"][keep]}


class RandHFlip:
    def __init__(self, p: float = 0.5):
        self.p, self.last = p, ""

    def ends(self) -> list:
        """Return this op forced to apply (for the augmentation gallery)."""
        return [RandHFlip(1.0)]

    def __call__(self, image, target):
        if _uniform(0, 1) >= self.p:
            self.last = "no flip"
            return image, target
        self.last = "horizontal flip"
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


class RandBrightnessContrast:
    """Brightness and contrast factors, then ``pixel ** gamma``, each drawn from its range (gamma (1, 1): none)."""

    def __init__(self, brightness=(0.9, 1.1), contrast=(0.9, 1.1), gamma=(1.0, 1.0)):
        self.brightness, self.contrast, self.gamma, self.last = brightness, contrast, tuple(gamma), ""

    def ends(self) -> list:
        """Return the lowest and highest brightness, contrast and (when on) gamma, each alone."""
        ops = []
        for name in ("brightness", "contrast", "gamma"):
            low, high = getattr(self, name)
            if (low, high) != (1.0, 1.0):
                ops += [RandBrightnessContrast(**{"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), name: (v, v)})
                        for v in (low, high)]
        return ops

    def __call__(self, image, target):
        b, c = _uniform(*self.brightness), _uniform(*self.contrast)
        image = F.adjust_contrast(F.adjust_brightness(image, b), c).clamp_(0, 1)
        self.last = f"brightness x{b:.2f}, contrast x{c:.2f}"
        if self.gamma != (1.0, 1.0):  # drawn only when on, so runs without it keep their random stream
            g = _uniform(*self.gamma)
            self.last += f", gamma {g:.2f}"
            image = image.pow_(g)
        return image, target


class RandBlurOrSharpen:
    """With probability ``p``: a Gaussian blur or a sharpen (``mode`` either: chosen evenly)."""

    def __init__(self, blur_sigma=(0.3, 1.0), sharpen=(1.2, 2.0), p: float = 0.5, mode: str = "either"):
        self.blur_sigma, self.sharpen, self.p, self.mode, self.last = blur_sigma, sharpen, p, mode, ""

    def ends(self) -> list:
        """Return the weakest and strongest blur and sharpen, each forced to apply."""
        return [RandBlurOrSharpen((sigma, sigma), self.sharpen, 1.0, "blur") for sigma in self.blur_sigma] + \
            [RandBlurOrSharpen(self.blur_sigma, (factor, factor), 1.0, "sharpen") for factor in self.sharpen]

    def __call__(self, image, target):
        if _uniform(0, 1) >= self.p:
            self.last = "no blur or sharpen"
            return image, target
        blur = self.mode == "blur" or (self.mode == "either" and _uniform(0, 1) < 0.5)
        if blur:
            sigma = _uniform(*self.blur_sigma)
            self.last = f"gaussian blur sigma {sigma:.2f} px"
            kernel = 2 * max(1, round(3 * sigma)) + 1
            return F.gaussian_blur(image, [kernel, kernel], [sigma, sigma]), target
        factor = _uniform(*self.sharpen)
        self.last = f"sharpen x{factor:.2f}"
        return F.adjust_sharpness(image, factor).clamp_(0, 1), target


class Compose:
    def __init__(self, ops: list):
        self.ops = ops

    @property
    def last(self) -> str:
        return "; ".join(op.last for op in self.ops)

    def __call__(self, image, target):
        for op in self.ops:
            image, target = op(image, target)
        return image, target


def train_ops(cfg: AugmentConfig) -> list:
    """Return the training augmentation ops for ``cfg``, in order (empty when disabled)."""
    if not cfg.enabled:
        return []
    ops = [RandAffine(cfg.scale, (cfg.translate_x, cfg.translate_y), cfg.rotate_deg, cfg.shear_deg),
           RandBrightnessContrast(cfg.brightness, cfg.contrast, cfg.gamma),
           RandBlurOrSharpen(cfg.blur_sigma, cfg.sharpen, cfg.blur_or_sharpen_p)]
    if cfg.hflip_p > 0:
        ops.append(RandHFlip(cfg.hflip_p))
    return ops


def train_transforms(cfg: AugmentConfig) -> Compose | None:
    """Return the training augmentation for ``cfg`` (None when disabled). Evaluation uses none."""
    ops = train_ops(cfg)
    return Compose(ops) if ops else None


def gallery_ops(cfg: AugmentConfig) -> list:
    """Return each effect of the training ops on its own at both ends of its range, forced to apply: what
    augmentations.png shows (nine random draws near the middle of small ranges looked alike).

    Built from :func:`train_ops`, so an op added there appears here (each op says how with ``ends``).
    """
    return [end for op in train_ops(cfg) for end in op.ends()]
