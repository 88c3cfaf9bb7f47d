"""Unseen-generator check: the README flow on each synthetic variant, test RSNA mAP on its own test images.

For each recipe and each variant (default, wide, shifted): ``synth --train 240 --test 300 --seed 21
--variant V`` (240 labelled images, as the unseen sets have; 300 test images, because 60 (12-16
positives) left differences of 0.1 in the noise), ``prepare --size <config's> --val-fraction 0.2``,
``train --config C --set ...``,
``evaluate``, ``predict`` the test images and ``score`` them against the synthetic truth; for a gated recipe
also ``predict --gate 0`` (the same run without its gate) and ``evaluate --tta`` then ``predict`` (flip TTA,
thresholds tuned for it). ``folds`` does the same with ``train --folds 3`` (out-of-fold tuning, the 3-model
ensemble) and scores each fold alone. A recipe is chosen on default and wide; shifted is never used for a
choice, only reported.

Slow (per recipe and variant about 8 min at 128 px, 16-20 min at 256 px with 1,200 steps, 25 min with
2,000 and 37 min with 3,000; 25 min per folds run at 128 px; on 2 cores):
``python benchmarks/run.py variants`` and ``python benchmarks/run.py folds``.
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
# demo.yaml's schedule until 2,000 steps, then until 3,000
STEPS_1200 = ["train.steps=1200"]
STEPS_2000 = ["train.steps=2000"]
# demo.yaml's augmentation and inference until flips (hflip_p 0.5 and flip TTA), and its schedule then
NO_FLIPS = ["augment.hflip_p=0", "predict.hflip_tta=false", *STEPS_1200]
# demo.yaml's input size until 256 px, and its normalisation until model.normalize: image
AT_128 = ["data.image_size=128", "model.anchor_sizes=[8,16,32,64,128]", "model.normalize=fixed", *NO_FLIPS]
# a longer low-rate stage: demo.yaml's stages end at 9 and 12 of 12 epochs (the drop after 3/4 of the run)
LOW_LR = ("train.stages=[{until_epoch: 6, lr_scale: 1.0, layers: all}, {until_epoch: 10, lr_scale: 0.1, layers: all}, "
          "{until_epoch: 12, lr_scale: 0.01, layers: all}]")
RECIPES = [  # label, config, overrides
    ("demo.yaml at 128 px as before train.steps (12 epochs, whatever the set's size)", "configs/demo.yaml",
     [*AT_128, "train.steps=0", "model.gate=false"]),
    ("demo.yaml at 128 px (train.steps=1200), no gate", "configs/demo.yaml", [*AT_128, "model.gate=false"]),
    ("demo.yaml at 128 px + flips and wider augmentation, no gate", "configs/demo.yaml",
     [*AT_128, *AUGMENT, "model.gate=false"]),
    ("demo.yaml at 128 px with its detached gate", "configs/demo.yaml", AT_128),
    ("demo.yaml at 256 px with fixed normalisation (ImageNet's mean and std)", "configs/demo.yaml",
     ["model.normalize=fixed", *NO_FLIPS]),
    ("demo.yaml at 256 px, each image normalised by its own mean and std, no flips", "configs/demo.yaml",
     NO_FLIPS),
    ("demo.yaml without flips, + gamma 0.7-1.4", "configs/demo.yaml", [*NO_FLIPS, "augment.gamma=[0.7,1.4]"]),
    ("demo.yaml at 1,200 steps (256 px, detached gate, per-image normalisation, flips in training and flip TTA)",
     "configs/demo.yaml", STEPS_1200),
    ("demo.yaml at 1,200 steps + 64 RoIs per image", "configs/demo.yaml", [*STEPS_1200, "model.rois_per_image=64"]),
    ("demo.yaml at 2,000 steps", "configs/demo.yaml", STEPS_2000),
    ("demo.yaml (the same at 3,000 steps)", "configs/demo.yaml", []),
    ("demo.yaml + one box refinement pass (predict.box_refine=1)", "configs/demo.yaml", ["predict.box_refine=1"]),
    ("demo.yaml, another seed (train.seed=1)", "configs/demo.yaml", ["train.seed=1"]),
    ("demo.yaml with the drop at half the run and a second drop (lr x1 / x0.1 / x0.01 until epochs 6 / 10 / 12)",
     "configs/demo.yaml", [LOW_LR]),
    ("demo.yaml with a deeper tiny_fpn (model.tiny_depth=2: 13 convs instead of 9)", "configs/demo.yaml",
     ["model.tiny_depth=2"]),
    # the "with flip TTA" figure of these two is flips at sizes 1 and 1.25 (evaluate --tta uses the config's sizes)
    ("demo.yaml, TTA at sizes 1 and 1.25 (predict.tta_scales)", "configs/demo.yaml", ["predict.tta_scales=[1.0,1.25]"]),
    ("demo.yaml + scale augmentation 0.8-1.25, TTA at sizes 1 and 1.25", "configs/demo.yaml",
     ["augment.scale=[0.8,1.25]", "predict.tta_scales=[1.0,1.25]"]),
    ("demo.yaml at 4,500 steps", "configs/demo.yaml", ["train.steps=4500"]),
]
FOLDS = 3
TEST_IMAGES = 300


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pneumodet {args[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _data(root: Path, variant: str, config: str, folds: int = 5, overrides: list[str] = ()) -> tuple[Path, Path]:
    data, cache = root / f"data-{variant}", root / f"cache-{variant}"
    size = yaml.safe_load(Path(config).read_text())["data"]["image_size"]
    size = next((o.split("=", 1)[1] for o in overrides if o.startswith("data.image_size=")), size)
    if not data.is_dir():
        _cli("synth", str(data), "--train", "240", "--test", str(TEST_IMAGES), "--seed", "21", "--variant", variant)
    _cli("prepare", str(data), "--out", str(cache), "--size", str(size), "--val-fraction", "0.2",
         "--folds", str(folds))
    return data, cache


def _test(run: Path, data: Path, name: str, *options: str) -> float:
    """Predict the variant's test images with ``run`` and return their RSNA mAP against the synthetic truth."""
    _cli("predict", str(run), str(data / "stage_2_test_images"), "--out", str(run / f"{name}.csv"), *options)
    return json.loads(_cli("score", str(run / f"{name}.csv"), "--labels",
                           str(data / "synthetic_test_labels.csv")))["rsna_map"]


