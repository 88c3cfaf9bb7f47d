"""Data-layer figures: synth and prepare throughput, decode cost, and cached-sample load time."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def run(n_images: int = 400) -> list[tuple[str, str]]:
    from pneumodet.data.dataset import PneumoniaDataset
    from pneumodet.data.prepare import prepare
    from pneumodet.data.synth import synthesize
    from pneumodet.io.dicom import read_dicom
    from pneumodet.io.layout import TRAIN_IMAGES, image_files

    cores = os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        start = time.perf_counter()
        synthesize(data, n_images, 0, seed=0, progress=False)
        rows.append((f"synth, 1024² JPEG DICOMs, {cores} cores", f"{n_images / (time.perf_counter() - start):.0f} images/s"))
        files = image_files(data / TRAIN_IMAGES)[0][:50]
        for f in files:  # warm the page cache
            f.read_bytes()
        start = time.perf_counter()
        for f in files:
            read_dicom(f)
        full = (time.perf_counter() - start) / len(files)
        start = time.perf_counter()
        for f in files:
            pixels = read_dicom(f).pixels
            Image.fromarray(pixels).resize((256, 256), Image.BILINEAR)
        full_resize = (time.perf_counter() - start) / len(files)
        start = time.perf_counter()
        for f in files:
            read_dicom(f, max_decode_size=256)
        reduced = (time.perf_counter() - start) / len(files)
        rows.append(("read_dicom 1024² JPEG, full decode (1 core)", f"{full * 1e3:.1f} ms"))
        rows.append(("full decode + PIL resize to 256 (1 core)", f"{full_resize * 1e3:.1f} ms"))
        rows.append(("reduced-scale decode to 256 (draft, 1 core)", f"{reduced * 1e3:.1f} ms"))
        for size in (256, 512):
            start = time.perf_counter()
            prepare(data, cache, size_px=size, progress=False)
            rate = n_images / (time.perf_counter() - start)
            rows.append((f"prepare {n_images} DICOMs → {size} px cache, {cores} cores", f"{rate:.0f} images/s"))
        start = time.perf_counter()
        prepare(data, cache, size_px=256, progress=False)
        rows.append(("prepare again (cache reused)", f"{time.perf_counter() - start:.2f} s"))
        dataset = PneumoniaDataset(cache, 256)
        order = np.random.default_rng(0).permutation(len(dataset))
        start = time.perf_counter()
        for i in order:
            dataset[int(i)]
        rows.append(("load one cached 256 px sample (random order)", f"{(time.perf_counter() - start) / len(order) * 1e3:.2f} ms"))
        rows += augmented_rows(data, cache, order)
    return rows


def augmented_rows(data: Path, cache: Path, order) -> list[tuple[str, str]]:
    """What one loader process spends per training sample with a shipped config's augmentation (one thread, as
    DataLoader workers run): a batch of B takes B times that over ``data.num_workers`` processes, to set beside
    the step's time (``pneumodet train`` prints the share the steps waited for data)."""
    import torch

    from pneumodet.config_files import load_config
    from pneumodet.data.dataset import PneumoniaDataset
    from pneumodet.data.prepare import prepare
    from pneumodet.data.transforms import train_transforms

    rows, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("demo", "rsna"):
            config = load_config(Path("configs") / f"{name}.yaml")
            size = config.data.image_size
            prepare(data, cache, size_px=size, progress=False)
            dataset = PneumoniaDataset(cache, size, transforms=train_transforms(config.augment),
                                       mask_shape=config.data.mask_shape)
            torch.manual_seed(0)
            start = time.perf_counter()
            for i in order:
                dataset[int(i)]
            per_sample = (time.perf_counter() - start) / len(order)
            rows.append((f"load and augment one cached {size} px sample, configs/{name}.yaml's augmentation (1 thread)",
                         f"{per_sample * 1e3:.1f} ms: {per_sample * config.train.batch_size * 1e3:.0f} ms per batch of "
                         f"{config.train.batch_size} on one worker, {config.data.num_workers} shipped"))
    finally:
        torch.set_num_threads(threads)
    return rows
