"""The ONNX Runtime engine against PyTorch and a stock torchvision baseline, timed in one run.

Latency: one 1024² JPEG DICOM → boxes with R50-FPN (random weights: cost depends on the settings, not the
weights), the default path (100 proposals, fp32, channels-last) in PyTorch and with each form of
``pneumodet export``'s engine (fp32; the box head int8; both parts int8, with the RPN head's output
convolutions fp32 as export writes it first, and timed once each with the RPN head int8 too and all of it fp32);
the baseline is torchvision's own
``maskrcnn_resnet50_fpn`` at the same input size with its defaults (1000 proposals, masks), on a tensor
already in memory. Throughput: ``predict_folder`` over 200 DICOMs with each engine. The int8 engine's speed
is timed with scales calibrated on random images (speed does not depend on them). Agreement: a trained run
(make demo's, if present) predicted by PyTorch and by each engine over its synthetic test images: the share
of images whose kept boxes match one to one at IoU ≥ 0.95; for the int8 forms, ``pneumodet export --int8``'s
own check on the run's val images is reported beside it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_predict import _run_folder, latency

from pneumodet.io.layout import image_files
from pneumodet.onnx_runtime import (
    HEADS_FILE,
    HEADS_INT8_FILE,
    INT8_FILE,
    ONNX_FILE,
    OnnxBackend,
    read_meta,
    write_meta,
)

#: the engine's forms, by what engine.json makes active: (label, dense file, heads file)
ENGINE_FORMS = (("fp32", ONNX_FILE, HEADS_FILE), ("int8 box head", ONNX_FILE, HEADS_INT8_FILE),
                ("int8", INT8_FILE, HEADS_INT8_FILE))


def activate(folder: Path, dense: str, heads: str) -> None:
    write_meta(folder, {**read_meta(folder), "active": dense, "active_heads": heads})


def stock_torchvision_ms(size: int, repeats: int = 10) -> float:
    import torchvision

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size,
                                                               max_size=size).eval()
    image = torch.rand(3, size, size)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model([image])
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def dense_runtimes(onnx_path: Path, size: int, repeats: int = 10) -> str:
    """Time the exported dense part alone in ONNX Runtime and, if installed (not a dependency), OpenVINO."""
    import importlib.util

    import onnxruntime as ort

    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    parts = [f"ONNX Runtime fp32 {median_ms(lambda: session.run(None, {'image': image})):.0f} ms"]
    if importlib.util.find_spec("openvino") is not None:
        import openvino as ov

        core = ov.Core()
        for hint in ("f32", "bf16"):
            compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                                   "INFERENCE_NUM_THREADS": torch.get_num_threads()})
            request = compiled.create_infer_request()
            parts.append(f"OpenVINO {hint} {median_ms(lambda r=request: r.infer({0: image})):.0f} ms")
    else:
        parts.append("OpenVINO not installed")
    return ", ".join(parts)


def cli_images_per_s(run: Path, images: Path, out: Path, devices: int, *options: str) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "predict", str(run), str(images), "--out", str(out),
                           "--workers", "1", "--devices", str(devices), *options], capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip().splitlines()[-1]}"
    return next(line for line in proc.stdout.splitlines() if "images/s" in line)


def agreement(run: Path, images: Path, tmp: Path) -> list[tuple[str, str]]:
    """Share of images whose kept boxes agree (same count, each matched at IoU >= 0.95) with PyTorch fp32."""
    import shutil

    from pneumodet.detector import Detector, image_tensor, load_detector
    from pneumodet.export import agreement as share_agreeing
    from pneumodet.export import export_run

    copy = tmp / "agree"
    shutil.copytree(run, copy)
    result = export_run(copy, int8=True)
    reference = load_detector(copy, engine="torch")
    tensors = [image_tensor(reference.read(f).pixels, reference.image_size) for f in image_files(images)[0]]
    rows = []
    q = result.int8
    checks = {"int8": f"; export's own check on {q['images']} val images {q['agreement']:.1%} with the RPN head's "
                      f"output convolutions fp32"
                      + (f", {q['rpn_head_agreement']:.1%} with the whole RPN head fp32" if "rpn_head_agreement" in q
                         else "") + f" ({q['rpn_fp32']} written), {'active' if q['active'] else 'not active'}"}
    if "heads_agreement" in q:
        checks["int8 box head"] = (f"; export's own check on {q['images']} val images {q['heads_agreement']:.1%}, "
                                   f"{'active' if q['heads_active'] else 'not active'}")
    for label, file, heads in ENGINE_FORMS:
        engine = Detector([OnnxBackend(b.model, copy, file=file, heads_file=heads) for b in reference.backends],
                          reference.config, reference.settings, reference.postprocess, info=reference.info)
        share, n = share_agreeing(reference, engine, tensors)
        extra = checks.get(label, "")
        rows.append((f"{label} engine vs PyTorch boxes at the tuned post-processing, demo model, synthetic test images",
                     f"{share:.1%} of {n} images the same{extra}"))
    return rows


def engine_latencies(run_dir: Path, size: int, files: list[Path]) -> list[tuple[str, float, dict]]:
    """Time the run with PyTorch, then export it and time each form of the ONNX Runtime engine (int8 scales
    calibrated on random images: speed does not depend on them); return (engine, seconds, parts) each. The
    last form (int8) stays active."""
    from pneumodet.checkpoints import load_trained
    from pneumodet.onnx_export import export_onnx, quantize_heads_int8, quantize_int8

    timed = [("PyTorch fp32", *latency(run_dir, files))]
    model, _, info = load_trained(run_dir)
    folder = run_dir / "engine"
    export_onnx(model, size, Path(info["path"]), folder)
    calibration = [np.random.default_rng(i).random((1, 3, size, size), dtype=np.float32) for i in range(8)]
    quantize_heads_int8(folder)
    # the other int8 dense forms export --int8 may write (everything int8: what it wrote before; the whole RPN
    # head fp32: its second candidate), timed first; then the default form, which stays written and active
    for rpn_fp32, label in (("none", "int8, RPN head int8 too"), ("head", "int8, whole RPN head fp32")):
        quantize_int8(folder, calibration, rpn_fp32=rpn_fp32)
        activate(folder, INT8_FILE, HEADS_INT8_FILE)
        timed.append((f"ONNX Runtime engine {label}", *latency(run_dir, files)))
    quantize_int8(folder, calibration)
    for label, dense, heads in ENGINE_FORMS:  # predict.engine auto: the export is used
        activate(folder, dense, heads)
        timed.append((f"ONNX Runtime engine {label}", *latency(run_dir, files)))
    return timed


def latency_rows(model: str, timed: list[tuple[str, float, dict]], baseline_ms: float) -> list[tuple[str, str]]:
    """One row per engine of ``engine_latencies``: its time per DICOM, the ratio to the stock baseline, its parts."""
    return [(f"one 1024² DICOM → boxes, {model}, 100 proposals, {label}",
             f"{seconds * 1e3:.0f} ms = {baseline_ms / (seconds * 1e3):.2f}× stock "
             f"({', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in parts.items())})") for label, seconds, parts in timed]


def no_p2_rows(tmp: Path, files: list[Path], baseline_ms: float) -> list[tuple[str, str]]:
    """R50-FPN at 256 px without the stride-4 level (``model.fpn_min_level: 3``, P3-P6): latency with PyTorch and
    each engine form, and the CLI's throughput with the int8 engine, against the stock baseline of the same run."""
    from pneumodet.config_files import load_config

    config = load_config(None, ["model.weights='none'", "data.image_size=256", "model.rpn_post_nms_test=100",
                                "model.fpn_min_level=3", "model.anchor_sizes=[16, 32, 64, 128]"])
    run_dir = _run_folder(tmp / "run256-p3", config)
    rows = latency_rows("R50-FPN P3-P6 256 px", engine_latencies(run_dir, 256, files), baseline_ms)
    for devices in (1, 2):  # the int8 engine is active now
        rows.append((f"pneumodet predict 200 DICOMs, R50-FPN P3-P6 256 px, int8 engine, --devices {devices}",
                     cli_images_per_s(run_dir, files[0].parent, tmp / "cli-p3.csv", devices)))
    return rows


