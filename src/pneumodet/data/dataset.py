"""``PneumoniaDataset``: the cache as (image, target) pairs in torchvision's detection contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pneumodet.boxes import boxes_to_masks, original_to_cache_xyxy, xywh_to_xyxy
from pneumodet.data.cache import Cache, open_cache
from pneumodet.errors import UserError

SPLITS = ("train", "val", "all")


def collate(batch):
    """Return (images, targets) tuples: detection models take lists, not stacked tensors."""
    return tuple(zip(*batch, strict=True))


def to_model_input(pixels_uint8) -> torch.Tensor:
    """Return (H, W) uint8 pixels as the model takes them: a float [1, H, W] tensor in [0, 1] (a copy)."""
    return torch.from_numpy(np.array(pixels_uint8, dtype=np.uint8)).unsqueeze(0).float().div_(255.0)


def read_split(path: str | Path) -> pd.DataFrame:
    """Return the (patient_id, split) table written by ``prepare``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: split file not found; run pneumodet prepare first")
    return pd.read_csv(path, dtype=str)


class PneumoniaDataset(Dataset):
    """Cached images of one split; negatives stay in with empty targets.

    Item ``i`` -> ``(image, target)``: image float [1, H, W] in [0, 1] (H = W = cache size);
    target {"boxes": float32 (N, 4) xyxy in cache pixels, "labels": int64 (N,) all 1,
    "masks": uint8 (N, H, W) made from the boxes, "image_id": int (the cache row)}.
    ``transforms(image, target) -> (image, target)`` runs last (augmentation). ``split_table``
    (patient_id, split) chooses the images of ``split``; default: the cache's ``split.csv``.
    """

    def __init__(self, root: str | Path, size_px: int, split: str = "all", *,
                 transforms: Callable | None = None, mask_shape: str = "rectangle", subset: str = "train",
                 cache: Cache | None = None, split_table: pd.DataFrame | None = None):
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        self.cache = cache or open_cache(root, size_px, subset)
        images = self.cache.images
        if split != "all":
            # a run passes the split it trained on; the cache's split.csv may have been rewritten since
            table = read_split(Path(root) / "split.csv") if split_table is None else split_table
            chosen = set(table.loc[table["split"] == split, "patient_id"])
            images = images[images["patient_id"].isin(chosen)]
        self.records = images.reset_index(drop=True)
        self.transforms = transforms
        self.mask_shape = mask_shape
        grouped = self.cache.boxes.groupby("patient_id")[["x", "y", "width", "height"]]
        self._boxes_xywh = {pid: g.to_numpy(dtype=np.float64) for pid, g in grouped}

    def __len__(self) -> int:
        return len(self.records)

    def boxes_orig_xywh(self, index: int) -> np.ndarray:
        """Return the (N, 4) xywh truth boxes of item ``index`` in the image's own pixels."""
        return self._boxes_xywh.get(self.records.at[index, "patient_id"], np.zeros((0, 4)))

    def boxes_cache_xyxy(self, index: int, record: pd.Series | None = None) -> np.ndarray:
        """Return the (N, 4) xyxy truth boxes of item ``index`` (its row ``record``) in cache pixels (what the
        model sees)."""
        record = self.records.iloc[index] if record is None else record
        original_size = (int(record["original_height"]), int(record["original_width"]))
        return original_to_cache_xyxy(xywh_to_xyxy(self.boxes_orig_xywh(index)), self.cache.size_px, original_size)

    def __getitem__(self, index: int):
        record = self.records.iloc[index]
        size = self.cache.size_px
        image = to_model_input(self.cache.pixels[int(record["row"])])
        boxes_cache_xyxy = self.boxes_cache_xyxy(index, record)
        target = {
            "boxes": torch.as_tensor(boxes_cache_xyxy, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(boxes_cache_xyxy), dtype=torch.int64),
            "masks": torch.from_numpy(boxes_to_masks(boxes_cache_xyxy, size, size, self.mask_shape)),
            "image_id": int(record["row"]),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
