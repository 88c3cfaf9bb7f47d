import torch

from pneumodet.training.data import DetectionDataModule
from tests.conftest import tiny_config


def _positive(datamodule, index) -> bool:
    return len(datamodule.train_set.boxes_orig_xywh(index)) > 0


def test_positive_share_draws_that_share_of_images_with_an_opacity(tiny_cache):
    natural = DetectionDataModule(tiny_cache, tiny_config())
    positives = [_positive(natural, i) for i in range(len(natural.train_set))]
    assert 0 < sum(positives) < len(positives)  # the fixture holds both kinds
    assert natural.positive_sampler() is None  # off: each image once per epoch, as before
    for share in (0.5, 0.9, 1.0):
        datamodule = DetectionDataModule(tiny_cache, tiny_config(f"data.positive_share={share}"))
        sampler = datamodule.positive_sampler()
        assert len(sampler) == len(positives)  # an epoch is as many draws as images
        torch.manual_seed(0)
        drawn = [i for _ in range(200) for i in sampler]
        share_drawn = sum(positives[i] for i in drawn) / len(drawn)
        assert abs(share_drawn - share) < 0.03, (share, share_drawn)
        loader_sampler = datamodule.train_dataloader().sampler  # the loader draws through such a sampler
        assert isinstance(loader_sampler, type(sampler)) and torch.equal(loader_sampler.weights, sampler.weights)
