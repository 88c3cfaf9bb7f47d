"""The preprocessed cache: every image resized to ``size_px`` square uint8 in one memory-mapped array.

``CACHE/{subset}-{size}px/`` holds ``images.npy`` (N, size, size) uint8, ``images.csv`` (one row per
usable image: row, original size, per-axis scale, view, age, sex, class), ``boxes.csv`` (boxes in
original pixels, clipped) and ``meta.json`` (the preprocessing parameters and a fingerprint of the
source files). It is built in a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pneumodet.io.dicom import DicomError, read_dicom

CACHE_VERSION = 1
IMAGE_COLUMNS = ["patient_id", "row", "original_height", "original_width", "scale_x", "scale_y", "view",
                 "sex", "age", "photometric", "transfer_syntax", "label_class", "n_boxes"]
BOX_COLUMNS = ["patient_id", "x", "y", "width", "height"]


@dataclass(frozen=True)
class CacheParams:
    """What the cached pixels depend on; another value builds another cache."""

    size_px: int
    subset: str = "train"
    resample: str = "bilinear"
    version: int = CACHE_VERSION

    @property
    def name(self) -> str:
        return f"{self.subset}-{self.size_px}px"


def fingerprint(files: list[Path], extra: list[Path] = ()) -> str:
    """Return a hash of the file names, sizes and mtimes (and of the ``extra`` files' contents)."""
    digest = hashlib.sha1()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    for path in extra:
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()


def find_cache(root: str | Path, params: CacheParams, source: str | None = None) -> Path | None:
    """Return the complete cache folder for ``params`` (and ``source`` fingerprint if given), else None."""
    folder = Path(root) / params.name
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("params") != asdict(params) or (source is not None and meta.get("source") != source):
        return None
    return folder


def to_cache_size(pixels: np.ndarray, size_px: int) -> np.ndarray:
    """Return (H, W) uint8 pixels resized to the cache's square size (bilinear), as every cached image is."""
    if pixels.shape == (size_px, size_px):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size_px, size_px), Image.BILINEAR))


# Worker state: each process opens the output memmap once.
_WORKER: dict = {}


def _init_worker(images_path: str, size_px: int) -> None:
    _WORKER["array"] = np.load(images_path, mmap_mode="r+")
    _WORKER["size_px"] = size_px


def _cache_one(job: tuple[int, str]) -> dict:
    row, path = job
    size_px = _WORKER["size_px"]
    try:
        image = read_dicom(path, max_decode_size=size_px)
    except DicomError as exc:
        return {"row": row, "error": exc.reason, "file": path}
    pixels = image.pixels
    if pixels.std() < 1.0:
        return {"row": row, "error": f"blank image (all pixels about {int(pixels.mean())})", "file": path,
                "problem": "blank image"}
    _WORKER["array"][row] = to_cache_size(pixels, size_px)
    height, width = image.original_size
    return {"row": row, "patient_id": image.patient_id, "original_height": height, "original_width": width,
            "scale_x": size_px / width, "scale_y": size_px / height, "view": image.view_position,
            "sex": image.sex, "age": image.age, "photometric": image.photometric,
            "transfer_syntax": image.transfer_syntax}


def decode_into(images_path: Path, files: list[Path], size_px: int, workers: int | None = None,
                progress: bool = True) -> list[dict]:
    """Decode ``files`` into rows of the (len(files), size, size) array at ``images_path``.

    Returns one dict per file, in order: its metadata, or ``error`` (and ``file``) if unusable.
    """
    array = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8,
                                      shape=(len(files), size_px, size_px))
    del array
    workers = max(1, min(workers or os.cpu_count() or 1, len(files)))
    jobs = [(i, str(p)) for i, p in enumerate(files)]
    bar = tqdm(total=len(jobs), desc=f"prepare {size_px}px", unit="img", disable=not progress)
    results = []
    if workers == 1:
        _init_worker(str(images_path), size_px)
        for job in jobs:
            results.append(_cache_one(job))
            bar.update()
        _WORKER.clear()
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(images_path), size_px)) as pool:
            for result in pool.map(_cache_one, jobs, chunksize=32):
                results.append(result)
                bar.update()
    bar.close()
    return results


def commit(tmp_dir: Path, final_dir: Path, meta: dict) -> None:
    """Mark ``tmp_dir`` complete (meta.json written last) and move it to ``final_dir`` atomically."""
    tmp_meta = tmp_dir / ".meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
    tmp_meta.replace(tmp_dir / "meta.json")
    tmp_dir.chmod(0o755)  # mkdtemp makes it private
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".old-{final_dir.name}-{os.getpid()}")
        final_dir.rename(old)
    tmp_dir.rename(final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class Cache:
    """A complete cache opened for reading: the memory-mapped pixels and the tables."""

    folder: Path
    pixels: np.ndarray
    images: pd.DataFrame
    boxes: pd.DataFrame
    meta: dict

    @property
    def size_px(self) -> int:
        return int(self.meta["params"]["size_px"])


def open_cache(root: str | Path, size_px: int, subset: str = "train") -> Cache:
    """Return the cache of ``subset`` at ``size_px`` under ``root``; raise a UserError if there is none."""
    from pneumodet.errors import UserError

    root = Path(root)
    folder = find_cache(root, CacheParams(size_px=size_px, subset=subset))
    if folder is None:
        built = sorted(p.name for p in root.glob("*px") if (p / "meta.json").is_file()) if root.is_dir() else []
        hint = f" (found: {', '.join(built)})" if built else ""
        raise UserError(f"{root}: no complete {subset} cache at {size_px}px{hint}; "
                        f"run: pneumodet prepare DATA --out {root} --size {size_px}")
    images = pd.read_csv(folder / "images.csv", dtype={"patient_id": str})
    boxes = pd.read_csv(folder / "boxes.csv", dtype={"patient_id": str})
    return Cache(folder, np.load(folder / "images.npy", mmap_mode="r"), images, boxes,
                 json.loads((folder / "meta.json").read_text()))