def cpu_recipe_rows(tmp: Path, files: list[Path], baseline_ms: float) -> list[tuple[str, str]]:
    """The CPU recipe's model (configs/demo.yaml: tiny FPN at 256 px), random weights: latency with each engine
    against the stock baseline timed in the same run, and the CLI's throughput, as for R50-FPN above. Its
    accuracy is the variants benchmark's."""
    from pneumodet.config_files import load_config
    from pneumodet.demo import DEMO_CONFIG

    rows = []
    config = load_config(DEMO_CONFIG)
    run_dir = _run_folder(tmp / "cpu-recipe", config)
    tta = ", flip TTA" if config.predict.hflip_tta else ""
    label = (f"CPU recipe (demo.yaml: tiny FPN, {config.data.image_size} px, {config.model.rpn_post_nms_test} "
             f"proposals{tta})")
    for engine, seconds, _ in engine_latencies(run_dir, config.data.image_size, files):
        rows.append((f"one 1024² DICOM → boxes, {label}, {engine}",
                     f"{seconds * 1e3:.0f} ms = {baseline_ms / (seconds * 1e3):.1f}× stock"))
    folder = run_dir / "engine"
    # int8 is active only where export's agreement check passes (the trained demo model's may not): time each
    cases = [(f"{label}, {form} engine", dense, heads, ()) for form, dense, heads in ENGINE_FORMS]
    if tta:  # what the recipe's throughput is without TTA (predict --no-tta), with the int8 box head
        cases.append(("CPU recipe with --no-tta, int8 box head engine", *ENGINE_FORMS[1][1:], ("--no-tta",)))
    for name, dense, heads, options in cases:
        activate(folder, dense, heads)
        for devices in (1, 2):
            rows.append((f"pneumodet predict 200 DICOMs, {name}, --devices {devices}",
                         cli_images_per_s(run_dir, files[0].parent, tmp / "cpu-recipe.csv", devices, *options)))
    return rows


