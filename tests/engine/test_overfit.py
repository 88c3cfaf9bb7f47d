"""The model must be able to learn: overfit 8 synthetic images and find their boxes again (and the gate,
which images hold any).

A stub predictor, a loss that does not reach the weights, or boxes mapped to the wrong pixels all
fail this test; nothing else in the suite needs the model to find a single box.
"""

import pandas as pd
import pytest

from pneumodet.boxes import xywh_to_xyxy
from pneumodet.config import load_config
from pneumodet.data.dataset import PneumoniaDataset
from pneumodet.data.prepare import prepare
from pneumodet.data.synth import synthesize
from pneumodet.detector import load_detector
from pneumodet.engine.train import train
from pneumodet.evaluate import predict_dataset
from pneumodet.metrics import Prediction, best_threshold, roc_auc
from pneumodet.postprocess import PostProcess, postprocess

SIZE = 128


@pytest.mark.slow
def test_eight_images_are_learnt_to_rsna_map_0_9(tmp_path):
    synthesize(tmp_path / "data", 40, 0, seed=5, workers=2, progress=False)
    prepare(tmp_path / "data", tmp_path / "cache", size_px=SIZE, progress=False, workers=2)
    images = pd.read_csv(tmp_path / "cache" / f"train-{SIZE}px" / "images.csv", dtype={"patient_id": str})
    chosen = images[images.n_boxes > 0].patient_id.tolist()[:6] + images[images.n_boxes == 0].patient_id.tolist()[:2]
    # the same 8 images are the training set and the val set: best.ckpt (train.checkpoint) is the best fit to them
    split = pd.DataFrame({"patient_id": chosen * 2, "split": ["train"] * 8 + ["val"] * 8})
    split.to_csv(tmp_path / "cache" / "split.csv", index=False)
    config = load_config(None, [
        f"data.image_size={SIZE}", "data.num_workers=0", "model.backbone='tiny_fpn'", "model.weights='none'",
        "model.mask_head_channels=16", "model.mask_head_convs=1", "model.anchor_sizes=[8, 16, 32, 64, 128]",
        "model.rpn_post_nms_train=100", "model.rpn_post_nms_test=50", "model.min_score=0.0",
        "model.gate=True", "augment.enabled=False", "train.batch_size=2", "train.steps=400", "train.epochs=10",
        "train.optimizer='sgd'", "train.lr=0.02", "train.checkpoint='best'", "train.warmup_steps=20",
        "train.stages=[{'until_epoch': 8}, {'until_epoch': 10, 'lr_scale': 0.1}]"])
    result = train(config, tmp_path / "cache", run=tmp_path / "run", progress=False)
    detector = load_detector(result.run)
    dataset = PneumoniaDataset(tmp_path / "cache", SIZE, "train", split_table=split)
    raw = predict_dataset(detector, dataset, progress=False)
    truths = [xywh_to_xyxy(dataset.boxes_xywh(i)) for i in range(len(dataset))]
    assert sum(len(t) > 0 for t in truths) == 6
    predictions = [Prediction(*postprocess(b, s, PostProcess(0.0, 0.3, 4, 1.0), g)) for b, s, g in raw]
    threshold, score = best_threshold(truths, predictions)
    assert score >= 0.9, f"RSNA mAP {score:.3f} on the 8 images it trained on (threshold {threshold})"
    # the image-level gate, trained beside the detector, tells the 6 positives from the 2 negatives
    gate_auc = roc_auc([len(t) > 0 for t in truths], [c.gate for c in raw])
    assert gate_auc >= 0.9, f"gate ROC AUC {gate_auc:.3f} on the 8 images it trained on"
