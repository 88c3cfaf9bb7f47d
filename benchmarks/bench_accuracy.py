"""Accuracy before and after each speed change: val RSNA mAP on synthetic data, demo recipe.

Slow (one full demo-length training per setting, ~7 min each on 2 cores): run it alone with
``python benchmarks/run.py accuracy``. Uses ./demo/cache (``make demo`` first).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

SETTINGS = [
    ("2000 proposals in training, 1000 at test (torchvision/seed)",
     ["model.rpn_post_nms_train=2000", "model.rpn_post_nms_test=1000"]),
    # the demo default (300 in training, 100 at test) is make demo's own run: demo/runs/demo
    ("300/100 proposals + bf16 autocast", ["train.precision='bf16-mixed'"]),
    ("512 RoIs per image (torchvision default) instead of 32", ["model.rois_per_image=512",
                                                               "model.roi_positive_fraction=0.25"]),
]


def run() -> list[tuple[str, str]]:
    from pneumodet.config_files import load_config
    from pneumodet.demo import DEMO_CONFIG
    from pneumodet.runs import read_metrics
    from pneumodet.training.train import train

    cache = Path("demo/cache")
    if not (cache / "split.csv").is_file():
        return [("accuracy", "skipped: run make demo first (needs demo/cache)")]
    rows = []
    if (Path("demo/runs/demo") / "metrics.csv").is_file():
        metrics = read_metrics(Path("demo/runs/demo/metrics.csv"))
        best = max(r["val_rsna_map"] for r in metrics)
        per_epoch = sum(r["epoch_time_s"] for r in metrics) / len(metrics)
        rows.append(("demo recipe, 300 proposals in training, 100 at test (make demo's run)",
                     f"best val RSNA mAP {best:.3f}, {per_epoch:.0f} s/epoch"))
    with tempfile.TemporaryDirectory() as tmp:
        for number, (label, overrides) in enumerate(SETTINGS):
            start = time.perf_counter()
            result = train(load_config(DEMO_CONFIG, overrides), cache, run=Path(tmp) / f"setting-{number}",
                           progress=False)
            metrics = read_metrics(result.run / "metrics.csv")
            per_epoch = sum(r["epoch_time_s"] for r in metrics) / len(metrics)
            rows.append((f"demo recipe, {label}",
                         f"best val RSNA mAP {result.best_map:.3f} (epoch {result.best_epoch}), "
                         f"{per_epoch:.0f} s/epoch, {time.perf_counter() - start:.0f} s"))
    return rows
