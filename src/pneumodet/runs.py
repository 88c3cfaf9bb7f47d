"""The run folder: one place for everything a run writes, never overwritten (checkpoints: :mod:`checkpoints`).

```
runs/NAME/  config.yaml env.txt split.csv metrics.csv weights/{best,last}.ckpt plots/ predictions/ metrics.json
```
"""

from __future__ import annotations

import csv
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pneumodet import __version__
from pneumodet.errors import UserError
from pneumodet.files import atomic_path, write_text_atomic

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

    import torch
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


#: a folds folder (``train --folds K``) holds this file beside its K run folders
FOLDS_FILE = "folds.json"


def is_folds(path: str | Path) -> bool:
    """Return whether ``path`` is a folds folder written by ``train --folds K``."""
    return (Path(path) / FOLDS_FILE).is_file()


def find_run(run: str | Path) -> RunPaths:
    """Return the paths of an existing run folder that holds a checkpoint."""
    paths = RunPaths(Path(run))
    if not paths.root.is_dir():
        raise UserError(f"{run}: run folder not found")
    if not paths.best.is_file() and not paths.last.is_file():
        raise UserError(f"{run}: no weights/best.ckpt or weights/last.ckpt; train first")
    return paths


def write_split(paths: RunPaths, table) -> None:
    """Write the (patient_id, split) table the run trains on into the run folder, atomically."""
    with atomic_path(paths.split) as tmp:
        table.to_csv(tmp, index=False)


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
