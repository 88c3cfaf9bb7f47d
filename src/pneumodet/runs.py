"""The run folder: one place for everything a run writes, never overwritten; checkpoints in and out.

```
runs/NAME/  config.yaml env.txt metrics.csv weights/{best,last}.ckpt plots/ predictions/ metrics.json
```
Checkpoints hold plain types only and load with ``torch.load(..., weights_only=True)``; this module
loads a trained model without Lightning. A checkpoint is a zip archive whose members carry a CRC-32 each, written
with the file itself (so no manifest can fall out of step with it): every member is checked against its CRC before
the weights are used, and a damaged file is a one-line error naming it (torch.load does not check them).
"""

from __future__ import annotations

import csv
import errno
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pneumodet import __version__
from pneumodet.config import RunConfig, from_dict
from pneumodet.errors import UserError
from pneumodet.files import atomic_path, output_error, write_text_atomic

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss_gate")
LOSS_NAMES = ("loss",) + LOSS_KEYS
#: metrics.csv columns, in order
METRIC_COLUMNS = (["epoch"] + [f"train_{k}" for k in LOSS_NAMES] + [f"val_{k}" for k in LOSS_NAMES]
                  + ["val_rsna_map", "val_threshold", "val_gate_auc", "lr", "epoch_time_s", "skipped_steps",
                     "data_wait_s"])


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.txt"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def best(self) -> Path:
        return self.weights / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.weights / "last.ckpt"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def make(self) -> RunPaths:
        for folder in (self.root, self.weights, self.plots, self.predictions):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def new_run_dir(base: str | Path, name: str) -> Path:
    """Return ``base/name``, or ``base/name-2``, ``-3``... : the first that does not exist yet."""
    base = Path(base)
    candidate, n = base / name, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{name}-{n}"
    return candidate


def write_env(path: Path, argv: list[str] | None = None) -> None:
    """Write versions, hardware and the git commit, so a run can be reproduced."""
    from importlib.metadata import PackageNotFoundError, version

    import torchvision

    try:
        lightning_version = version("lightning")  # read from the metadata: runs.py never imports Lightning
    except PackageNotFoundError:
        lightning_version = "not installed"

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    lines = [f"pneumodet {__version__}", f"git commit {commit}", f"python {platform.python_version()}",
             f"torch {torch.__version__}", f"torchvision {torchvision.__version__}",
             f"lightning {lightning_version}", f"platform {platform.platform()}",
             f"cpus {os.cpu_count()}", f"torch threads {torch.get_num_threads()}",
             f"cuda devices {torch.cuda.device_count() if torch.cuda.is_available() else 0}",
             f"command {' '.join(argv or sys.argv)}"]
    write_text_atomic(path, "\n".join(lines) + "\n")


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


#: a folds folder (``train --folds K``) holds this file beside its K run folders
FOLDS_FILE = "folds.json"


def is_folds(path: str | Path) -> bool:
    """Return whether ``path`` is a folds folder written by ``train --folds K``."""
    return (Path(path) / FOLDS_FILE).is_file()


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


def find_run(run: str | Path) -> RunPaths:
    """Return the paths of an existing run folder that holds a checkpoint."""
    paths = RunPaths(Path(run))
    if not paths.root.is_dir():
        raise UserError(f"{run}: run folder not found")
    if not paths.best.is_file() and not paths.last.is_file():
        raise UserError(f"{run}: no weights/best.ckpt or weights/last.ckpt; train first")
    return paths


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


def chosen_checkpoint(paths: RunPaths) -> dict:
    """Return the checkpoint a run's ``train.checkpoint`` chooses (last or best), with its ``path``.

    Runs trained before the setting existed chose best; either falls back on the other while it is missing
    (a run stopped before its first validation has only last.ckpt).
    """
    first, other = paths.last, paths.best
    if not first.is_file():
        first, other = other, first
    checkpoint = read_checkpoint(first)
    wanted = checkpoint["pneumodet"]["config"].get("train", {}).get("checkpoint", "best")
    if (wanted == "best") != (first == paths.best) and other.is_file():
        first, checkpoint = other, read_checkpoint(other)
    return {**checkpoint, "path": first}


def load_trained(run: str | Path):
    """Return (model in eval mode, RunConfig, checkpoint info) from a run folder, without Lightning."""
    from pneumodet.model import build_model

    paths = find_run(run)
    checkpoint = chosen_checkpoint(paths)
    path, info = checkpoint["path"], checkpoint["pneumodet"]
    config: RunConfig = from_dict(info["config"], legacy=True)
    model = build_model(_no_download(config).model, config.data.image_size)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(state)
    model.eval()
    return model, config, {**info, "path": str(path)}


def _no_download(config: RunConfig) -> RunConfig:
    import dataclasses

    # the checkpoint holds every weight, the gate's included: nothing to fetch
    return dataclasses.replace(config, model=dataclasses.replace(config.model, weights="none", gate_weights="none"))


def write_split(paths: RunPaths, table) -> None:
    """Write the (patient_id, split) table the run trains on into the run folder, atomically."""
    with atomic_path(paths.split) as tmp:
        table.to_csv(tmp, index=False)


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


def run_split(paths: RunPaths):
    """Return the run's own (patient_id, split) table; a run without one cannot be scored on its val split."""
    import pandas as pd

    if not paths.split.is_file():
        raise UserError(f"{paths.split}: the run does not record the split it trained on (trained before "
                        "pneumodet kept it), so its val images are unknown; evaluate another labelled set "
                        "with --data CACHE --split all, or train the run again")
    return pd.read_csv(paths.split, dtype=str)


def read_metrics(path: str | Path) -> list[dict]:
    """Return metrics.csv rows as dicts of floats (empty cells are NaN)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
