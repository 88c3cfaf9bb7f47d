"""The preprocessed cache: every image resized to ``size_px`` square uint8 in one memory-mapped array.

``CACHE/{subset}-{size}px/`` holds ``images.npy`` (N, size, size) uint8, ``images.csv`` (one row per
usable image: row, original size, per-axis scale, view, age, sex, class), ``boxes.csv`` (boxes in
original pixels, clipped) and ``meta.json`` (the preprocessing parameters and a fingerprint of the
source files). It is built in a hidden temporary folder (``.tmp-{name}-PID-*``), flushed to disk,
renamed to a versioned folder (``{name}@PID-TIME``), and published by atomically replacing the
symlink ``{name}`` with one that points at it: a reader, or a run killed at any instant, sees the old
complete cache or the new one, never a half-built one and never none. Versions no link points at, and
temporary folders of processes that are gone, are removed by the next prepare.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pneumodet.errors import RunFailure, UserError
from pneumodet.files import FULL_ERRNOS, free_space, fsync_path, output_error, pid_alive, remove_stale
from pneumodet.io.dicom import DicomError, DicomImage, read_dicom, read_dicom_bytes

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


def read_for_cache(source: str | Path | bytes, size_px: int, name: str | None = None) -> DicomImage:
    """Return the DICOM at ``source`` (a path, or the file's bytes called ``name``) decoded for a ``size_px``
    cache: JPEGs at the smallest reduced scale still >= size_px. prepare, predict and serve all read this way."""
    if isinstance(source, bytes | bytearray):
        return read_dicom_bytes(bytes(source), name or "upload.dcm", max_decode_size=size_px)
    return read_dicom(source, max_decode_size=size_px)


def to_cache_size(pixels: np.ndarray, size_px: int) -> np.ndarray:
    """Return (H, W) uint8 pixels resized to the cache's square size (bilinear), as every cached image is."""
    if pixels.shape == (size_px, size_px):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size_px, size_px), Image.BILINEAR))


# Worker state: each process opens the output memmap once.
_WORKER: dict = {}


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process get SIGKILL when its parent dies (Linux), so a killed prepare leaves none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _init_worker(images_path: str, size_px: int, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    _WORKER["array"] = np.load(images_path, mmap_mode="r+")
    _WORKER["size_px"] = size_px


def _cache_one(job: tuple[int, str]) -> dict:
    row, path = job
    size_px = _WORKER["size_px"]
    try:
        image = read_for_cache(path, size_px)
    except DicomError as exc:
        return {"row": row, "error": exc.reason, "file": path}
    except Exception as exc:  # never lose the whole cache to one file: report it and go on
        return {"row": row, "error": f"cannot read ({type(exc).__name__}: {exc})"[:200], "file": path}
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
    new_array(images_path, (len(files), size_px, size_px))  # the workers open it again
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
        try:
            with ProcessPoolExecutor(workers, initializer=_init_worker,
                                     initargs=(str(images_path), size_px, os.getpid())) as pool:
                for result in pool.map(_cache_one, jobs, chunksize=8):
                    results.append(result)
                    bar.update()
        except BrokenProcessPool:
            raise RunFailure(f"a prepare worker died while decoding into {images_path.parent} ({free_space(images_path)} "
                             "free there; out of memory?); run prepare again, with --workers 1 to see its error") from None
    bar.close()
    fsync_path(images_path)  # the workers' pages reach the disk before anything calls the cache complete
    return results


def new_array(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """Return a new uint8 .npy memory map of ``shape`` at ``path``, every block reserved (see :func:`reserve`); a
    full or read-only file system, even one without room for the header, is an OutputError naming ``path``."""
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise output_error(path, exc) from None
        raise
    reserve(path)
    return array


def reserve(path: Path) -> None:
    """Allocate every block of the file at ``path`` now, so that a full disk is an OutputError here rather than a
    SIGBUS in whichever process first writes a page of the memory map that has no block behind it."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise output_error(path, exc) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: write as before
            raise
    finally:
        os.close(fd)


def new_build_dir(root: Path, params: CacheParams) -> Path:
    """Return a new hidden folder under ``root`` to build a cache in (its name carries this process id)."""
    folder = root / f".tmp-{params.name}-{os.getpid()}-{time.time_ns()}"
    try:
        folder.mkdir()
    except OSError as exc:  # a full or read-only file system: the one line that names it
        raise output_error(folder, exc) from None
    return folder


def commit(tmp_dir: Path, final: Path, meta: dict) -> Path:
    """Publish the cache built in ``tmp_dir`` as ``final`` (a symlink to a versioned folder); return ``final``.

    Every file is fsynced and meta.json, which marks the cache complete, is written last; the one
    rename that replaces the link is the commit. The version the link pointed at before is removed.
    """
    for item in tmp_dir.iterdir():
        fsync_path(item)
    tmp_meta = tmp_dir / ".meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
    fsync_path(tmp_meta)
    tmp_meta.replace(tmp_dir / "meta.json")
    tmp_dir.chmod(0o755)
    version = final.with_name(f"{final.name}@{os.getpid()}-{time.time_ns()}")
    tmp_dir.rename(version)
    fsync_path(final.parent)
    if final.exists() and not final.is_symlink():  # written by a pneumodet before versioned caches
        shutil.rmtree(version, ignore_errors=True)
        raise UserError(f"{final}: a cache written by an older pneumodet (a folder, not a link to a version); remove "
                        "it and run pneumodet prepare again")
    previous = final.resolve() if final.is_symlink() else None
    link = final.with_name(f".tmp-{final.name}-link-{os.getpid()}")
    link.unlink(missing_ok=True)
    link.symlink_to(version.name)
    link.replace(final)  # the commit: one atomic rename
    fsync_path(final.parent)
    if previous is not None and previous != version.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    remove_stale(final.parent)
    return final


def clean_cache_root(root: Path) -> None:
    """Remove what dead prepare runs left under ``root``: temporary folders and unpublished versions."""
    remove_stale(root)
    published = {p.resolve() for p in root.iterdir() if p.is_symlink()}
    for entry in root.iterdir():
        name, _, owner = entry.name.partition("@")
        if not owner or entry.is_symlink() or entry.resolve() in published:
            continue
        pid = owner.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


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