def run() -> list[tuple[str, str]]:
    from pneumodet.config_files import load_config
    from pneumodet.data.synth import synthesize
    from pneumodet.io.layout import TEST_IMAGES
    from pneumodet.onnx_runtime import cpu_features
    from pneumodet.predict import predict_folder

    rows = [("CPU features read from /proc/cpuinfo", ", ".join(cpu_features()))]
    baselines = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "data", 0, 200, seed=1, progress=False)
        files = image_files(tmp / "data" / TEST_IMAGES)[0]
        for size in (256, 512):
            baseline = stock_torchvision_ms(size)
            baselines[size] = baseline
            rows.append((f"stock torchvision maskrcnn_resnet50_fpn {size} px (1000 proposals, masks; tensor in memory)",
                         f"{baseline:.0f} ms"))
            config = load_config(None, ["model.weights='none'", f"data.image_size={size}", "model.rpn_post_nms_test=100"])
            run_dir = _run_folder(tmp / f"run{size}", config)
            timed = engine_latencies(run_dir, size, files)
            folder = run_dir / "engine"
            rows.append((f"backbone+FPN+RPN head alone, R50-FPN {size} px, batch 1",
                         dense_runtimes(folder / ONNX_FILE, size)))
            rows += latency_rows(f"R50-FPN {size} px", timed, baseline)
            if size == 256:
                for engine, files_active in (("torch", None), *(("onnx", form[1:]) for form in ENGINE_FORMS)):
                    if files_active:
                        activate(folder, *files_active)
                    summary = predict_folder(run_dir, tmp / "data" / TEST_IMAGES, tmp / "sub.csv",
                                             workers=1, engine=engine, progress=False)
                    rows.append((f"predict 200 DICOMs, R50-FPN 256 px, 100 proposals, batch 8, {summary.backend} engine",
                                 f"{summary.images / summary.seconds:.1f} images/s"))
                for devices in (1, 2):  # the int8 engine is active now; the CLI, as a user runs it
                    rows.append((f"pneumodet predict 200 DICOMs, int8 engine, --devices {devices} (processes, "
                                 f"cores shared among them)", cli_images_per_s(run_dir, tmp / "data" / TEST_IMAGES,
                                                                              tmp / "cli.csv", devices)))
                rows += no_p2_rows(tmp, files, baseline)
        rows += cpu_recipe_rows(tmp, files, baselines[256])
        demo = Path("demo/runs/demo")
        if (demo / "weights" / "last.ckpt").is_file():
            rows += agreement(demo, Path("demo/data") / TEST_IMAGES, tmp)
    return rows
