"""What tuning the post-processing on a small val split costs, against tuning it on the labelled test set itself.

Usage: python benchmarks/tuning_check.py RUN DATA [RUN DATA ...]

RUN is an evaluated run folder; DATA a ``pneumodet synth`` folder (stage_2_test_images/ and
synthetic_test_labels.csv). The test images are cached with their labels once (under RUN/tuning_check/), then
the run's test candidates are scored with post-processing tuned on val (as ``evaluate`` does), on val with the
gate off, on val with a smoothed score-threshold curve, with a fixed 0.5 threshold, and on the test itself
(an upper bound no user can reach). Prints one markdown row per run (BENCHMARKS.md: "Is val enough").
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np


def _test_cache(run: Path, data: Path, size: int) -> Path:
    from pneumodet.data.prepare import prepare

    root = run / "tuning_check"
    layout, cache = root / "data", root / "cache"
    if not (cache / "split.csv").is_file():
        layout.mkdir(parents=True, exist_ok=True)
        link = layout / "stage_2_train_images"
        if not link.exists():
            os.symlink((data / "stage_2_test_images").resolve(), link)
        (layout / "stage_2_train_labels.csv").write_bytes((data / "synthetic_test_labels.csv").read_bytes())
        prepare(layout, cache, size_px=size, workers=1, progress=False)
    return cache


def _smoothed(val, pp):
    """``pp`` with the score threshold whose mean val mAP with its two grid neighbours is highest."""
    from pneumodet.tuning import GRID, score

    ts = GRID["score_threshold"]
    scores = [score(val, replace(pp, score_threshold=t)) for t in ts]
    smooth = [np.mean(scores[max(0, i - 1): i + 2]) for i in range(len(ts))]
    return replace(pp, score_threshold=ts[int(np.argmax(smooth))])


def check(run: Path, data: Path) -> str:
    from pneumodet.checkpoints import run_dataset
    from pneumodet.data.dataset import PneumoniaDataset
    from pneumodet.detector import load_detector
    from pneumodet.postprocess import PostProcess
    from pneumodet.saved import labelled_set, predict_dataset
    from pneumodet.tuning import score, tune

    detector = load_detector(run, hflip_tta=False)
    start = PostProcess.from_config(detector.config.predict)
    own = run_dataset(detector.paths, detector.config, detector.info, "val")
    val = labelled_set(own, predict_dataset(detector, own, progress=False))
    other = PneumoniaDataset(_test_cache(run, data, detector.config.data.image_size), detector.image_size, "all")
    test = labelled_set(other, predict_dataset(detector, other, progress=False, label="test"))
    tuned, _ = tune(val, start)
    no_gate, _ = tune(val, start, gate=False)
    bound, _ = tune(test, start)
    rules = [tuned, replace(no_gate, gate_threshold=0.0), _smoothed(val, tuned),
             replace(start, gate_threshold=0.0, score_threshold=0.5), bound]
    return f"| {run.name} | " + " | ".join(f"{score(test, pp):.3f}" for pp in rules) + " |"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    print("| run | tuned on val | on val, gate off | on val, smoothed threshold | threshold 0.5 | tuned on test |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run, data in zip(argv[::2], argv[1::2], strict=True):
        print(check(Path(run), Path(data)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