def _scores(run: Path, data: Path) -> dict:
    """Evaluate (no TTA) and test; the same without the gate; then evaluate --tta and test with it."""
    _cli("evaluate", str(run), "--no-tta")
    metrics = json.loads((run / "metrics.json").read_text())
    out = {"val": metrics["rsna_map"], "test": _test(run, data, "test")}
    if "rsna_map_without_gate" in metrics:
        out["test_without_gate"] = _test(run, data, "test-nogate", "--gate", "0")
        out["gate_auc"], out["max_box_auc"] = (metrics["image_level"]["gate_roc_auc"],
                                               metrics["image_level"]["max_box_roc_auc"])
    _cli("evaluate", str(run), "--tta")
    out["test_tta"] = _test(run, data, "test-tta")
    return out


def flow(root: Path, variant: str, config: str, overrides: list[str], name: str) -> dict:
    """Run the README flow on one variant; return val and test RSNA mAP and the training time."""
    data, cache = _data(root, variant, config, overrides=overrides)
    run = root / "runs" / f"{name}-{variant}"
    start = time.perf_counter()
    _cli("train", "--config", config, "--data", str(cache), "--run", str(run), *[f"--set={o}" for o in overrides])
    seconds = time.perf_counter() - start
    return {**_scores(run, data), "train_s": seconds}


def folds_flow(root: Path, variant: str, config: str, overrides: list[str] = ()) -> dict:
    """train --folds 3, out-of-fold evaluate, the ensemble's test mAP and each fold's own."""
    data, cache = _data(root, variant, config, FOLDS, overrides)
    folds = root / "runs" / f"folds-{variant}"
    start = time.perf_counter()
    _cli("train", "--config", config, "--data", str(cache), "--run", str(folds), "--folds", str(FOLDS),
         *[f"--set={o}" for o in overrides])
    seconds = time.perf_counter() - start
    result = _scores(folds, data)
    singles = []
    for n in range(1, FOLDS + 1):
        _cli("evaluate", str(folds / f"fold-{n}"), "--no-tta")
        singles.append(_test(folds / f"fold-{n}", data, "test"))
    return {**result, "folds": singles, "train_s": seconds}


def _row(result: dict) -> str:
    text = f"test RSNA mAP {result['test']:.3f} (val {result['val']:.3f})"
    if "test_without_gate" in result:
        text += (f", without the gate {result['test_without_gate']:.3f}, gate ROC AUC {result['gate_auc']:.3f} "
                 f"vs highest box {result['max_box_auc']:.3f}")
    return text + f", with flip TTA {result['test_tta']:.3f}; train {result['train_s']:.0f} s"


def run() -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (label, config, overrides) in enumerate(RECIPES):
            for variant in VARIANTS:
                result = flow(Path(tmp), variant, config, overrides, f"recipe{number}")
                rows.append((f"{label}, variant {variant}{' (never tuned on)' if variant == 'shifted' else ''}",
                             _row(result)))
    return rows


def run_folds() -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("default", "wide"):
            result = folds_flow(Path(tmp), variant, "configs/demo.yaml", AT_128)  # as measured in BENCHMARKS.md
            rows.append((f"demo.yaml at 128 px, train --folds {FOLDS}, variant {variant}: the ensemble",
                         _row(result) + "; each fold alone " + ", ".join(f"{s:.3f}" for s in result["folds"])))
    return rows
