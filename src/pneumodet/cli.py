"""The ``pneumodet`` command. Each subcommand imports what it needs, so ``--help`` and errors are fast.

Exit codes: 0 success, 2 user error (one line on stderr), 1 unexpected failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from pneumodet import __version__, memory
from pneumodet import pretrain as pretraining
from pneumodet.commands import (
    cmd_compare,
    cmd_demo,
    cmd_distil,
    cmd_download,
    cmd_evaluate,
    cmd_export,
    cmd_listen,
    cmd_predict,
    cmd_prepare,
    cmd_pretrain,
    cmd_score,
    cmd_serve,
    cmd_synth,
    cmd_train,
)
from pneumodet.errors import RunFailure, UserError


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _count_up_to(high: int):
    """Return an argparse type for a whole number in [0, high]."""

    def parse(text: str) -> int:
        value = _count(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected a number in [0, {high}], got {value}")
        return value

    return parse


def _between(low: float, high: float, low_open: bool = False):
    """Return an argparse type for a float in [low, high] ((low, high] when ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low < value if low_open else low <= value) or value > high:
            raise argparse.ArgumentTypeError(f"expected a number in {'(' if low_open else '['}{low}, {high}], "
                                             f"got {value:g}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from pneumodet.config_checks import ENGINES  # light: dataclasses and YAML, no torch
    parser = argparse.ArgumentParser(prog="pneumodet", description="Find pneumonia on chest radiographs "
                                     "(RSNA Pneumonia Detection Challenge) with Mask R-CNN.")
    parser.add_argument("--version", action="version", version=f"pneumodet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic data set in the Kaggle RSNA layout",
                       description="Write a synthetic data set in exactly the Kaggle layout: both label CSVs, "
                       "a sample submission, 1024x1024 JPEG Baseline DICOMs, and synthetic_test_labels.csv "
                       "(the test truth, for pneumodet score).")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--train", type=_count, default=200, help="number of training images (default 200)")
    p.add_argument("--test", type=_count, default=50, help="number of test images (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p.add_argument("--variant", default="default", metavar="NAME[,NAME...]",
                   help="distribution to draw from: default (the real data's statistics), wide (far more variety in "
                   "anatomy, exposure, noise, opacities, devices), oblique (rotated patients and films), subtle "
                   "(faint to moderate, soft-edged, often patchy opacities); never used to choose a recipe: shifted "
                   "(smaller, fainter, patchier opacities on noisier films), portable (bedside films: rotated, "
                   "collimated, badly exposed, text, markers, lines), faint (faint patchy opacities, often in both "
                   "lungs); mix (each image from any of them), or names joined by commas "
                   "(each image from one of those). Check a recipe on a variant it was not tuned on")
    p.add_argument("--workers", type=_count, default=None, help="processes (default: all cores)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("download", help="download the competition data with the Kaggle API",
                       description="Download rsna-pneumonia-detection-challenge with the Kaggle API, unzip it "
                       "and check the files; a complete folder is left alone. Needs ~/.kaggle/kaggle.json "
                       "(or KAGGLE_USERNAME and KAGGLE_KEY) and the competition rules accepted.")
    p.add_argument("out", type=Path, help="destination folder")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="quality-control, cache and split a data set",
                       description="Check every file and label row (CACHE/qc.csv, CACHE/qc.json), build the "
                       "resized uint8 cache (reused when its parameters and sources are unchanged) and "
                       "write the train/val split (CACHE/split.csv).")
    p.add_argument("data", type=Path, help="folder in the Kaggle layout (stage_2_train_labels.csv, "
                   "stage_2_train_images/, ...)")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    p.add_argument("--size", type=_count, default=256, help="cached image size in pixels (default 256)")
    p.add_argument("--val-fraction", type=float, default=None, help="share of images for validation, which tunes "
                   "the thresholds (default 0.1, raised for small sets to reach about 50 images, at most 0.25)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--groups", type=Path, default=None, help="CSV patientId,group: images of one group "
                   "(e.g. one person) stay in one split")
    p.add_argument("--subset", choices=["train", "test"], default="train",
                   help="train (labelled, split) or test (stage_2_test_images, no labels)")
    p.add_argument("--workers", type=_count, default=None, help="processes (default: all cores)")
    p.add_argument("--folds", type=_count, default=5, help="folds written to split.csv for train --folds K "
                   "(default 5; stratified and grouped like the split)")
    p.add_argument("--labels", type=Path, default=None, metavar="CSV", help="Kaggle-format labels to use instead of "
                   "DATA/stage_2_train_labels.csv, e.g. the review page's export (reviewed_labels.csv); images it "
                   "does not name are left out (listed in qc.csv)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train Mask R-CNN on a prepared cache",
                       description="Train Mask R-CNN with Lightning into a run folder (config.yaml, env.txt, "
                       "metrics.csv, weights/best.ckpt and last.ckpt, plots/). --resume continues a run from "
                       "its last checkpoint with the same schedule.",
                       epilog=f"Environment: {memory.ENV}=0 leaves glibc's malloc at its defaults; "
                       "by default training keeps freed blocks instead of returning them to the system after each "
                       "step (faster steps: docs/benchmarks-history.md, training step).")
    p.add_argument("--config", default=None, help="the recipe: demo, rsna or seed (the packaged YAMLs, from any "
                   "folder) or a YAML file's path")
    p.add_argument("--data", type=Path, required=True, help="cache folder written by pneumodet prepare "
                   "(its size must equal data.image_size)")
    p.add_argument("--run", type=Path, default=None, help="run folder (default: runs/NAME, auto-incremented)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where new run folders go (default ./runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value, e.g. --set train.epochs=4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from weights/last.ckpt "
                   "(with --folds: finish the folds of the folds folder in --run)")
    p.add_argument("--folds", type=_count, default=None, metavar="K",
                   help="train K runs, one per fold of the cache's split.csv (prepare --folds K), into one folder "
                   "(--run, default runs/NAME-Kfolds) holding fold-1 .. fold-K; evaluate that folder to tune on "
                   "the out-of-fold predictions, predict with it for the ensemble")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="train a recipe on synthetic films and keep its weights as a start",
                       description="Draw --images synthetic films from the variants recipes are chosen on (never a "
                       "held-out one), prepare and train --config on them, and write the model's weights to --out "
                       "(and how they were made to OUT.json). Start a run from them with --set model.weights=OUT; "
                       "model.weights=synth is the file pneumodet packages, made by pneumodet pretrain --config demo. "
                       "Killed, the same command goes on where it stopped.")
    p.add_argument("--config", default="demo", help="the recipe to pretrain (default demo); model.weights=synth in it "
                   "starts from random weights")
    p.add_argument("--out", type=Path, required=True, help="the weights file to write (never overwritten)")
    p.add_argument("--work", type=Path, default=None, help="folder for the synthetic data, cache and run (default "
                   "OUT.work)")
    p.add_argument("--images", type=_count, default=pretraining.IMAGES, help="synthetic training films, 10%% of "
                   f"them for val (default {pretraining.IMAGES})")
    p.add_argument("--seed", type=int, default=pretraining.SEED, help=f"the synthetic set's seed (default "
                   f"{pretraining.SEED})")
    p.add_argument("--variant", default=pretraining.VARIANTS, help="variants to draw from, joined by commas "
                   f"(default {pretraining.VARIANTS}; held-out ones are refused)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value (repeatable)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("distil", help="add a teacher's sure answers on unlabelled images to a cache: one model "
                       "then learns from an ensemble",
                       description="Predict every .dcm in IMAGES with TEACHER (a run, a folds folder or several runs: "
                       "an ensemble, with its tuned post-processing) and write the cache OUT: the labelled cache "
                       "--data unchanged (its split kept, so val is still true labels only) plus the images the "
                       "teacher is sure of, for training only. Pseudo-positive: every box the teacher keeps scores "
                       ">= --min-score (those boxes are the labels). Pseudo-negative: it keeps no box and the image "
                       "scores < --negative-below. Any other image is left out. OUT/pseudo_labels.csv holds every "
                       "verdict, OUT/distil.json the rule and counts. Then: pneumodet train --config CONFIG --data "
                       "OUT (the student: one model, predict's cost of one).")
    p.add_argument("teacher", type=Path, nargs="+", help="run folder, folds folder, or several run folders (an "
                   "ensemble, as predict takes them)")
    p.add_argument("images", type=Path, help="folder of unlabelled .dcm files (e.g. stage_2_test_images); images "
                   "the labelled cache already has are skipped")
    p.add_argument("--data", type=Path, required=True, help="the labelled cache (pneumodet prepare) the student "
                   "trains and is tuned on")
    p.add_argument("--out", type=Path, required=True, help="the student's cache folder to write (another folder than "
                   "--data)")
    p.add_argument("--min-score", type=_between(0, 1, low_open=True), default=0.9,
                   help="a kept box becomes a label only at this score or more; an image with any kept box below "
                   "it is left out (default 0.9)")
    p.add_argument("--negative-below", type=_between(0, 1), default=None,
                   help="an image with no kept box is a pseudo-negative only below this image score (default: half "
                   "the tuned gate threshold, or half the box score threshold without a gate)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="the teacher's flip TTA (default: as its evaluate tuned)")
    p.add_argument("--engine", choices=ENGINES, default=None, help="where the teacher's convolutions run (as predict)")
    p.add_argument("--workers", type=_count, default=2, help="data-loading processes (default 2)")
    p.set_defaults(func=cmd_distil)

    p = sub.add_parser("evaluate", help="tune the post-processing on val; score another labelled set with it frozen",
                       description="Without --split all: predict the run's own val split, tune score threshold, gate "
                       "threshold, NMS IoU, max boxes and box shrink on it, and write RUN/metrics.json (the run's "
                       "tuning, which predict and serve follow; written by nothing else), RUN/report/*.csv and "
                       "RUN/plots. With --data CACHE --split all: an external test. Every image of another "
                       "labelled set is predicted and post-processed with the run's frozen tuning and scored into "
                       "RUN/external/NAME/ (metrics.json, predictions/, report/, plots/); the run's own files are "
                       "not touched. Every RSNA mAP, AUC, sensitivity, specificity, PPV and NPV comes with its 95 "
                       "% bootstrap interval (1,000 seeded resamples, by image, or by group where prepare --groups "
                       "gave groups); the report adds FROC, COCO AP, precision-recall and calibration.")
    p.add_argument("run", type=Path, help="run folder written by pneumodet train, or a folds folder (train --folds K): "
                   "each fold is predicted on its own val fold and post-processing is tuned on all of them")
    p.add_argument("--data", type=Path, default=None, help="cache folder (default: the one the run trained on)")
    p.add_argument("--split", choices=["val", "all"], default="val",
                   help="val: the run's own val images, tuned on (default); all: every image of --data, another "
                   "labelled set, scored with the frozen tuning (an external test)")
    p.add_argument("--name", default=None, help="with --split all: the report folder's name under RUN/external/ "
                   "(default: the cache folder's name)")
    p.add_argument("--retune", action="store_true", help="with --split all: tune the post-processing on that set "
                   "instead of using the run's (reported as an optimistic figure; metrics.json is never changed)")
    p.add_argument("--reuse", action="store_true", help="re-score the saved predictions (RUN/predictions/val.csv, or "
                   "the external set's) without the model, if they were made by the same weights and settings")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="predict val with horizontal-flip TTA and tune for it (default: the config's "
                   "predict.hflip_tta); metrics.json records it and predict follows it")
    p.add_argument("--tta-scales", type=_between(0.25, 4), nargs="+", default=None, metavar="S",
                   help="with TTA, also predict each image at these multiples of the run's input size (e.g. 1 1.25; "
                   "each size is a pass and a flipped pass, boxes fused) and tune for them (default: the config's "
                   "predict.tta_scales); metrics.json records them and predict follows")
    p.add_argument("--box-refine", type=_count_up_to(8), default=None, metavar="N",
                   help="run the box head N more times over its own detections, each moving a box halfway to "
                   "the head's new regression and averaging its score with the new one (0: off; default: the "
                   "config's predict.box_refine); metrics.json records it and predict follows")
    p.add_argument("--box-vote", action=argparse.BooleanOptionalAction, default=None,
                   help="make each box the model keeps the score-weighted mean of the boxes its NMS merged into "
                   "it, so that two near-equal boxes do not decide by a last-digit difference (default: the "
                   "config's predict.box_vote, on except in seed.yaml); metrics.json records it and predict "
                   "follows")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict a folder of DICOMs into a Kaggle submission",
                       description="Predict every .dcm in IMAGES_DIR and write a Kaggle submission "
                       "(patientId,PredictionString in each image's own pixels) plus NAME.boxes.csv (one row "
                       "per box) beside it. Uses the run's tuned post-processing (metrics.json) unless overridden. "
                       "Several runs, or a folds folder, predict as an ensemble: each model's boxes (after its own "
                       "flip TTA) are merged by weighted box fusion and their gates averaged.")
    p.add_argument("run", type=Path, nargs="+", help="run folder, folds folder (train --folds K; post-processing "
                   "tuned out of fold by evaluate), or several run folders (the first one's post-processing)")
    p.add_argument("images", type=Path, help="folder of .dcm files (e.g. stage_2_test_images; .DCM counts too, "
                   "hidden files and the *.sr.dcm reports of --dicom-sr do not)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument("--threshold", type=_between(0, 1), default=None, help="score threshold in [0, 1] (default: tuned)")
    p.add_argument("--nms", type=_between(0, 1), default=None, help="NMS IoU between boxes, in [0, 1] (default: tuned)")
    p.add_argument("--max-boxes", type=_count, default=None, help="boxes per image at most (default: tuned)")
    p.add_argument("--shrink", type=_between(0, 1.5, low_open=True), default=None, help="box shrink factor about each centre, in (0, 1.5] (default: tuned)")
    p.add_argument("--gate", type=_between(0, 1), default=None, help="image-level gate threshold in [0, 1]: images "
                   "the gate scores below keep no box; 0 turns it off (default: tuned; runs with model.gate only)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="horizontal-flip test-time augmentation, boxes merged by weighted box fusion (default: as "
                   "evaluate tuned the thresholds, since TTA changes the scores; evaluate --tta tunes for it)")
    p.add_argument("--workers", type=_count, default=2, help="data-loading processes (default 2)")
    p.add_argument("--batch-size", type=_count, default=None, help="images per batch (default: config)")
    p.add_argument("--devices", type=_count, default=1, help="processes per node, each predicting its share of the "
                   "files (Lightning's launcher, as train.devices); rank 0 writes the one submission (default 1)")
    p.add_argument("--num-nodes", type=_count, default=1, help="machines, each running the same command with "
                   "NODE_RANK, MASTER_ADDR and MASTER_PORT set (as train.num_nodes); IMAGES and --out on shared "
                   "storage (default 1)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="where the convolutions run: onnx (ONNX Runtime, after pneumodet export RUN), torch, or auto "
                   "(default: onnx when the run has a current export and onnxruntime is installed)")
    p.add_argument("--dicom-sr", type=Path, default=None, metavar="OUT_DIR",
                   help="also write one DICOM Structured Report per image into OUT_DIR (ID.sr.dcm: TID 1500, each "
                   "box a planar rectangle in the image's own pixels with its confidence, the image score, the "
                   "algorithm and version, referencing the source image's UIDs) for a PACS or viewer")
    p.add_argument("--dicomweb", default=None, metavar="URL", help="first pull the radiographs of --study from this "
                   "DICOMweb root (QIDO-RS, WADO-RS) into IMAGES, one SOPInstanceUID.dcm each, then predict them")
    p.add_argument("--study", default=None, metavar="UID", help="the StudyInstanceUID to pull with --dicomweb")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run's convolutions to ONNX: the faster CPU inference engine",
                       description="Export the trained model's backbone, FPN and RPN head (most of its FLOPs) to "
                       "RUN/engine/dense.onnx and its box head (the fully connected layers on each RoI) to "
                       "RUN/engine/heads.onnx. predict, serve and the Python API then run those parts in ONNX "
                       "Runtime (needs pip install 'pneumodet[onnx]'); proposals, RoIAlign, gate and "
                       "post-processing stay in PyTorch. It prints how far the two paths differ and each one's "
                       "time for the dense part. A "
                       "later training of the run makes the export stale: predict then warns and uses PyTorch.")
    p.add_argument("run", type=Path, help="run folder (the weights its train.checkpoint chose: last.ckpt or "
                   "best.ckpt), or a folds folder (each fold's run)")
    p.add_argument("--int8", action="store_true", help="also quantize to int8 (the dense part calibrated on the "
                   "run's cached training images, the box head dynamically) and use it only if its boxes agree "
                   "with PyTorch on >= 98%% of the val images (same count, each at IoU >= 0.95). Tried fastest first: "
                   "both parts int8 with the RPN head's two output convolutions fp32 (they rank the proposals); the "
                   "whole RPN head fp32; the int8 box head alone. The figures go into RUN/engine/engine.json")
    p.add_argument("--calibration", type=_count, default=64, help="training images to calibrate int8 on (default 64)")
    p.add_argument("--check-images", type=_count, default=200, help="val images to check int8 on (default 200)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("score", help="score a submission against Kaggle-format labels (RSNA mAP)",
                       description="Print JSON with rsna_map and per-threshold precision of SUBMISSION "
                       "against LABELS_CSV (patientId,x,y,width,height,Target).")
    p.add_argument("submission", type=Path, help="submission CSV (patientId,PredictionString)")
    p.add_argument("--labels", type=Path, required=True, help="labels CSV in the Kaggle format")
    p.add_argument("--strict", action="store_true", help="exit 2 when the submission and the labels do not name the "
                   "same images (without it: a warning on stderr, and a labelled image with no row scores as no box)")
    p.add_argument("--against", type=Path, default=None, metavar="SUBMISSION_B",
                   help="another submission for the same images: adds its score and the paired difference (this one "
                   "minus B, both on the same 1,000 bootstrap resamples of the labelled images) with its 95 %% "
                   "interval, under \"against\"")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("compare", help="paired bootstrap: is report A better than report B on the same images?",
                       description="Compare two evaluate reports on the images both scored: a run folder (its val "
                       "report) or an external report (RUN/external/NAME), e.g. an ensemble and one of its folds on "
                       "one external set. Prints each one's RSNA mAP and image-level ROC AUC and the difference A - B "
                       "with its 95 % interval, both systems resampled together (1,000 seeded resamples, by group "
                       "where both reports have groups).")
    p.add_argument("a", type=Path, help="report folder A (a run folder, or RUN/external/NAME)")
    p.add_argument("b", type=Path, help="report folder B")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("serve", help="web page and HTTP API to review predictions and run the model",
                       description="Start the review web application for a run: overview (metrics, plots), "
                       "review (val images, true and predicted boxes, worst first; judge each image, draw boxes, "
                       "export the verdicts as RSNA labels; saved in RUN/review/verdicts.json) and try-it (upload "
                       "DICOMs). JSON API: POST /api/predict, GET /api/health. Listens on 127.0.0.1 unless told "
                       "otherwise.")
    p.add_argument("run", type=Path, help="run folder (evaluate it first for the review page)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_count, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=_between(0, 4096, low_open=True), default=64,
                   help="largest accepted upload in MB (default 64); larger ones are refused before they are read")
    p.add_argument("--max-decodes", type=_count, default=2, help="uploads decoded and predicted at once (default 2; "
                   "each decode is bounded to 25 M pixels, ~150 MB at most)")
    p.add_argument("--max-queue", type=_count, default=8, help="uploads that may wait for a decode (default 8); "
                   "beyond that a request is answered 503 with Retry-After before its body is read")
    p.add_argument("--token", default=None, help="access token every request must carry (required unless --host is "
                   "loopback; default: $PNEUMODET_TOKEN); open the printed address once and the browser keeps it")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host header name to accept, e.g. a DNS name for --host ADDRESS (repeatable); "
                   "others are refused, against DNS rebinding")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("listen", help="a DICOM node: radiographs in from a PACS, findings back as SR and GSPS",
                       description="Receive chest radiographs over the DICOM network (C-STORE: CR, DX, Secondary "
                       "Capture), predict each, and send back a DICOM SR (TID 1500) and a Grayscale Softcopy "
                       "Presentation State that draws the boxes, by C-STORE or STOW-RS. Every instance is on disk "
                       "(SPOOL/inbox) before it is acknowledged; results wait in SPOOL/outbox, retried with backoff "
                       "while the destination is down, and sent once (SPOOL/sent.log). SPOOL/status.json holds the "
                       "queue depths and the last errors (--status prints it).")
    p.add_argument("run", type=Path, help="run folder (or folds folder) that predicts")
    p.add_argument("--spool", type=Path, required=True, help="folder for received instances and pending results "
                   "(created; what a killed node left there is predicted and sent when it starts again)")
    p.add_argument("--send-to", default=None, metavar="AE@HOST:PORT", help="C-STORE the results to this peer")
    p.add_argument("--stow", default=None, metavar="URL", help="or STOW-RS them to this DICOMweb root "
                   "(e.g. http://pacs:8042/dicom-web)")
    p.add_argument("--ae-title", default="PNEUMODET", help="this node's AE title (default PNEUMODET)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "any other needs --allow)")
    p.add_argument("--port", type=int, default=11112, help="port (default 11112)")
    p.add_argument("--allow", action="append", default=[], metavar="AE@ADDRESS", help="a calling AE title and "
                   "address that may send (repeatable); others are answered 0x0124 (not authorised)")
    p.add_argument("--max-queue", type=_count, default=64, help="instances received but not yet predicted "
                   "(default 64); beyond that a C-STORE is answered 0xA700 (out of resources)")
    p.add_argument("--max-associations", type=_count, default=8, help="associations at once (default 8); more are "
                   "rejected")
    p.add_argument("--status", action="store_true", help="print SPOOL/status.json's figures and exit")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("demo", help="run the whole pipeline on synthetic data",
                       description="Run the pipeline end to end on synthetic data and print where each result is.")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default ./demo)")
    p.add_argument("--train", type=_count, default=1000, help="synthetic training images (default 1000)")
    p.add_argument("--test", type=_count, default=300, help="synthetic test images, scored at the end (default 300: "
                   "50 left differences of 0.1 in the noise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override configs/demo.yaml, e.g. --set train.steps=1200 (its length in optimizer steps: "
                   "the recipe's 3000, which the demo shortens to 800 to fit 15 minutes on 2 cores; repeatable)")
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"pneumodet: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning  # a user reads the advice, not where in the code it came from
    try:
        args.func(args)
    except UserError as exc:
        print(f"pneumodet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunFailure as exc:
        print(f"pneumodet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`pneumodet score ... | head`): nothing left to tell it
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python's flush at exit would raise again)
        return 0
    except OSError as exc:
        from pneumodet.files import FULL_ERRNOS, OUTPUT_ERRNOS, output_error

        if exc.errno in FULL_ERRNOS and not exc.filename:  # the file system is full or read-only: say so
            print(f"pneumodet {args.command}: error: {exc.strerror} while writing its outputs", file=sys.stderr)
            return 2
        if exc.errno not in OUTPUT_ERRNOS or not exc.filename:
            raise
        # a path the user named cannot be written (read-only, full disk, a file where a folder must be)
        print(f"pneumodet {args.command}: error: {output_error(exc.filename, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pneumodet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
