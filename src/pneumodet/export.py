"""``pneumodet export RUN [--int8]``: the CPU engine for a trained run, checked against PyTorch.

fp32 always; ``int8`` also quantizes the exported graphs (the dense part calibrated on the run's training
images, the box head dynamically) and makes them the active engine only if their boxes agree with PyTorch fp32
on the run's val images: the same number of kept boxes (at the tuned post-processing) and each matched at IoU
>= 0.95 on at least ``MIN_AGREEMENT`` of the images. The candidates, fastest first: both parts int8 with the
RPN head's output convolutions fp32; the same with the whole RPN head fp32; the int8 box head alone with the
fp32 dense part (its quantization is the mildest); else the engine stays fp32. The figures go into
``RUN/engine/engine.json`` either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pneumodet import onnx_export, onnx_runtime
from pneumodet.boxes import iou_xyxy
from pneumodet.checkpoints import load_trained, run_dataset
from pneumodet.detector import Detector, load_detector
from pneumodet.errors import UserError
from pneumodet.onnx_runtime import HEADS_FILE, HEADS_INT8_FILE, INT8_FILE, ONNX_FILE, OnnxBackend
from pneumodet.runs import RunPaths

MIN_AGREEMENT = 0.98
MATCH_IOU = 0.95


@dataclass(frozen=True)
class ExportResult:
    onnx: Path
    check: dict  # max_abs_diff, torch_ms, onnx_ms (fp32 export)
    int8: dict | None = None  # agreement, (rpn_head_agreement, heads_agreement,) images, calibration_images,
    # dense_ms, rpn_fp32 (what dense.int8.onnx keeps in fp32), active, heads_active, engine


def _images(run: Path, config, info: dict, split: str, limit: int) -> list[torch.Tensor]:
    """Return up to ``limit`` of the run's ``split`` images as the model takes them (from its cache)."""
    try:
        dataset = run_dataset(RunPaths(run), config, info, split)
    except (UserError, TypeError) as exc:
        raise UserError(f"--int8 calibrates on the run's cached images, which are unavailable: {exc}") from None
    picks = np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).round().astype(int) if len(dataset) else []
    return [dataset[int(i)][0] for i in picks]


def _backbone_inputs(detector: Detector, tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Return what the model's backbone receives for each image (after its own normalisation)."""
    model = detector.backends[0].model
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].float().contiguous().numpy()))
    try:
        for tensor in tensors:
            detector.candidates([tensor], [tuple(tensor.shape[-2:])])
    finally:
        hook.remove()
    return seen


def agreement(reference: Detector, candidate: Detector, tensors: list[torch.Tensor]) -> tuple[float, int]:
    """Return the share of images whose kept boxes agree between two detectors, and how many were compared."""
    same = 0
    for tensor in tensors:
        size = tuple(tensor.shape[-2:])
        want, got = (d.finish("x", d.candidates([tensor], [size])[0], size) for d in (reference, candidate))
        if len(want.scores) != len(got.scores):
            continue
        if len(want.scores) == 0 or (iou_xyxy(want.boxes_orig_xyxy, got.boxes_orig_xyxy).max(axis=1) >= MATCH_IOU).all():
            same += 1
    return (same / len(tensors) if tensors else float("nan")), len(tensors)


def export_run(run: str | Path, *, int8: bool = False, calibration: int = 64, checked: int = 200) -> ExportResult:
    """Export ``run``'s engine (and, with ``int8``, its checked int8 form); return what was written and measured."""
    run = Path(run)
    onnx_runtime.require_onnx("pneumodet export")
    model, config, info = load_trained(run)
    folder = run / onnx_runtime.ENGINE_DIR
    path = onnx_export.export_onnx(model, config.data.image_size, Path(info["path"]), folder)
    check = onnx_export.check_export(model, run, config.data.image_size)
    if not int8:
        return ExportResult(path, check)
    reference = load_detector(run, engine="torch")
    calibrate_on = _images(run, config, info, "train", calibration)
    check_on = _images(run, config, info, "val", checked)
    if not calibrate_on or not check_on:
        raise UserError(f"{run}: --int8 needs training images to calibrate on and val images to check on")
    calibration_inputs = _backbone_inputs(reference, calibrate_on)
    onnx_export.quantize_heads_int8(folder)
    meta = onnx_runtime.read_meta(folder)
    # the candidates, fastest first: (how much of the RPN head stays fp32 in the int8 dense part, or None for the
    # fp32 dense part; where its agreement goes in engine.json)
    candidates = [("outputs", "agreement"), ("head", "rpn_head_agreement"), (None, "heads_agreement")]
    chosen = (ONNX_FILE, HEADS_FILE)
    checked_shares, written = {}, None
    for rpn_fp32, key in candidates:
        dense_file = ONNX_FILE if rpn_fp32 is None else INT8_FILE
        if rpn_fp32 is not None:
            onnx_export.quantize_int8(folder, calibration_inputs, rpn_fp32=rpn_fp32)
            written = rpn_fp32  # what dense.int8.onnx keeps in fp32: the last one written
        quantized = Detector([OnnxBackend(b.model, run, file=dense_file, heads_file=HEADS_INT8_FILE)
                              for b in reference.backends], reference.config, reference.settings,
                             reference.postprocess, paths=reference.paths, info=reference.info)
        checked_shares[key], compared = agreement(reference, quantized, check_on)
        if checked_shares[key] >= MIN_AGREEMENT:
            chosen = (dense_file, HEADS_INT8_FILE)
            break
    int8_ms = onnx_export.check_export(model, run, config.data.image_size, file=INT8_FILE)["onnx_ms"]
    active = chosen[0] == INT8_FILE
    meta["int8"] = {**checked_shares, "images": compared, "match_iou": MATCH_IOU, "min_agreement": MIN_AGREEMENT,
                    "calibration_images": len(calibrate_on), "dense_ms": int8_ms, "rpn_fp32": written}
    meta["active"], meta["active_heads"] = chosen
    onnx_runtime.write_meta(folder, meta)
    return ExportResult(path, check, {**meta["int8"], "active": active, "heads_active": chosen[1] == HEADS_INT8_FILE,
                                      "engine": onnx_runtime.backend_label(*chosen)})
