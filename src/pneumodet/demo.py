"""``pneumodet demo``: the whole pipeline on synthetic data, on a CPU, in minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pneumodet.config_files import load_config

#: the demo's closing lines, as printed
OUTPUT_FILE = "demo_output.txt"
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
#: the demo trains demo.yaml's recipe for fewer steps than its 3,000, so that make demo stays within 15 minutes
#: on 2 cores; --set train.steps=... overrides it
DEMO_STEPS = 800


def untrained_map(config, cache: Path) -> float:
    """Return the val RSNA mAP (best score threshold) of the same model with random weights (not pretrained)."""
    from dataclasses import replace

    from pneumodet.data.dataset import PneumoniaDataset
    from pneumodet.detector import Detector
    from pneumodet.forward import TorchBackend
    from pneumodet.model import build_model
    from pneumodet.postprocess import PostProcess
    from pneumodet.pretrain import without_pretraining
    from pneumodet.saved import labelled_set, predict_dataset
    from pneumodet.settings import InferenceSettings
    from pneumodet.tuning import THRESHOLD, tune

    torch.manual_seed(config.train.seed)
    config = without_pretraining(config)
    model = build_model(config.model, config.data.image_size)
    start = replace(PostProcess.from_config(config.predict), score_threshold=0.0)
    backend = TorchBackend(model, channels_last=config.predict.channels_last)
    detector = Detector([backend], config, InferenceSettings.from_config(config.predict), start)
    dataset = PneumoniaDataset(cache, config.data.image_size, "val")
    val = labelled_set(dataset, predict_dataset(detector, dataset, progress=False))
    return tune(val, start, THRESHOLD, gate=False)[1]


def run_demo(out: str | Path, n_train: int, n_test: int, overrides: list[str] = ()) -> dict:
    """Run synth -> prepare -> train -> evaluate -> predict -> score under ``out``; return the summary."""
    from pneumodet.data.prepare import prepare
    from pneumodet.data.synth import TEST_TRUTH, synthesize
    from pneumodet.evaluate import evaluate
    from pneumodet.files import check_output_dir, write_text_atomic
    from pneumodet.io.layout import TEST_IMAGES
    from pneumodet.predict import predict_folder
    from pneumodet.training.train import train

    out = check_output_dir(out)  # run again: same data (deterministic), a new run folder (runs/demo-2, ...)
    config = load_config(DEMO_CONFIG, [f"train.steps={DEMO_STEPS}", *overrides])
    recipe = load_config(DEMO_CONFIG).train.steps
    data, cache = out / "data", out / "cache"
    start = time.perf_counter()
    timings = {}

    def step(name: str, message: str) -> None:
        print(f"[{len(timings) + 1}/6] {name}: {message}", flush=True)
        timings[name] = time.perf_counter()

    step("synth", f"{n_train} train + {n_test} test synthetic RSNA-format DICOMs -> {data}")
    synthesize(data, n_train, n_test, seed=0)
    step("prepare", f"quality control, {config.data.image_size} px cache, train/val split -> {cache}")
    prepared = prepare(data, cache, size_px=config.data.image_size, val_fraction=0.2)
    shortened = f", shortened from the recipe's {recipe} to fit the demo" if config.train.steps < recipe else ""
    step("train", f"{config.model.backbone} Mask R-CNN from scratch at {config.data.image_size} px, "
         f"{config.train.steps} optimizer steps ({DEMO_CONFIG.name}{shortened})")
    before = untrained_map(config, cache)
    result = train(config, cache, runs_base=out / "runs")
    step("evaluate", "predict val, tune post-processing, plots")
    metrics = evaluate(result.run, cache)
    step("predict", f"the synthetic test images -> {out / 'submission.csv'}")
    predict_folder(result.run, data / TEST_IMAGES, out / "submission.csv")
    step("score", f"the submission against {TEST_TRUTH}")
    from pneumodet.report.submission import score_submission
    from pneumodet.stats import with_ci

    test_score = score_submission(out / "submission.csv", data / TEST_TRUTH)
    summary = {
        "val_rsna_map_untrained": before,
        "val_rsna_map_trained": metrics["rsna_map"],
        "val_rsna_map_trained_ci": metrics["rsna_map_ci"],
        "test_rsna_map": test_score["rsna_map"],
        "test_rsna_map_ci": test_score["rsna_map_ci"],
        "val_rsna_map_without_gate": metrics.get("rsna_map_without_gate"),
        "image_level_roc_auc": metrics["image_level"]["roc_auc"],
        "gate_roc_auc": metrics["image_level"]["gate_roc_auc"],
        "max_box_roc_auc": metrics["image_level"]["max_box_roc_auc"],
        "postprocess": metrics["postprocess"],
        "qc_problems": sum(prepared.summary["problems"].values()),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "run": str(result.run),
    }
    write_text_atomic(out / "demo_summary.json", json.dumps(summary, indent=2) + "\n")
    run = result.run
    gate = (f" ({metrics['rsna_map_without_gate']:.3f} without the image-level gate)"
            if "rsna_map_without_gate" in metrics else "")
    trained = with_ci(metrics["rsna_map"], metrics["rsna_map_ci"])
    tested = with_ci(test_score["rsna_map"], test_score["rsna_map_ci"])
    lines = [f"val RSNA mAP (tuned on val): untrained {before:.3f} -> trained {trained}{gate}; synthetic test RSNA "
             f"mAP (never tuned on) {tested}; {summary['wall_time_s']:.0f} s in all (intervals: 95 %, bootstrap over "
             "images)", "results:"]
    for what, where in [("data (Kaggle layout)", data), ("QC report", cache / "qc.csv"), ("run folder", run),
                        ("metrics per epoch", run / "metrics.csv"), ("evaluation", run / "metrics.json"),
                        ("loss curves", run / "plots" / "loss_curves.png"),
                        ("augmentations", run / "plots" / "augmentations.png"),
                        ("predicted vs true boxes", run / "plots" / "val_examples"),
                        ("FROC, PR, calibration", run / "plots"), ("report tables", run / "report"),
                        ("submission", out / "submission.csv"), ("summary", out / "demo_summary.json")]:
        lines.append(f"  {what:<26} {where}")
    lines.append(f"review them in a browser: pneumodet serve {run}")
    print("\n" + "\n".join(lines))
    # what README's quick start shows: make readme copies it there, so the two never disagree
    write_text_atomic(out / OUTPUT_FILE, "\n".join(lines) + "\n")
    return summary
