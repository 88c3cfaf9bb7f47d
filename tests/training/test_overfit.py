"""The model must be able to learn: overfit 8 synthetic images and find their boxes again (and the gate,
which images hold any).

A stub predictor, a loss that does not reach the weights, or boxes mapped to the wrong pixels all
fail this test; nothing else in the suite needs the model to find a single box.
"""

import pandas as pd
import pytest

from pneumodet.boxes import xywh_to_xyxy
from pneumodet.config_files import load_config
from pneumodet.data.dataset import PneumoniaDataset
from pneumodet.data.prepare import prepare
from pneumodet.data.synth import synthesize
from pneumodet.detector import load_detector
from pneumodet.metrics import roc_auc
from pneumodet.postprocess import PostProcess
from pneumodet.saved import labelled_set, predict_dataset
from pneumodet.training.train import train
from pneumodet.tuning import THRESHOLD, tune

SIZE = 128


def eight_images(tmp_path):
    """A cache of 8 synthetic images (6 with an opacity) that are both the training set and the val set."""
    synthesize(tmp_path / "data", 40, 0, seed=5, workers=2, progress=False)
    prepare(tmp_path / "data", tmp_path / "cache", size_px=SIZE, progress=False, workers=2)
    images = pd.read_csv(tmp_path / "cache" / f"train-{SIZE}px" / "images.csv", dtype={"patient_id": str})
    chosen = images[images.n_boxes > 0].patient_id.tolist()[:6] + images[images.n_boxes == 0].patient_id.tolist()[:2]
    split = pd.DataFrame({"patient_id": chosen * 2, "split": ["train"] * 8 + ["val"] * 8})
    split.to_csv(tmp_path / "cache" / "split.csv", index=False)
    return tmp_path / "cache", split


def overfit_config(*overrides):
    return load_config(None, [
        f"data.image_size={SIZE}", "data.num_workers=0", "model.backbone='tiny_fpn'", "model.weights='none'",
        "model.mask_head_channels=16", "model.mask_head_convs=1", "model.anchor_sizes=[8, 16, 32, 64, 128]",
        "model.rpn_post_nms_train=100", "model.rpn_post_nms_test=50", "model.min_score=0.0",
        "model.gate=True", "augment.enabled=False", "train.batch_size=2", "train.steps=400", "train.epochs=10",
        "train.optimizer='sgd'", "train.lr=0.02", "train.checkpoint='best'", "train.warmup_steps=20",
        "train.stages=[{'until_epoch': 8}, {'until_epoch': 10, 'lr_scale': 0.1}]", *overrides])


@pytest.mark.slow
def test_eight_images_are_learnt_to_rsna_map_0_9(tmp_path):
    cache, split = eight_images(tmp_path)
    # the same 8 images are the training set and the val set: best.ckpt (train.checkpoint) is the best fit to them
    result = train(overfit_config(), cache, run=tmp_path / "run", progress=False)
    detector = load_detector(result.run)
    dataset = PneumoniaDataset(cache, SIZE, "train", split_table=split)
    raw = predict_dataset(detector, dataset, progress=False)
    truths = [xywh_to_xyxy(dataset.boxes_orig_xywh(i)) for i in range(len(dataset))]
    assert sum(len(t) > 0 for t in truths) == 6
    tuned, score = tune(labelled_set(dataset, raw), PostProcess(0.0, 0.3, 4, 1.0), THRESHOLD, gate=False)
    assert score >= 0.9, f"RSNA mAP {score:.3f} on the 8 images it trained on (threshold {tuned.score_threshold})"
    # the image-level gate, trained beside the detector, tells the 6 positives from the 2 negatives
    gate_auc = roc_auc([len(t) > 0 for t in truths], [c.gate for c in raw])
    assert gate_auc >= 0.9, f"gate ROC AUC {gate_auc:.3f} on the 8 images it trained on"


@pytest.mark.slow
def test_the_last_val_figure_is_evaluates_on_the_same_weights(tmp_path):
    """One validation path: per-epoch validation predicts (with flip TTA here), maps the boxes to each image's
    pixels and tunes everything as evaluate does on the last epoch, so the figures agree on the last weights."""
    import json

    from pneumodet.evaluate import evaluate
    from pneumodet.runs import read_metrics

    cache, _ = eight_images(tmp_path)
    config = overfit_config("train.steps=120", "train.checkpoint='last'", "predict.hflip_tta=True",
                            "augment.hflip_p=0.5", "augment.enabled=True")
    result = train(config, cache, run=tmp_path / "run", progress=False)
    metrics = evaluate(result.run, progress=False)
    last = read_metrics(result.run / "metrics.csv")[-1]
    assert metrics["hflip_tta"] is True and metrics["epoch"] == last["epoch"]
    assert metrics["rsna_map"] > 0.2  # learnt enough for the two paths to have something to disagree on
    assert last["val_rsna_map"] == pytest.approx(metrics["rsna_map"], abs=1e-6)
    assert last["val_threshold"] == pytest.approx(metrics["postprocess"]["score_threshold"])
    assert json.loads((result.run / "metrics.json").read_text())["rsna_map"] == metrics["rsna_map"]
