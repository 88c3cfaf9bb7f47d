"""Inference figures: single-image latency 1024² JPEG DICOM -> boxes, batch predict throughput, demo.

Latency uses ResNet-50 FPN with random weights: the cost depends on the settings (proposals
kept, image size, precision, memory format), not on the weights. Whether bf16 changes the
boxes is checked on a trained model instead: make demo's run, over its synthetic test images.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pneumodet.io.layout import image_files

VARIANTS = [  # label, overrides
    ("1000 proposals (seed), fp32", ["model.rpn_post_nms_test=1000", "predict.channels_last=False"]),
    ("300 proposals, fp32", ["model.rpn_post_nms_test=300", "predict.channels_last=False"]),
    ("100 proposals, fp32, channels-last", ["model.rpn_post_nms_test=100"]),
    ("100 proposals, bf16, channels-last", ["model.rpn_post_nms_test=100", "predict.bf16=True"]),
]


def _run_folder(root: Path, config) -> Path:
    """Write a run folder holding a random-weight checkpoint, as train would."""
    from pneumodet.checkpoints import atomic_save
    from pneumodet.model import build_model
    from pneumodet.runs import RunPaths

    torch.manual_seed(0)
    model = build_model(config.model, config.data.image_size)
    paths = RunPaths(root).make()
    atomic_save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                 "pneumodet": {"config": config.to_dict(), "class_names": ["background", "opacity"], "epoch": 0,
                               "metrics": {}, "version": "bench", "cache": ""}}, paths.best)
    return root


def latency(run: Path, files: list[Path], repeats: int = 20) -> tuple[float, dict]:
    """Return the median end-to-end seconds per image and its parts: decode+resize, model, post-processing.

    Each part is one step of the Detector, the path predict and serve take.
    """
    from pneumodet.detector import image_tensor, load_detector

    detector = load_detector(run, overrides={"score_threshold": 0.5, "nms_iou": 0.01, "max_boxes": 3, "shrink": 1.0})
    parts: dict[str, list[float]] = {"decode+resize": [], "model": [], "post-processing": []}
    for i in range(repeats + 3):
        path = files[i % len(files)]
        t0 = time.perf_counter()
        image = detector.read(path)
        tensor = image_tensor(image.pixels, detector.image_size)
        t1 = time.perf_counter()
        found, = detector.candidates([tensor], [image.original_size])
        t2 = time.perf_counter()
        detector.finish(image.patient_id, found, image.original_size)
        t3 = time.perf_counter()
        if i >= 3:
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[key].append(value)
    medians = {k: float(np.median(v)) for k, v in parts.items()}
    return sum(medians.values()), medians


def bf16_agreement(run: Path, images: Path) -> str:
    """Compare fp32 and bf16 predictions of a trained run on a folder of DICOMs."""
    from pneumodet.boxes import iou_xyxy
    from pneumodet.checkpoints import load_trained
    from pneumodet.detector import image_tensor, load_detector
    from pneumodet.forward import TorchBackend

    model, config, _ = load_trained(run)
    size = config.data.image_size
    detector = load_detector(run)
    tensors = [image_tensor(detector.read(f).pixels, size) for f in image_files(images)[0]]
    backend = TorchBackend(model)
    fp32 = [c[:2] for c in backend.candidates(tensors, size)]
    bf16 = [c[:2] for c in backend.candidates(tensors, size, bf16=True)]
    ious, score_diffs, count_diffs = [], [], 0
    for (b32, s32), (b16, s16) in zip(fp32, bf16, strict=True):
        keep32, keep16 = s32 >= 0.5, s16 >= 0.5
        count_diffs += int(keep32.sum() != keep16.sum())
        if keep32.any() and keep16.any():
            ious += list(iou_xyxy(b32[keep32], b16[keep16]).max(axis=1))
            score_diffs.append(abs(float(s32[keep32].max()) - float(s16[keep16].max())))
    return (f"{len(tensors)} images: boxes ≥0.5 differ in count on {count_diffs}; matched IoU min "
            f"{min(ious) if ious else float('nan'):.3f}, mean {np.mean(ious) if ious else float('nan'):.3f}; "
            f"top score |Δ| max {max(score_diffs) if score_diffs else 0:.3f}")


def run() -> list[tuple[str, str]]:
    from pneumodet.config_files import load_config
    from pneumodet.data.synth import synthesize
    from pneumodet.io.layout import TEST_IMAGES
    from pneumodet.predict import predict_folder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "data", 0, 200, seed=1, progress=False)
        files = image_files(tmp / "data" / TEST_IMAGES)[0]
        for size in (256, 512):
            for label, overrides in VARIANTS:
                config = load_config(None, ["model.weights='none'", f"data.image_size={size}", *overrides])
                seconds, parts = latency(_run_folder(tmp / f"run{size}-{label[:4]}", config), files)
                detail = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in parts.items())
                rows.append((f"one 1024² DICOM → boxes, R50-FPN {size} px, {label}",
                             f"{seconds * 1e3:.0f} ms ({detail})"))
        config = load_config(None, ["model.weights='none'", "data.image_size=256", "model.rpn_post_nms_test=100",
                                    "predict.bf16=True"])
        run_dir = _run_folder(tmp / "batch", config)
        start = time.perf_counter()
        predict_folder(run_dir, tmp / "data" / TEST_IMAGES, tmp / "sub.csv", workers=1, progress=False)
        elapsed = time.perf_counter() - start
        rows.append((f"predict 200 DICOMs, R50-FPN 256 px, 100 proposals, bf16, batch 8, {os.cpu_count()} cores",
                     f"{200 / elapsed:.1f} images/s ({elapsed:.0f} s)"))
    demo = Path("demo/runs/demo")
    if (demo / "weights" / "best.ckpt").is_file():
        rows.append(("bf16 vs fp32 boxes, demo model, synthetic test images",
                     bf16_agreement(demo, Path("demo/data") / TEST_IMAGES)))
    summary = Path("demo/demo_summary.json")
    if summary.is_file():
        d = json.loads(summary.read_text())
        rows.append(("make demo: wall time (its own timer), val RSNA mAP untrained → trained",
                     f"{d['wall_time_s']:.0f} s, {d['val_rsna_map_untrained']:.3f} → {d['val_rsna_map_trained']:.3f}"))
    return rows
