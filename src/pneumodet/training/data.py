"""``DetectionDataModule``: train/val loaders over the cache."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler

from pneumodet.config import RunConfig
from pneumodet.data.dataset import PneumoniaDataset, collate, read_split
from pneumodet.data.transforms import train_transforms
from pneumodet.errors import UserError


class DetectionDataModule(L.LightningDataModule):
    def __init__(self, cache_root: str | Path, config: RunConfig, split_table: pd.DataFrame | None = None):
        """``split_table``: the (patient_id, split) table to train on; default the cache's split.csv."""
        super().__init__()
        self.root, self.config = Path(cache_root), config
        self.split_table = read_split(self.root / "split.csv") if split_table is None else split_table
        data = config.data
        self.train_set = PneumoniaDataset(self.root, data.image_size, "train", mask_shape=data.mask_shape,
                                          transforms=train_transforms(config.augment), split_table=self.split_table)
        self.val_set = PneumoniaDataset(self.root, data.image_size, "val", mask_shape=data.mask_shape,
                                        split_table=self.split_table)
        if data.train_limit:
            self.train_set = Subset(self.train_set, range(min(data.train_limit, len(self.train_set))))
        if data.val_limit:
            self.val_set = Subset(self.val_set, range(min(data.val_limit, len(self.val_set))))
        if len(self.train_set) == 0:
            raise UserError(f"{self.root}/split.csv: no training images")
        if len(self.val_set) == 0:
            raise UserError(f"{self.root}/split.csv: no validation images; prepare with --val-fraction > 0")

    def _loader(self, dataset, shuffle: bool, sampler=None) -> DataLoader:
        workers = self.config.data.num_workers
        # val in order, with a generator of its own: starting its iterator draws no number from the global one,
        # so training draws the same numbers however often it validates
        generator = None if shuffle else torch.Generator().manual_seed(0)
        return DataLoader(dataset, batch_size=self.config.train.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0,
                          drop_last=False, generator=generator)

    def train_boxes_wh(self) -> np.ndarray:
        """Return the (N, 2) widths and heights of the training images' boxes, in the model's pixels."""
        base, indices = self._base_and_indices()
        boxes = [base.boxes_cache_xyxy(i) for i in indices]
        xyxy = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        return xyxy[:, 2:] - xyxy[:, :2]

    def _base_and_indices(self):
        dataset = self.train_set
        return (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, range(len(dataset)))

    def positive_sampler(self) -> WeightedRandomSampler | None:
        """Return a sampler that draws ``data.positive_share`` positives (as many draws per epoch as images), or
        None when the setting is off or the training images are all of one kind."""
        share = self.config.data.positive_share
        if not share:  # off: no need to look at any image's boxes
            return None
        base, indices = self._base_and_indices()
        positive = torch.tensor([len(base.boxes_orig_xywh(i)) > 0 for i in indices])
        n_pos = int(positive.sum())
        if n_pos in (0, len(positive)):
            return None
        weights = torch.where(positive, share / n_pos, (1 - share) / (len(positive) - n_pos)).double()
        return WeightedRandomSampler(weights, num_samples=len(positive), replacement=True)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, sampler=self.positive_sampler())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
