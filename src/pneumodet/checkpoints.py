"""Checkpoints in and out, and the trained model and images a run folder holds; without Lightning.

Checkpoints hold plain types only and load with ``torch.load(..., weights_only=True)``. A checkpoint is a zip
archive whose members carry a CRC-32 each, written with the file itself (so no manifest can fall out of step with
it): every member is checked against its CRC before the weights are used, and a damaged file is a one-line error
naming it (torch.load does not check them).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch

from pneumodet import __version__
from pneumodet.config import RunConfig, from_dict
from pneumodet.errors import UserError
from pneumodet.files import atomic_path, output_error
from pneumodet.runs import FOLDS_FILE, RunPaths, find_run, run_split


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written checkpoint. A full disk is
    an OutputError naming ``path`` (torch reports it as a RuntimeError from its zip writer, without the errno)."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError:  # "file write failed", "unexpected pos": what torch's zip writer says of a full disk
            size = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)
            if shutil.disk_usage(Path(path).parent).free > max(size, 64 * 2**20):
                raise  # room enough: not the disk, so not for the user to fix
            raise output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None


def fold_runs(path: str | Path, trained: bool = True) -> list[Path]:
    """Return the run folders of a folds folder, in fold order; with ``trained``, each must hold weights."""
    import json

    root = Path(path)
    try:
        names = json.loads((root / FOLDS_FILE).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{root / FOLDS_FILE}: not a readable folds file; train the folds again") from None
    runs = [root / name for name in names]
    if trained:
        finish = f"finish it with pneumodet train --folds {len(runs)} --run {root} --resume"
        for fold in runs:
            paths = RunPaths(fold)
            if not paths.best.is_file() and not paths.last.is_file():
                raise UserError(f"{fold}: this fold has no weights yet; {finish}")
            done, total = schedule_progress(paths) or (0, 0)
            if done < total:  # killed, or still training: its weights are not the recipe's model
                raise UserError(f"{fold}: this fold stopped at epoch {done} of {total}; {finish}")
    return runs


def schedule_progress(paths: RunPaths) -> tuple[int, int] | None:
    """Return (epochs done, epochs in the schedule) from the run's last checkpoint; None without one."""
    if not paths.last.is_file():
        return None
    info = read_checkpoint(paths.last, mmap=True)["pneumodet"]  # mmap: the tensors are not read
    return int(info["epoch"]), int(info["config"]["train"]["epochs"])


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """Return a pneumodet checkpoint loaded with weights_only=True, its checksums verified; a clear error if it is
    not one, or is damaged.

    ``mmap``: map the tensors instead of reading them, unverified (for a look at the checkpoint's own record)."""
    path = Path(path)
    if not mmap:
        verify_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if "pneumodet" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{path}: not a pneumodet checkpoint")
    return checkpoint


def verify_checkpoint(path: Path) -> None:
    """Raise a one-line UserError if any member of the checkpoint's zip archive does not match its CRC-32."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}); restore it or train again") from None
    if damaged is not None:
        raise UserError(f"{path}: damaged: {damaged} does not match its checksum; restore the file or train again")


def checkpoint_config(checkpoint: dict, path: Path) -> RunConfig:
    """Return the configuration a checkpoint trained with; a one-line UserError naming the pneumodet that wrote it
    when this one cannot read it (a setting it does not know, or one a checkpoint must hold missing)."""
    info = checkpoint["pneumodet"]
    written_by = f"pneumodet {info.get('version', 'unknown')}"
    values = info.get("config")
    try:
        if not isinstance(values, dict) or not isinstance(values.get("train"), dict) or \
                "checkpoint" not in values["train"]:
            raise UserError("train.checkpoint missing")
        return from_dict(values)
    except UserError as exc:
        raise UserError(f"{path}: written by {written_by}, which this pneumodet ({__version__}) cannot read ({exc}); "
                        "train the run again") from None


def chosen_checkpoint(paths: RunPaths) -> dict:
    """Return the checkpoint a run's ``train.checkpoint`` chooses (last or best), with its ``path``.

    Either falls back on the other while it is missing (a run stopped before its first validation has only
    last.ckpt).
    """
    first, other = paths.last, paths.best
    if not first.is_file():
        first, other = other, first
    checkpoint = read_checkpoint(first)
    wanted = checkpoint_config(checkpoint, first).train.checkpoint
    if (wanted == "best") != (first == paths.best) and other.is_file():
        first, checkpoint = other, read_checkpoint(other)
    return {**checkpoint, "path": first}


def load_trained(run: str | Path):
    """Return (model in eval mode, RunConfig, checkpoint info) from a run folder, without Lightning."""
    from pneumodet.model import build_model

    paths = find_run(run)
    checkpoint = chosen_checkpoint(paths)
    path, info = checkpoint["path"], checkpoint["pneumodet"]
    config = checkpoint_config(checkpoint, path)
    model = build_model(_no_download(config).model, config.data.image_size)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(state)
    model.eval()
    return model, config, {**info, "path": str(path)}


def _no_download(config: RunConfig) -> RunConfig:
    import dataclasses

    # the checkpoint holds every weight, the gate's included: nothing to fetch
    return dataclasses.replace(config, model=dataclasses.replace(config.model, weights="none", gate_weights="none"))


def run_dataset(paths: RunPaths, config: RunConfig, info: dict, split: str, cache: str | Path | None = None):
    """Return the run's ``split`` images (its own split.csv; ``all``: every image) from ``cache``, by default the
    cache the checkpoint says it trained on: the one place evaluate, serve and export find a run's images."""
    from pneumodet.data.dataset import PneumoniaDataset

    if cache is None:
        if not info.get("cache"):
            raise UserError(f"{paths.root}: the checkpoint does not say which cache it was trained on; pass --data")
        cache = info["cache"]
    # the run's own split: never score a run on images it trained on, whatever the cache's split.csv says now
    return PneumoniaDataset(cache, config.data.image_size, split, mask_shape=config.data.mask_shape,
                            split_table=run_split(paths) if split != "all" else None)
