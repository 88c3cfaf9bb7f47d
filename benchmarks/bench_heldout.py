"""The held-out variants: the README flow with one recipe on each synthetic variant no recipe was chosen on.

For each of ``synth.HELD_OUT`` (shifted, portable, faint): ``synth --train 240 --test 300 --seed 21 --variant V``,
``prepare --size 256 --val-fraction 0.2``, ``train --config demo`` (plus ``HELDOUT_SET``, ``--set`` overrides
separated by spaces), ``evaluate``, ``predict`` the 300 test images and ``score`` them against the synthetic
truth: test RSNA mAP with its 95 % bootstrap interval, val mAP (tuned on val) and the training time
(``HELDOUT_VARIANTS``, names separated by spaces, runs others instead, e.g. ``wide``). Variants
``default``, ``wide`` and ``oblique`` are where a recipe is chosen (``bench_variants.py``); these three only
report. About 25-30 minutes per variant on 2 cores: ``python benchmarks/run.py heldout``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from bench_variants import _cli, _data

from pneumodet.data.synth import HELD_OUT


def flow(root: Path, variant: str, overrides: list[str]) -> dict:
    """Run the README flow on ``variant`` under ``root``; return test and val RSNA mAP and the training time."""
    data, cache = _data(root, variant, "configs/demo.yaml")
    run = root / f"run-{variant}"
    start = time.perf_counter()
    _cli("train", "--config", "demo", "--data", str(cache), "--run", str(run), *[f"--set={o}" for o in overrides])
    seconds = time.perf_counter() - start
    _cli("evaluate", str(run))
    _cli("predict", str(run), str(data / "stage_2_test_images"), "--out", str(run / "test.csv"))
    score = json.loads(_cli("score", str(run / "test.csv"), "--labels", str(data / "synthetic_test_labels.csv")))
    val = json.loads((run / "metrics.json").read_text())["rsna_map"]
    return {"test": score["rsna_map"], "test_ci": score["rsna_map_ci"], "val": val, "train_s": seconds}


def run() -> list[tuple[str, str]]:
    overrides = os.environ.get("HELDOUT_SET", "").split()
    label = "demo.yaml" + (f" + {' '.join(overrides)}" if overrides else "")
    variants = os.environ.get("HELDOUT_VARIANTS", "").split() or HELD_OUT
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            r = flow(Path(tmp), variant, overrides)
            kind = "held-out" if variant in HELD_OUT else "tuning"
            rows.append((f"{label}, {kind} variant {variant}",
                         f"test RSNA mAP {r['test']:.3f} ({r['test_ci'][0]:.3f}-{r['test_ci'][1]:.3f}), val "
                         f"{r['val']:.3f}; train {r['train_s']:.0f} s"))
    return rows
