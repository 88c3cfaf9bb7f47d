"""Unseen-generator check: the README flow on each synthetic variant, test RSNA mAP on its own test images.

For each recipe and each variant (default, wide, shifted): ``synth --train 240 --test 60 --seed 21
--variant V``, ``prepare --size <config's> --val-fraction 0.2``, ``train --config C --set ...``,
``evaluate``, ``predict`` the test images and ``score`` them against the synthetic truth. A recipe is
chosen on default and wide; shifted is never used for a choice, only reported.

Slow (about 8 min per recipe and variant on 2 cores): ``python benchmarks/run.py variants``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

VARIANTS = ("default", "wide", "shifted")
AUGMENT = ["augment.hflip_p=0.5", "augment.scale=[0.9,1.1]", "augment.translate_x=0.05", "augment.translate_y=0.05",
           "augment.rotate_deg=5.0", "augment.brightness=[0.8,1.2]", "augment.contrast=[0.8,1.2]"]
RECIPES = [  # label, config, overrides
    ("demo.yaml as before train.steps (12 epochs, whatever the set's size)", "configs/demo.yaml", ["train.steps=0"]),
    ("demo.yaml (train.steps=1200)", "configs/demo.yaml", []),
    ("demo.yaml + flips and wider augmentation", "configs/demo.yaml", AUGMENT),
]


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pneumodet {args[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def flow(root: Path, variant: str, config: str, overrides: list[str], name: str) -> dict:
    """Run the README flow on one variant; return val and test RSNA mAP and the training time."""
    data, cache, run = root / f"data-{variant}", root / f"cache-{variant}", root / "runs" / f"{name}-{variant}"
    size = yaml.safe_load(Path(config).read_text())["data"]["image_size"]
    if not data.is_dir():
        _cli("synth", str(data), "--train", "240", "--test", "60", "--seed", "21", "--variant", variant)
    _cli("prepare", str(data), "--out", str(cache), "--size", str(size), "--val-fraction", "0.2")
    start = time.perf_counter()
    _cli("train", "--config", config, "--data", str(cache), "--run", str(run), *[f"--set={o}" for o in overrides])
    seconds = time.perf_counter() - start
    _cli("evaluate", str(run))
    _cli("predict", str(run), str(data / "stage_2_test_images"), "--out", str(run / "test.csv"))
    test = json.loads(_cli("score", str(run / "test.csv"), "--labels", str(data / "synthetic_test_labels.csv")))
    val = json.loads((run / "metrics.json").read_text())
    return {"val": val["rsna_map"], "test": test["rsna_map"], "train_s": seconds}


def run() -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (label, config, overrides) in enumerate(RECIPES):
            for variant in VARIANTS:
                result = flow(Path(tmp), variant, config, overrides, f"recipe{number}")
                rows.append((f"{label}, variant {variant}{' (never tuned on)' if variant == 'shifted' else ''}",
                             f"test RSNA mAP {result['test']:.3f} (val {result['val']:.3f}), "
                             f"train {result['train_s']:.0f} s"))
    return rows
