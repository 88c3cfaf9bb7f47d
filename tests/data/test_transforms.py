import torch

from pneumodet.boxes import boxes_to_masks
from pneumodet.config import AugmentConfig
from pneumodet.data.transforms import (
    RandAffine,
    RandBlurOrSharpen,
    RandBrightnessContrast,
    RandHFlip,
    train_transforms,
)

SIZE = 64


def _sample(boxes):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    image = torch.zeros(1, SIZE, SIZE)
    for x1, y1, x2, y2 in boxes.int().tolist():
        image[0, y1:y2, x1:x2] = 1.0
    target = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64),
              "masks": torch.from_numpy(boxes_to_masks(boxes.numpy(), SIZE, SIZE)), "image_id": 0}
    return image, target


def _shift(dx, dy):
    return {"angle": 0.0, "translate": [dx, dy], "scale": 1.0, "shear": [0.0, 0.0]}


def test_translation_moves_image_boxes_and_masks_together():
    image, target = _sample([[10, 10, 20, 30]])
    op = RandAffine()
    moved, new = op.apply(image, target, _shift(5, -3))
    assert new["boxes"].tolist() == [[15, 7, 25, 27]]
    assert new["masks"][0].nonzero().min(0).values.tolist() == [7, 15]
    assert torch.equal(moved[0] > 0.5, new["masks"][0].bool())
    assert "translate (+5, -3) px" in op.last


def test_box_pushed_out_of_the_image_is_dropped_with_its_mask():
    image, target = _sample([[2, 10, 12, 20], [40, 40, 60, 60]])
    _, new = RandAffine().apply(image, target, _shift(-11, 0))  # first box: 1 px left of 10 px
    assert new["boxes"].tolist() == [[29, 40, 49, 60]]
    assert new["labels"].tolist() == [1] and new["masks"].shape == (1, SIZE, SIZE)


def test_rotation_keeps_the_box_around_the_object():
    image, target = _sample([[20, 20, 40, 30]])
    rotated, new = RandAffine().apply(image, target, {**_shift(0, 0), "angle": 10.0})
    ys, xs = (rotated[0] > 0.5).nonzero().T
    x1, y1, x2, y2 = new["boxes"][0].tolist()
    assert x1 <= xs.min() + 1 and xs.max() <= x2 and y1 <= ys.min() + 1 and ys.max() <= y2


def test_horizontal_flip():
    image, target = _sample([[10, 10, 20, 30]])
    flipped, new = RandHFlip(p=1.0)(image, target)
    assert new["boxes"].tolist() == [[44, 10, 54, 30]]
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(new["masks"], target["masks"].flip(-1))


def test_intensity_ops_leave_the_target_alone():
    image, target = _sample([[10, 10, 20, 30]])
    image = image * 0.5 + 0.25
    for op in (RandBrightnessContrast((1.2, 1.2), (1.0, 1.0)), RandBlurOrSharpen(p=1.0, mode="blur"),
               RandBlurOrSharpen(p=1.0, mode="sharpen")):
        out, new = op(image.clone(), target)
        assert new is target
        assert not torch.equal(out, image) and out.min() >= 0 and out.max() <= 1
    brighter = RandBrightnessContrast((1.2, 1.2), (1.0, 1.0))
    assert torch.allclose(brighter(image, target)[0], (image * 1.2).clamp(0, 1))
    assert brighter.last == "brightness x1.20, contrast x1.00"


def test_gamma_is_off_by_default_and_bends_the_grey_levels_when_on():
    image, target = _sample([[10, 10, 20, 30]])
    image = image * 0.5 + 0.25
    plain = RandBrightnessContrast((1.0, 1.0), (1.0, 1.0))
    torch.manual_seed(0)
    out = plain(image.clone(), target)[0]
    after_plain = torch.rand(())
    torch.manual_seed(0)
    torch.rand(2)  # brightness and contrast: off, gamma draws nothing, so older runs keep their random stream
    assert torch.equal(out, image) and "gamma" not in plain.last and torch.equal(after_plain, torch.rand(()))
    squared = RandBrightnessContrast((1.0, 1.0), (1.0, 1.0), (2.0, 2.0))
    out, new = squared(image.clone(), target)
    assert new is target and torch.allclose(out, image ** 2) and squared.last.endswith("gamma 2.00")
    # not a linear change of grey levels (on more than two of them): per-image normalisation cannot undo it
    ramp = torch.linspace(0.1, 0.9, 64).expand(1, 64, 64).clone()
    standardise = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    assert not torch.allclose(standardise(squared(ramp.clone(), target)[0]), standardise(ramp), atol=1e-2)


def test_pipeline_presets():
    assert train_transforms(AugmentConfig(enabled=False)) is None
    pipeline = train_transforms(AugmentConfig(hflip_p=0.5))
    assert [type(op).__name__ for op in pipeline.ops] == ["RandAffine", "RandBrightnessContrast",
                                                            "RandBlurOrSharpen", "RandHFlip"]
    torch.manual_seed(0)
    image, target = _sample([[20, 20, 40, 40]])
    out, new = pipeline(image, target)
    assert out.shape == image.shape and len(new["boxes"]) == 1
    assert pipeline.last.startswith("affine: scale")
