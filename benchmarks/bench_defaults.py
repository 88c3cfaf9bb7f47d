"""Inference defaults by accuracy and speed: RPN proposals, box voting and the int8 engine, as a user runs them.

Accuracy: for each README-flow run (``DEFAULTS_RUNS``: ``RUN=DATA`` pairs separated by spaces, DATA the synthetic
folder the run's cache came from; without it, the README flow runs first on ``DEFAULTS_VARIANTS``, by default
``wide`` and the held-out variants), a copy of the run per setting is tuned (``evaluate``), predicts DATA's
test images (``predict``) and is scored against their truth, with the paired difference from the run's defaults
(``score --against``). A setting of proposals rewrites the copy's checkpoint config
(``model.rpn_post_nms_test``), which is where a run keeps it.

Speed: ``pneumodet predict``, the whole command, over the first 150 test DICOMs of the first pair, each setting
in turn, twice (what predict says, and the whole command's wall time); and R50-FPN (rsna.yaml at 512 px, bf16,
flip TTA, random weights: cost does not depend on the weights) at 300 proposals and at 100 (its default since
2026-12-05), in PyTorch and with the ONNX Runtime engine (fp32: whether int8 may run is export's check on a trained
model's boxes, so it is not timed for random weights). Run alone on an idle machine: ``python benchmarks/run.py defaults``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_variants import _cli

from pneumodet.data.synth import HELD_OUT

SETTINGS = [  # label, proposals (None: the run's), evaluate options, export int8
    ("the run's defaults", None, [], False),
    ("50 proposals", 50, [], False),
    ("300 proposals", 300, [], False),
    ("no box voting", None, ["--no-box-vote"], False),
    ("int8 engine", None, [], True),
]
TIMED = 150


def with_proposals(run: Path, proposals: int) -> None:
    """Rewrite ``run``'s checkpoints to keep ``proposals`` RPN proposals at inference."""
    from pneumodet.checkpoints import atomic_save, read_checkpoint

    for ckpt in (run / "weights").glob("*.ckpt"):
        checkpoint = read_checkpoint(ckpt)  # verified, weights only, as evaluate and predict read it
        checkpoint["pneumodet"]["config"]["model"]["rpn_post_nms_test"] = proposals
        atomic_save(checkpoint, ckpt)


def variant_copy(run: Path, tmp: Path, label: str, proposals: int | None, options: list[str], int8: bool) -> Path:
    """Return a copy of ``run`` tuned (``evaluate``) with a setting; with ``int8``, exported and int8 if its check
    passed."""
    copy = tmp / label.replace(" ", "-").replace("'", "")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("engine", "external", "test*.csv"))
    if proposals is not None:
        with_proposals(copy, proposals)
    _cli("evaluate", str(copy), *options)
    if int8:
        _cli("export", str(copy), "--int8")
    return copy


def accuracy_rows(run: Path, data: Path, tmp: Path) -> tuple[list[tuple[str, str]], dict[str, Path]]:
    images, labels = data / "stage_2_test_images", data / "synthetic_test_labels.csv"
    rows, copies, baseline = [], {}, None
    for label, proposals, options, int8 in SETTINGS:
        copy = variant_copy(run, tmp, label, proposals, options, int8)
        copies[label] = copy
        out = copy / "test.csv"
        said = _cli("predict", str(copy), str(images), "--out", str(out))
        engine = next(line for line in said.splitlines() if "images/s" in line)
        against = [] if baseline is None else ["--against", str(baseline)]
        score = json.loads(_cli("score", str(out), "--labels", str(labels), *against))
        figure = f"{score['rsna_map']:.3f} ({score['rsna_map_ci'][0]:.3f}-{score['rsna_map_ci'][1]:.3f})"
        if baseline is not None:
            d, ci = score["against"]["difference"], score["against"]["difference_ci"]
            figure += f", − defaults {d:+.3f} ({ci[0]:+.3f} to {ci[1]:+.3f})"
        if int8:
            figure += f"; predict said: {engine}"
        rows.append((f"{run.name} on {data.name}: {label}, test RSNA mAP", figure))
        baseline = baseline or out
    return rows, copies


def timed_predict(run: Path, images: Path, out: Path, *options: str) -> str:
    """Return what ``predict`` says of its speed, and the whole command's wall time (start-up included)."""
    from bench_engine import cli_images_per_s

    start = time.perf_counter()
    said = cli_images_per_s(run, images, out, 1, *options)
    return f"{said}; whole command {time.perf_counter() - start:.1f} s"


def speed_rows(copies: dict[str, Path], images: Path, tmp: Path) -> list[tuple[str, str]]:
    timed = tmp / "timed"
    timed.mkdir(exist_ok=True)
    for f in sorted(images.glob("*.dcm"))[:TIMED]:
        (timed / f.name).symlink_to(f)
    rows = []
    for round_ in (1, 2):
        for label, copy in copies.items():
            line = timed_predict(copy, timed, tmp / "speed.csv")
            rows.append((f"`predict` over {TIMED} DICOMs, {label}, round {round_}", line))
    return rows


def r50_rows(images: Path, tmp: Path) -> list[tuple[str, str]]:
    from bench_predict import _run_folder

    from pneumodet.config_files import load_config

    rows = []
    for proposals in (300, 100):
        run = _run_folder(tmp / f"r50-{proposals}", load_config("configs/rsna.yaml", [
            "model.weights=none", f"model.rpn_post_nms_test={proposals}"]))
        torch_line = timed_predict(run, images, tmp / "r50.csv", "--engine", "torch")
        _cli("export", str(run))
        onnx_line = timed_predict(run, images, tmp / "r50.csv", "--engine", "onnx")
        rows.append((f"`predict` over {TIMED} DICOMs, R50-FPN rsna.yaml 512 px, {proposals} proposals, PyTorch / "
                     "ONNX Runtime fp32", f"{torch_line} / {onnx_line}"))
    return rows


def run():
    """Yield each row as it is measured."""
    pairs = [p.split("=", 1) for p in os.environ.get("DEFAULTS_RUNS", "").split()]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not pairs:
            from bench_heldout import flow

            for variant in os.environ.get("DEFAULTS_VARIANTS", "").split() or ("wide", *HELD_OUT):
                flow(tmp, variant, [])
                pairs.append((str(tmp / f"run-{variant}"), str(tmp / f"data-{variant}")))
        first = None
        for run_dir, data in pairs:
            got, copies = accuracy_rows(Path(run_dir), Path(data), tmp / Path(run_dir).name)
            yield from got
            first = first or (copies, Path(data) / "stage_2_test_images")
        yield from speed_rows(*first, tmp)
        yield from r50_rows(tmp / "timed", tmp)
