import numpy as np
import torch
from PIL import Image

from pneumodet.config import AugmentConfig
from pneumodet.data.transforms import gallery_ops, train_ops
from pneumodet.report.plots import plot_augmentations, plot_history
from pneumodet.runs import write_metrics


def test_loss_curves_and_val_map_are_drawn_from_metrics_csv(tmp_path):
    rows = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_rsna_map": 0.1 * e, "lr": 0.01}
            for e in (1, 2, 3)]
    write_metrics(tmp_path / "metrics.csv", rows)
    paths = plot_history(tmp_path / "metrics.csv", tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["loss_curves.png", "val_map.png"]
    for path in paths:
        assert Image.open(path).size[0] > 300


def test_the_gallery_shows_every_training_op_at_both_ends_of_its_range(tmp_path):
    config = AugmentConfig(hflip_p=0.5, scale=(0.8, 1.25), rotate_deg=10.0, brightness=(0.7, 1.3),
                           blur_sigma=(0.3, 1.5))
    ops = gallery_ops(config)
    kinds = [type(op).__name__ for op in ops]
    assert {type(op).__name__ for op in train_ops(config)} <= set(kinds) | {"RandAffine"}
    assert kinds.count("FixedAffine") == 8 and kinds.count("RandBlurOrSharpen") == 4 and "RandHFlip" in kinds
    assert kinds.count("RandBrightnessContrast") == 4  # brightness and contrast; gamma is off
    assert "RandHFlip" not in [type(op).__name__ for op in gallery_ops(AugmentConfig(hflip_p=0.0))]
    assert gallery_ops(AugmentConfig(enabled=False)) == []
    image = torch.rand(1, 64, 64)
    target = {"boxes": torch.tensor([[10.0, 10, 30, 40]]), "labels": torch.ones(1, dtype=torch.int64),
              "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}
    torch.manual_seed(0)
    out = plot_augmentations(image, target, ops, tmp_path / "augmentations.png")
    width, height = Image.open(out).size
    assert width > height  # 1 original + 17 panels: four rows of five
    titles = [op.last for op in ops]
    for end in ("scale 0.800", "scale 1.250", "rotate -10.00°", "rotate +10.00°", "brightness x0.70",
                "brightness x1.30", "gaussian blur sigma 0.30", "gaussian blur sigma 1.50", "horizontal flip"):
        assert any(end in t for t in titles), end  # the ends themselves, not draws between them
    assert not any(t.startswith("no ") for t in titles)  # every panel really applied its op
    assert np.isfinite(np.asarray(Image.open(out))).all()
