"""Shared fixtures: tiny DICOMs and data sets built by the tests themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumodet.config_files import load_config
from pneumodet.data.prepare import prepare
from pneumodet.data.synth import synthesize
from pneumodet.io.dicom_write import write_dicom


def gradient(height: int = 64, width: int = 64) -> np.ndarray:
    """Return a (height, width) uint8 image that is dark on the left and bright on the right."""
    row = np.linspace(0, 255, width).round().astype(np.uint8)
    return np.tile(row, (height, 1))


def assert_same_candidates(reference, other, files, box_atol: float, score_atol: float) -> None:
    """Assert two Detectors give the same candidates (boxes, scores, gate) on each DICOM of ``files``, and that
    they gave some: the tiny run keeps candidates down to score 0, so the comparison is never vacuous."""
    from pneumodet.detector import image_tensor

    n_boxes = 0
    for path in files:
        image = reference.read(path)
        tensor = image_tensor(image.pixels, reference.image_size)
        (want,), (got,) = (d.candidates([tensor], [image.original_size]) for d in (reference, other))
        assert len(want.scores) == len(got.scores)
        np.testing.assert_allclose(got.boxes_orig_xyxy, want.boxes_orig_xyxy, atol=box_atol)
        np.testing.assert_allclose(got.scores, want.scores, atol=score_atol)
        assert got.gate == pytest.approx(want.gate, abs=score_atol, nan_ok=True)  # the gate reads the features
        n_boxes += len(want.scores)
    assert n_boxes > 0


@pytest.fixture
def make_dicom(tmp_path):
    """Return a function that writes a DICOM under tmp_path and returns its path."""

    def make(name: str = "img", pixels: np.ndarray | None = None, folder: Path | None = None, **kwargs) -> Path:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.dcm"
        write_dicom(path, gradient() if pixels is None else pixels, patient_id=name, **kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the Kaggle layout (shared: treat as read-only)."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_train=30, n_test=6, seed=3, workers=2, progress=False)
    return out


TINY_SIZE = 64


def tiny_config(*overrides):
    """A configuration that trains in seconds: tiny FPN at 64 px, from scratch, 2 small batches."""
    return load_config(None, [
        "name='tiny'", f"data.image_size={TINY_SIZE}", "data.num_workers=0", "model.backbone='tiny_fpn'",
        "model.weights='none'", "model.frozen_bn=False", "model.mask_head_channels=16", "model.mask_head_convs=1",
        "model.anchor_sizes=[8, 16, 32, 64, 128]", "model.rpn_post_nms_train=50", "model.rpn_post_nms_test=20",
        "train.batch_size=4", "train.limit_train_batches=2", "train.limit_val_batches=2", "train.epochs=2",
        "train.optimizer='adamw'", "train.lr=1e-3",
        "train.stages=[{'until_epoch': 1, 'layers': 'heads'}, {'until_epoch': 2}]", *overrides])


@pytest.fixture(scope="session")
def tiny_cache(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    prepare(synth_data, out, size_px=TINY_SIZE, val_fraction=0.3, progress=False, workers=1)
    return out


@pytest.fixture(scope="session")
def trained_run(tiny_cache, tmp_path_factory):
    """A tiny run with the image-level gate, trained (2 short epochs) and evaluated; shared read-only."""
    from pneumodet.evaluate import evaluate
    from pneumodet.training.train import train

    result = train(tiny_config("train.limit_val_batches=0", "model.min_score=0.0", "model.gate=True"), tiny_cache,
                   run=tmp_path_factory.mktemp("runs") / "tiny", progress=False)
    evaluate(result.run, progress=False)
    return result.run


@pytest.fixture
def run_with_boxes(trained_run, tmp_path):
    """The shared tiny run, copied, with every candidate box kept (it is barely trained: its tuned threshold
    keeps none, and a review of boxes needs some)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["postprocess"].update(score_threshold=0.0, gate_threshold=0.0, max_boxes=3)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def run_with_every_outcome(trained_run, tmp_path):
    """The shared tiny run, copied, with every image of its cache in its val split (its own val has one positive)
    and val predictions that give every outcome the review shows: its positives in turn not found (miss), found in
    part (one of their truth boxes) or whole (hits), its negatives in turn given a box (false alarm) or none (true
    negative). The barely trained run itself yields only misses and true negatives, so the review's order and
    filters would be checked on two outcomes."""
    import pandas as pd

    from pneumodet.boxes import xywh_to_xyxy
    from pneumodet.checkpoints import load_trained, run_dataset
    from pneumodet.report.submission import write_boxes
    from pneumodet.runs import RunPaths

    run = tmp_path / "every"
    shutil.copytree(trained_run, run)
    split = pd.read_csv(run / "split.csv", dtype=str)
    split["split"] = "val"
    split.to_csv(run / "split.csv", index=False)
    _, config, info = load_trained(run)
    dataset = run_dataset(RunPaths(run), config, info, "val")
    found, positives, negatives = {}, 0, 0
    for i, pid in enumerate(dataset.records["patient_id"]):
        truth = xywh_to_xyxy(dataset.boxes_orig_xywh(i))
        if len(truth):
            kind, positives = positives % 3, positives + 1
            if kind:  # a miss, then the first truth box only (a partial hit where there are more), then all
                found[pid] = (truth[:1] if kind == 1 else truth, np.full(1 if kind == 1 else len(truth), 0.9))
        else:
            negatives += 1
            if negatives % 2:
                found[pid] = (np.array([[100.0, 100.0, 300.0, 300.0]]), np.array([0.8]))
    write_boxes(run / "predictions" / "val.csv", found, exact=True)
    (run / "predictions" / "val.gate.csv").unlink(missing_ok=True)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["postprocess"].update(score_threshold=0.5, gate_threshold=0.0, max_boxes=3, shrink=1.0)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run
