import torch

from pneumodet.data.dataset import PneumoniaDataset
from pneumodet.data.prepare import prepare


def test_detection_contract_and_negatives_kept(synth_data, tmp_path):
    out = tmp_path / "cache"
    prepare(synth_data, out, size_px=64, progress=False, workers=1)
    train, val = PneumoniaDataset(out, 64, "train"), PneumoniaDataset(out, 64, "val")
    assert len(train) + len(val) == 30
    assert set(train.records["patient_id"]).isdisjoint(val.records["patient_id"])
    everything = PneumoniaDataset(out, 64)
    n_negative = 0
    for i in range(len(everything)):
        image, target = everything[i]
        assert image.dtype == torch.float32 and image.shape == (1, 64, 64)
        assert 0.0 <= image.min() and image.max() <= 1.0
        n = len(target["boxes"])
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64 and (target["labels"] == 1).all()
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 64, 64)
        assert isinstance(target["image_id"], int)
        n_negative += n == 0
    assert n_negative == (everything.records["n_boxes"] == 0).sum() > 0


def test_transforms_run_last(synth_data, tmp_path):
    out = tmp_path / "cache"
    prepare(synth_data, out, size_px=64, progress=False, workers=1)
    flipped = PneumoniaDataset(out, 64, transforms=lambda im, t: (im.flip(-1), t))
    plain = PneumoniaDataset(out, 64)
    assert torch.equal(flipped[0][0], plain[0][0].flip(-1))
